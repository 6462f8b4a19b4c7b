"""JSON Schemas of every wire record, generated from the models (inputs) and records (outputs).

`backstop schemas write` regenerates schemas/json/; a test fails when the checked-in files drift.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from backstop.core.records import AdlEvent, Finding, FundLedgerEntry
from backstop.wire.inputs import DECIMAL_PATTERN, RECORD_TYPES

SCHEMA_ID_BASE = "https://backstop.invalid/schemas/v1/"


class _DecimalAsString(GenerateJsonSchema):
    """Output decimals are written as canonical strings, never JSON numbers."""

    def decimal_schema(self, schema: core_schema.DecimalSchema) -> JsonSchemaValue:
        return {"type": "string", "pattern": DECIMAL_PATTERN}


OUTPUT_RECORDS: dict[str, type[Any]] = {
    "fund-ledger-entry": FundLedgerEntry,
    "adl-event": AdlEvent,
    "finding": Finding,
}


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name (without .json) -> schema."""
    result: dict[str, dict[str, Any]] = {}
    for name, model in RECORD_TYPES.items():
        schema = model.model_json_schema(mode="validation")
        result[f"input-{name}"] = schema
    for name, record in OUTPUT_RECORDS.items():
        schema = TypeAdapter(record).json_schema(mode="serialization", schema_generator=_DecimalAsString)
        result[f"output-{name}"] = schema
    for name, schema in result.items():
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"{SCHEMA_ID_BASE}{name}.json"
    return result


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in json_schemas().items():
        path = directory / f"{name}.json"
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written


def drift(directory: Path) -> list[str]:
    """Names whose checked-in schema differs from the models (or is missing, or is extra)."""
    expected = {f"{name}.json": render(schema) for name, schema in json_schemas().items()}
    present = {p.name: p.read_text(encoding="utf-8") for p in directory.glob("*.json")} if directory.is_dir() \
        else {}
    return sorted(name for name in expected.keys() | present.keys() if expected.get(name) != present.get(name))


__all__ = ["Decimal", "drift", "json_schemas", "write"]

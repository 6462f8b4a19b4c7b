"""JSON Schemas of every wire record, generated from the models (inputs) and records (outputs).

`backstop schemas write` regenerates schemas/json/; a test fails when the checked-in files drift.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from backstop.core.records import AdlEvent, Finding, FundLedgerEntry
from backstop.pipeline.ingest import DeadLetterRecord, JournalRecord
from backstop.pipeline.topics import INPUT_TYPES, TopicNames, input_key_field
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
    "journal-record": JournalRecord,
    "dead-letter-record": DeadLetterRecord,
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


_OUTPUT_TOPICS = (
    ("journal", "journal-record", "the key of the input record",
     "Every accepted input, in journal order (seq), kept forever: the log a replay starts from."),
    ("fund_ledger", "fund-ledger-entry", "fund_id",
     "Every transfer that touches an insurance fund, hash-chained, kept forever."),
    ("adl_events", "adl-event", "account_id (the counterparty)", "Every counterparty reduced by auto-deleveraging."),
    ("dead_letter", "dead-letter-record", "source topic:partition", "Every input that was not applied, and why."),
)


def asyncapi() -> dict[str, Any]:
    """The topic contract: every topic, its key and its record, pointing at the JSON Schemas above."""
    topics = TopicNames("backstop.")
    channels: dict[str, Any] = {}
    for record_type in INPUT_TYPES:
        channels[topics.input(record_type)] = {
            "description": f"Input: {record_type} records (the topic names the type; a `type` field may be "
                           f"present and must agree). Key: {input_key_field(record_type)}.",
            "publish": {"message": {"name": record_type, "contentType": "application/json",
                                    "bindings": {"kafka": {"key": {"type": "string",
                                                                   "description": input_key_field(record_type)}}},
                                    "payload": {"$ref": f"input-{record_type}.json"}}}}
    for attribute, schema_name, key, description in _OUTPUT_TOPICS:
        channels[getattr(topics, attribute)] = {
            "description": f"Output: {description} Key: {key}. Each record carries a deterministic `id` (also in "
                           f"the header backstop-record-id): consumers drop duplicates by id.",
            "subscribe": {"message": {"name": schema_name, "contentType": "application/json",
                                      "bindings": {"kafka": {"key": {"type": "string", "description": key}}},
                                      "payload": {"$ref": f"output-{schema_name}.json"}}}}
    return {"asyncapi": "2.6.0",
            "info": {"title": "backstop topics", "version": "1",
                     "description": "Wire contract version 1 of backstop (docs/design.md §5). Decimals are JSON "
                                    "strings; timestamps are integer milliseconds. The prefix `backstop.` is "
                                    "configurable (BACKSTOP_TOPIC_PREFIX)."},
            "defaultContentType": "application/json", "channels": channels}


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def documents() -> dict[str, dict[str, Any]]:
    return {**json_schemas(), "asyncapi": asyncapi()}


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in documents().items():
        path = directory / f"{name}.json"
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written


def drift(directory: Path) -> list[str]:
    """Names whose checked-in schema differs from the models (or is missing, or is extra)."""
    expected = {f"{name}.json": render(schema) for name, schema in documents().items()}
    present = {p.name: p.read_text(encoding="utf-8") for p in directory.glob("*.json")} if directory.is_dir() \
        else {}
    return sorted(name for name in expected.keys() | present.keys() if expected.get(name) != present.get(name))



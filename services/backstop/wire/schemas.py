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

from backstop.core.records import (
    CONTRACT_VERSION,
    AdlEvent,
    AdlQuantileChange,
    AdlRiskChange,
    DeadLetterRecord,
    Finding,
    FundLedgerEntry,
    JournalRecord,
    Posting,
)
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
    "posting": Posting,
    "adl-quantile": AdlQuantileChange,
    "adl-risk": AdlRiskChange,
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


_OUTPUT_TOPICS: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    ("journal", ("journal-record",), "the key of the input record",
     "Every accepted input, in journal order (seq), kept forever: the log a replay starts from."),
    ("fund_ledger", ("fund-ledger-entry",), "fund_id",
     "Every transfer that touches an insurance fund, hash-chained, kept forever."),
    ("adl_events", ("adl-event",), "account_id (the counterparty)",
     "Every counterparty reduced by auto-deleveraging."),
    ("dead_letter", ("dead-letter-record",), "source topic:partition", "Every input that was not applied, and why."),
    ("postings", ("posting",), "asset",
     "Every posting of the general ledger (each movement of money between two ledger accounts), hash-chained, "
     "kept forever."),
    ("adl_quantiles", ("adl-quantile", "adl-risk"), "account_id (kind quantile) or symbol (kind risk)",
     "Each change of a position's ADL quantile and of a symbol's ADL risk level, at the quantile points of event "
     "time (`kind` tells the two apart)."),
)
KAFKA_BINDING_VERSION = "0.5.0"
_OUTPUT_HEADERS = {
    "type": "object",
    "properties": {
        "backstop-record-id": {"type": "string", "description": "The record's deterministic `id`: consumers drop "
                                                                "a record whose id they have seen."},
        "backstop-outbox-id": {"type": "string", "description": "The outbox row that published the record, on "
                                                                "records published from the outbox (the relay's own "
                                                                "bookkeeping)."},
        "backstop-position": {"type": "string", "description": "The record's seq in the journal or position in its "
                                                               "table, on records published from their own table "
                                                               "(the relay's own bookkeeping)."},
    },
}


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.replace("_", "-").split("-"))


def _embedded(name: str, schema: dict[str, Any], components: dict[str, Any]) -> dict[str, Any]:
    """A standalone JSON Schema as an AsyncAPI component: its $defs become components of their own (named
    `<name>.<def>`) and its references point at them, so the document has no reference outside itself."""
    prefix = "#/$defs/"

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: (f"#/components/schemas/{name}.{value[len(prefix):]}"
                          if key == "$ref" and isinstance(value, str) and value.startswith(prefix) else rewrite(value))
                    for key, value in node.items() if key not in ("$schema", "$id", "$defs")}
        if isinstance(node, list):
            return [rewrite(item) for item in node]
        return node

    for definition, body in schema.get("$defs", {}).items():
        components[f"{name}.{definition}"] = rewrite(body)
    embedded: dict[str, Any] = rewrite(schema)
    return embedded


def asyncapi() -> dict[str, Any]:
    """The topic contract as an AsyncAPI 3.0 document with every schema inside it (no file references, so any
    tool reads it from any folder): each topic a channel, each record a message, and what backstop does with
    each topic an operation (it receives the inputs and sends the outputs)."""
    topics = TopicNames("backstop.")
    schemas_by_name = json_schemas()
    components_schemas: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}

    def add(records: tuple[str, ...], prefix: str, address: str, key: str, description: str, *,
            incoming: bool) -> None:
        """One channel for the topic, with a message (and its schema `<prefix><record>`) per record it carries."""
        for record in records:
            schema_name = f"{prefix}{record}"
            components_schemas[schema_name] = _embedded(schema_name, schemas_by_name[schema_name], components_schemas)
            message: dict[str, Any] = {
                "name": record, "title": f"{record} record", "summary": description,
                "contentType": "application/json", "payload": {"$ref": f"#/components/schemas/{schema_name}"},
                "bindings": {"kafka": {"key": {"type": "string", "description": key},
                                       "bindingVersion": KAFKA_BINDING_VERSION}}}
            if not incoming:
                message["headers"] = _OUTPUT_HEADERS
            messages[record] = message
        channel_id = _camel(address.removeprefix(topics.prefix))
        channels[channel_id] = {
            "address": address, "title": address, "description": f"{description} Key: {key}.",
            "messages": {record: {"$ref": f"#/components/messages/{record}"} for record in records},
            "bindings": {"kafka": {"topic": address, "bindingVersion": KAFKA_BINDING_VERSION}}}
        action = "receive" if incoming else "send"
        named = " and ".join(records)
        operations[f"{action}{_camel(records[0])}"] = {
            "action": action, "channel": {"$ref": f"#/channels/{channel_id}"},
            "messages": [{"$ref": f"#/channels/{channel_id}/messages/{record}"} for record in records],
            "summary": (f"backstop consumes {named} records." if incoming
                        else f"backstop publishes {named} records from its database (a relay)."),
            "tags": [{"name": "input" if incoming else "output"}]}

    for record_type in INPUT_TYPES:
        add((record_type,), "input-", topics.input(record_type), input_key_field(record_type),
            f"Input: {record_type} records (the topic names the type; a `type` field may be present and must "
            f"agree).", incoming=True)
    for attribute, records, key, description in _OUTPUT_TOPICS:
        add(records, "output-", getattr(topics, attribute), key,
            f"Output: {description} Each record carries a deterministic `id` (also in the header "
            f"backstop-record-id): consumers drop duplicates by id.", incoming=False)
    return {
        "asyncapi": "3.0.0",
        "id": f"urn:backstop:topics:v{CONTRACT_VERSION}",
        "info": {
            "title": "backstop topics", "version": str(CONTRACT_VERSION),
            "description": f"Wire contract version {CONTRACT_VERSION} of backstop (docs/design.md §5 and §7; a "
                           "version-1 record is a "
                           "valid version-2 record). Decimals are JSON strings; "
                           "timestamps are integer milliseconds. The prefix `backstop.` is configurable "
                           "(BACKSTOP_TOPIC_PREFIX).",
            "contact": {"name": "backstop maintainers"},
            "license": {"name": "Apache-2.0", "url": "https://www.apache.org/licenses/LICENSE-2.0"},
            "tags": [{"name": "input", "description": "Topics the venue writes and backstop consumes."},
                     {"name": "output", "description": "Topics backstop publishes from its database (a relay)."}]},
        "defaultContentType": "application/json",
        "servers": {
            "local": {"host": "127.0.0.1:9092", "protocol": "kafka", "title": "local broker",
                      "description": "The single-node broker of deploy/local; any Kafka cluster serves the same "
                                     "topics (BACKSTOP_KAFKA_BOOTSTRAP).",
                      "bindings": {"kafka": {"bindingVersion": KAFKA_BINDING_VERSION}}}},
        "channels": channels,
        "operations": operations,
        "components": {"schemas": components_schemas, "messages": messages},
    }


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



"""Bytes to a validated input record, or a clear reason why not; the record as the core's event (decode_record).

The reason is canonical, so that the compiled engine (crates/backstop-engine/src/wire.rs) writes the same bytes into
dead letters: the first error in pydantic's order (keys that are not fields, in input order; then the fields in
declaration order), as `<field path>: <message>`. A bad decimal's reason is decimal_reason's (docs/design.md §9.2),
its input quoted as a JSON string; a JSON syntax error is "invalid JSON" without the parser's detail, which differs
between parsers.
"""

from __future__ import annotations

from typing import Any, TypeVar, cast

import orjson
from pydantic import ValidationError

from backstop.core.events import Event
from backstop.core.hashing import canonical_json
from backstop.wire.inputs import INPUT_ADAPTER, KINDS, AnyRecord, decimal_reason, quoted
from backstop.wire.translate import to_event, wire_document

MAX_RECORD_BYTES = 1 << 20
QUOTED_CHARS = 40


class InvalidRecord(ValueError):
    """A record that cannot be decoded or does not match wire contract version 1."""


def shown(value: Any) -> str:
    """A JSON value in a reason: a string quoted, anything else by its kind."""
    if isinstance(value, str):
        return quoted(value)
    if value is None or isinstance(value, bool):
        return orjson.dumps(value).decode()
    if isinstance(value, int | float):
        return "a number"
    return "an array" if isinstance(value, list) else "an object"


def describe(error: ValidationError) -> str:
    item = error.errors(include_url=False)[0]
    kind = item["type"]
    if kind == "json_invalid":
        return "invalid JSON"
    if kind == "union_tag_invalid":
        return (f"type: {shown(item['input'].get('type'))} does not match any of the expected tags: "
                f"{item['ctx']['expected_tags']}")
    location = ".".join(str(part)[:QUOTED_CHARS] for part in item["loc"])
    message = item["msg"].removeprefix("Value error, ")
    if kind == "plain_decimal":  # which rule the value broke: syntax, digits of its kind, or sign
        context = item.get("ctx") or {}
        message = decimal_reason(item["input"], KINDS[context["kind"]], context["sign"])
    return f"{location}: {message}" if location else message


def validate(raw: bytes) -> AnyRecord:
    """The models on a record's bytes, without the size limit (the caller applied it)."""
    try:
        return INPUT_ADAPTER.validate_json(raw)
    except ValidationError as error:
        raise InvalidRecord(describe(error)) from None


def decode_model(raw: bytes) -> AnyRecord:
    """A record's bytes, within the size limit, validated: the wire model (for tools that change records)."""
    if len(raw) > MAX_RECORD_BYTES:
        raise InvalidRecord(f"record of {len(raw)} bytes exceeds the limit of {MAX_RECORD_BYTES}")
    return validate(raw)


def decode_record(raw: bytes) -> Event:
    """A record's bytes, validated, as the event the core applies (backstop.wire.translate)."""
    return to_event(decode_model(raw))


E = TypeVar("E", bound=Event)


def through_contract(event: E) -> E:
    """An event the engine made itself (a liquidation the simulation decided) as a replay will read its journal line:
    validated by the contract, its decimals read back from their text; InvalidRecord if the contract refuses it."""
    decoded = decode_record(canonical_json(wire_document(event)))
    if type(decoded) is not type(event):  # the type is written from the event's own: never another
        raise InvalidRecord(f"a {event.type} event read back as a {decoded.type} record")
    return cast(E, decoded)

"""Bytes to a validated input record, or a clear reason why not; the record as the core's event (decode_record).

The reason is canonical, so that the compiled engine (crates/backstop-engine/src/wire.rs) writes the same bytes into
dead letters: the first error in pydantic's order (keys that are not fields, in input order; then the fields in
declaration order), as `<field path>: <message>`. A bad decimal's reason is decimal_reason's (docs/design.md §9.2),
its input quoted as a JSON string; a JSON syntax error is "invalid JSON" without the parser's detail, which differs
between parsers. A key repeated within one object is refused after the syntax and before the models
(`repeated_key`): parsers disagree on which of the two counts, so another reader could read another record.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar, cast

import orjson
import pydantic_core
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


# a JSON string token, with the colon that makes it a key, or a brace: in valid JSON, scanned from the start, string
# tokens never overlap and every brace outside them opens or closes an object
_STRING_OR_BRACE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"(\s*:)?|[{}]', re.DOTALL)  # unrolled: no alternation per byte


def repeated_key(raw: bytes, document: Any) -> str | None:
    """The first key, in input order, that repeats a key before it in the same object of `raw`, which is valid JSON
    that parses to `document` (whose objects kept one of each key); None when no key repeats. The exact scan runs
    only when `raw` has more colons than `document` has keys (a colon outside a string follows a key)."""
    if raw.count(b":") == _key_count(document):
        return None
    objects: list[set[str]] = []
    for token in _STRING_OR_BRACE.finditer(raw):
        if token[0] == b"{":
            objects.append(set())
        elif token[0] == b"}":
            objects.pop()
        elif token[1] is not None:
            key: str = orjson.loads(raw[token.start():token.start(1)])
            if key in objects[-1]:
                return key
            objects[-1].add(key)
    return None


def _key_count(document: Any) -> int:
    count, waiting = 0, [document]
    while waiting:  # no recursion: a Kafka value may nest 1,024 deep
        value = waiting.pop()
        if isinstance(value, dict):
            count += len(value)
            waiting.extend(value.values())
        elif isinstance(value, list):
            waiting.extend(value)
    return count


def refuse_repeated_key(raw: bytes, document: Any) -> None:
    if (key := repeated_key(raw, document)) is not None:
        raise InvalidRecord(f"duplicate key {quoted(key)}")


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
    try:
        document = pydantic_core.from_json(raw)  # the models' own parser: it refuses what validate does as JSON
    except ValueError:
        pass  # validate says "invalid JSON"
    else:
        refuse_repeated_key(raw, document)
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

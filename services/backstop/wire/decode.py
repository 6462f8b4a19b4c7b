"""Bytes to a validated input record, or a clear reason why not."""

from __future__ import annotations

from pydantic import ValidationError

from backstop.wire.inputs import INPUT_ADAPTER, KINDS, AnyRecord, decimal_reason

MAX_RECORD_BYTES = 1 << 20
_MAX_REASONS = 5


class InvalidRecord(ValueError):
    """A record that cannot be decoded or does not match wire contract version 1 (with the bounds of §9.2)."""


def describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors(include_url=False)[:_MAX_REASONS]:
        location = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "plain_decimal":  # which rule the value broke: syntax, digits of its kind, or sign
            context = item.get("ctx") or {}
            message = decimal_reason(item["input"], KINDS[context["kind"]], context["sign"])
        parts.append(f"{location}: {message}" if location else message)
    more = error.error_count() - _MAX_REASONS
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def decode_record(raw: bytes) -> AnyRecord:
    if len(raw) > MAX_RECORD_BYTES:
        raise InvalidRecord(f"record of {len(raw)} bytes exceeds the limit of {MAX_RECORD_BYTES}")
    try:
        return INPUT_ADAPTER.validate_json(raw)
    except ValidationError as error:
        raise InvalidRecord(describe(error)) from None

"""Canonical JSON and the SHA-256 hash chain over output records."""

from __future__ import annotations

import hashlib
from dataclasses import fields, is_dataclass
from decimal import Decimal
from typing import Any

import orjson

from backstop.core.numbers import text

GENESIS_HASH = "0" * 64


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return text(value)
    raise TypeError(f"not canonical JSON: {type(value).__name__}")


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, decimals as plain strings: the same bytes for the same value, always."""
    return orjson.dumps(value, default=_default, option=orjson.OPT_SORT_KEYS)


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}  # dataclasses.fields() per call showed in a replay's profile


def record_dict(record: Any) -> dict[str, Any]:
    """A dataclass record as a plain dict (decimals stay Decimal; canonical_json renders them)."""
    names = _FIELD_NAMES.get(type(record))
    if names is None:
        if not is_dataclass(record):
            raise TypeError(f"not a record: {type(record).__name__}")
        names = _FIELD_NAMES[type(record)] = tuple(f.name for f in fields(record))
    return {name: getattr(record, name) for name in names}


def chain_hash(body: dict[str, Any]) -> str:
    """Hash of a record's canonical JSON without its own `hash` field (it includes `prev_hash`)."""
    return hashlib.sha256(canonical_json(body)).hexdigest()


def combine(*hashes: str) -> str:
    return hashlib.sha256(":".join(hashes).encode()).hexdigest()

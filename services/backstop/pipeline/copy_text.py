"""PostgreSQL's COPY text format read back (what the compiled engine writes for projections and the outbox)."""

from __future__ import annotations

import re

_COPY_ESCAPE = re.compile(r"\\(.)")
_COPY_UNESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def _copy_value(value: str) -> str | None:
    if value == "\\N":
        return None
    if "\\" not in value:
        return value
    return _COPY_ESCAPE.sub(lambda m: _COPY_UNESCAPES.get(m.group(1), m.group(1)), value)


def copy_rows(text: bytes) -> list[tuple[str | None, ...]]:
    """COPY text back into rows of text (None for NULL): the inverse of backstop.adapters.postgres.store.copy_text."""
    return [tuple(_copy_value(v) for v in line.split("\t")) for line in text.decode().split("\n") if line]


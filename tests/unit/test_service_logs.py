"""The service's log lines (backstop.service.logs): a library's line repeated within a second is dropped and
counted, so a missing topic that aiokafka reports on every metadata refresh cannot flood the log."""

from __future__ import annotations

import io
import logging

import orjson

from backstop.service.logs import JsonFormatter, RepeatLimit


def lines_of(records: list[tuple[str, str, float]]) -> list[dict[str, object]]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatLimit())
    for name, message, created in records:
        record = logging.LogRecord(name, logging.ERROR, __file__, 1, message, None, None)
        record.created = created
        handler.handle(record)
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


def test_a_library_line_repeated_within_a_second_is_counted_not_written() -> None:
    missing = "Topic b4.journal not found in cluster metadata"
    records = [("aiokafka.cluster", missing, 100.0 + n / 100) for n in range(250)]  # 2.5 s of them
    records.append(("aiokafka.cluster", "another line", 100.5))
    written = lines_of(records)
    assert [(line["message"], line.get("repeated")) for line in written] == [
        (missing, None), (missing, 99), (missing, 99), ("another line", None)]


def test_backstop_s_own_lines_are_all_written() -> None:
    assert len(lines_of([("backstop.ledger", "same", 100.0)] * 5)) == 5

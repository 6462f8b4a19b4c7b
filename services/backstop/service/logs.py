"""The service's logs: one JSON object per line, whoever writes it (backstop, faust, aiokafka, kafka-python,
warnings, a print, an uncaught exception), so that `json.loads` reads every line.

Fields: ts (UTC, ISO 8601), level, logger, message, the record's `extra={"fields": {...}}` merged in, and
`exception` (the formatted traceback) when there is one.
"""

from __future__ import annotations

import io
import logging
import sys
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            document.update({key: value for key, value in fields.items() if key not in document})
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(document, default=str).decode()


class RepeatLimit(logging.Filter):
    """A library's line (aiokafka, kafka-python, faust) that repeats within REPEAT_WINDOW_S of the last one it let
    through is dropped and counted; the next one let through carries `repeated`: how many were dropped before it.
    (aiokafka logs a missing topic on every metadata refresh: tens of thousands of lines a minute.)"""

    REPEAT_WINDOW_S = 1.0
    LIBRARIES = ("aiokafka", "kafka", "faust", "mode.")  # mode: faust's service framework

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # (logger, line) -> (time let through, dropped)

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.LIBRARIES) or record.exc_info:
            return True
        key = (record.name, record.getMessage())
        last = self._last.get(key)
        if last is not None and record.created - last[0] < self.REPEAT_WINDOW_S:
            self._last[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            fields = getattr(record, "fields", None)
            record.fields = {**(fields if isinstance(fields, dict) else {}), "repeated": last[1]}
        if len(self._last) > 1024:  # only lines seen lately are kept
            self._last.clear()
        self._last[key] = (record.created, 0)
        return True


class _LoggedStream(io.TextIOBase):
    """sys.stdout or sys.stderr as a logger: every line written (a library's print) becomes a JSON line."""

    def __init__(self, logger: logging.Logger, level: int) -> None:
        self._logger, self._level, self._pending = logger, level, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            if line.strip():
                self._logger.log(self._level, line.rstrip("\r"))
        return len(text)

    def flush(self) -> None:
        if self._pending.strip():
            self._logger.log(self._level, self._pending)
        self._pending = ""

    def isatty(self) -> bool:
        return False


def configure(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """Every log record as a JSON line on `stream` (the process's stderr by default); stdout and stderr, warnings
    and uncaught exceptions go through logging too."""
    target = stream if stream is not None else sys.__stderr__
    handler = logging.StreamHandler(target)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RepeatLimit())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    logging.raiseExceptions = False  # a failing handler must not report itself through the stderr it replaces
    logging.captureWarnings(True)
    sys.stdout = _LoggedStream(logging.getLogger("stdout"), logging.INFO)
    sys.stderr = _LoggedStream(logging.getLogger("stderr"), logging.WARNING)

    def uncaught(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
        logging.getLogger("backstop").critical("uncaught %s: %s", kind.__name__, error,
                                               exc_info=(kind, error, trace))

    sys.excepthook = uncaught

"""The JSONL journal file: the one reader every command uses (replay, audit, explain, whatif, produce, demo), and
the writer of `journal export`.

A record is the bytes between two `\\n`. A `\\r` right before a `\\n` is the `\\r\\n` line end and is dropped, here and
nowhere else; any other `\\r` is part of the record, which is then valid JSON or not as its bytes say (JSON allows a
`\\r` between tokens, not inside a string). Lines are numbered from 1, blank lines counted and skipped, so a line
number names the same record in every command's report. A file that starts with a UTF-8 byte order mark is refused
as a whole: read as a record, the mark spoils the first line, and with it every record that depends on it. So is
anything but a regular file (a pipe, `/dev/stdin` fed by one): commands read a journal more than once (its start,
then its records; audit and what-if again), and a pipe gives its bytes only once.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

UTF8_BOM = b"\xef\xbb\xbf"
_BLANK = b" \t\r"  # JSON whitespace that can stand on a line of its own


class JournalFileError(Exception):
    """The file cannot be read as a journal: missing, a directory, unreadable, or starting with a BOM."""


@dataclass(frozen=True, slots=True)
class JournalFile:
    path: Path
    size: int  # bytes, for progress

    @classmethod
    def open(cls, path: Path) -> JournalFile:
        """Checks, before anything is read or written, that `path` is a journal file this reader accepts."""
        try:
            status = path.stat()
            if stat.S_ISDIR(status.st_mode):
                raise IsADirectoryError
            if not stat.S_ISREG(status.st_mode):
                raise JournalFileError(f"cannot read journal {path}: not a regular file (a pipe?): write the journal "
                                       f"to a file and name that")
            with path.open("rb") as handle:
                start = handle.read(len(UTF8_BOM))
            size = status.st_size
        except IsADirectoryError:
            raise JournalFileError(f"cannot read journal {path}: it is a directory") from None
        except FileNotFoundError:
            raise JournalFileError(f"cannot read journal {path}: no such file") from None
        except OSError as error:
            raise JournalFileError(f"cannot read journal {path}: {error.strerror or error}") from None
        if start == UTF8_BOM:
            raise JournalFileError(f"journal {path} starts with a UTF-8 byte order mark (BOM): a journal is UTF-8 "
                                   f"without one; remove the first 3 bytes")
        return cls(path, size)

    def lines(self, *, skip: int = 0) -> Iterator[tuple[int, bytes]]:
        """(line number from 1, record bytes) for every non-blank line after the first `skip` lines."""
        try:
            with self.path.open("rb") as handle:
                yield from records(handle, skip=skip)
        except OSError as error:
            raise JournalFileError(f"cannot read journal {self.path}: {error.strerror or error}") from None


def records(chunks: Iterable[bytes], *, skip: int = 0) -> Iterator[tuple[int, bytes]]:
    """The reader's rule over lines as a binary file yields them (each ending in `\\n`, the last one maybe not)."""
    for number, line in enumerate(chunks, start=1):
        if number <= skip:
            continue
        if line.endswith(b"\n"):
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        if line.strip(_BLANK):
            yield number, line


def read_journal(path: Path) -> list[tuple[int, bytes]]:
    """The whole journal in memory, for the commands that need it all at once."""
    return list(JournalFile.open(path).lines())


def journal_bytes(lines: Iterable[bytes]) -> bytes:
    """Records as a journal file's bytes; a record holding a `\\n` would become two lines, and is refused."""
    out = bytearray()
    for line in lines:
        if b"\n" in line:
            raise ValueError(f"a journal record holds a line break: {line[:80]!r}")
        out += line
        out += b"\n"
    return bytes(out)

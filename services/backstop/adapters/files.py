"""File adapter: the replay output directory, written whole or not at all.

Output files (the contract other tools rely on): summary.json, accounts.json, fund-ledger.jsonl,
adl-events.jsonl, adl-rounds.jsonl, findings.jsonl, dead-letter.jsonl, postings.jsonl, adl-quantiles.jsonl, and
snapshots/ when asked for.

Every command with `--out` writes into a temporary directory beside the target and renames it into place when it
has finished: a failed run leaves the old directory as it was (never an old summary.json beside a new, truncated
ledger), and a reader sees the old directory or the new one. Because the target is replaced as a whole, it is
refused when it holds anything the command does not write, when it is a file, or when an input lies inside it.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import secrets
import shutil
import stat
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from backstop.core.hashing import canonical_json, record_dict

if TYPE_CHECKING:
    from backstop.core.engine import Effects  # the reference engine's, imported only where it runs

RAW_KEEP_BYTES = 4096
REPLAY_OUTPUTS = ("summary.json", "accounts.json", "fund-ledger.jsonl", "adl-events.jsonl", "adl-rounds.jsonl",
                  "findings.jsonl", "dead-letter.jsonl", "postings.jsonl", "adl-quantiles.jsonl", "snapshots")


class OutputError(Exception):
    """An output path that cannot be written safely; nothing was written (exit 2)."""


def write_json(path: Path, document: Any) -> None:
    """Pretty, sorted JSON written atomically (temp file + rename)."""
    write_bytes(path, pretty_json(document))


def pretty_json(document: Any) -> bytes:
    """The bytes of a JSON file the commands write (summary.json, accounts.json, snapshots): indented, keys sorted."""
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def write_bytes(path: Path, content: bytes) -> None:
    """A file written atomically (temp file + rename)."""
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_bytes(content)
    os.replace(temporary, path)


def _inside(path: Path, directory: Path) -> bool:
    return path == directory or directory in path.parents


def check_output_dir(target: Path, *, owned: Collection[str], inputs: Iterable[Path] = ()) -> Path:
    """The resolved target, after refusing a file, a directory holding what the command does not write (a name
    matching none of the `owned` patterns), and an input inside it. Touches nothing."""
    resolved = target.resolve()
    if resolved.exists() and not resolved.is_dir():
        raise OutputError(f"output directory {target} is a file")
    for path in inputs:
        if _inside(path.resolve(), resolved):
            raise OutputError(f"the input {path} is inside the output directory {target}, which is replaced as a "
                              f"whole: write the output elsewhere")
    if resolved.is_dir():
        try:
            foreign = sorted(name for name in os.listdir(resolved)
                             if not any(fnmatch.fnmatchcase(name, pattern) for pattern in owned))
        except OSError as error:
            raise OutputError(f"cannot read output directory {target}: {error.strerror or error}") from None
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise OutputError(f"output directory {target} holds files this command does not write ({shown}): it "
                              f"is replaced as a whole, so give a new, empty or earlier output directory")
    return resolved


def _beside(target: Path, role: str) -> Path:
    return target.with_name(f".{target.name}.{role}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def staged_dir(target: Path, *, owned: Collection[str], inputs: Iterable[Path] = ()) -> Iterator[Path]:
    """A fresh directory beside `target` to write into; renamed to `target` when the block ends without an
    exception (an existing target moved aside first, then removed), removed when it raises."""
    resolved = check_output_dir(target, owned=owned, inputs=inputs)
    made = [parent for parent in reversed(resolved.parents) if not parent.exists()]  # removed again if it fails
    try:
        resolved.parent.mkdir(parents=True, exist_ok=True)
        staging = _beside(resolved, "partial")
        staging.mkdir()
    except OSError as error:
        blocker = _file_in_the_way(resolved)
        raise OutputError(f"cannot create output directory {target}: "
                          + (f"{blocker} is a file, not a directory" if blocker else error.strerror or str(error))
                          ) from None
    try:
        yield staging
        _swap_into_place(staging, resolved)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in reversed(made):  # a failed run leaves the tree as it found it
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise


def _swap_into_place(staging: Path, target: Path) -> None:
    if not target.exists():
        os.rename(staging, target)
        return
    old = _beside(target, "old")
    os.rename(target, old)
    try:
        os.rename(staging, target)
    except OSError:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)  # the new output is in place; a leftover .old-* is only clutter


def written_in_place(target: Path) -> bool:
    """Whether an output file is written through rather than renamed over: a target that exists and is not a
    regular file (a device such as /dev/null, a pipe, a terminal), or a name under /dev or /proc (/dev/stdout,
    /dev/fd/N: whatever descriptor it stands for, a file that stdout was redirected to included)."""
    try:
        mode = os.stat(target).st_mode  # through /proc's links to the descriptor itself, which resolve() cannot
    except OSError:
        return False
    return not stat.S_ISREG(mode) or target.absolute().parts[1:2] in (("dev",), ("proc",))


def _file_in_the_way(path: Path) -> Path | None:
    """The first of `path`'s parents, from the root down, that exists but is not a directory."""
    return next((parent for parent in reversed(path.parents) if parent.exists() and not parent.is_dir()), None)


def write_file_atomically(target: Path, write: Callable[[Path], object], *, inputs: Iterable[Path] = ()) -> None:
    """`write(temporary)` beside `target`, then renamed over it; the directory must exist, no input is the target.
    A target `written_in_place` is written through instead: a rename would replace a device's node with a file."""
    resolved = target.resolve()
    if resolved.is_dir():
        raise OutputError(f"output file {target} is a directory")
    if not resolved.parent.is_dir():
        blocker = _file_in_the_way(resolved)
        raise OutputError(f"cannot write {target}: " + (f"{blocker} is a file, not a directory" if blocker else
                                                         f"directory {target.parent} does not exist"))
    if any(path.resolve() == resolved for path in inputs):
        raise OutputError(f"output file {target} is one of the inputs")
    if written_in_place(target):
        write(target)
        return
    temporary = _beside(resolved, "partial")
    try:
        write(temporary)
        os.replace(temporary, resolved)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class _Sink(Protocol):
    def write(self, data: bytes, /) -> int: ...
    def close(self) -> None: ...


class _WrittenElsewhere:
    """A file another writer writes: only nothing may be written to it here."""

    def __init__(self, name: str) -> None:
        self.name = name

    def write(self, data: bytes, /) -> int:
        if data:
            raise ValueError(f"{self.name} is written by the engine, not here")
        return 0

    def close(self) -> None:
        pass


class OutputDir:
    """Streams effects and dead letters into the output directory as they happen. `elsewhere`: the files another
    writer writes (the compiled engine's own thread, backstop.engines.ENGINE_WRITTEN): left alone here, and their
    bytes in write_batch must be empty."""

    def __init__(self, root: Path, *, elsewhere: Collection[str] = ()) -> None:
        self.root = root
        self.elsewhere = frozenset(elsewhere)
        root.mkdir(parents=True, exist_ok=True)
        self.dead_letters = 0
        self._ledger = self._open("fund-ledger.jsonl")
        self._adl = self._open("adl-events.jsonl")
        self._rounds = self._open("adl-rounds.jsonl")
        self._findings = self._open("findings.jsonl")
        self._dead = self._open("dead-letter.jsonl")
        self._postings = self._open("postings.jsonl")
        self._quantiles = self._open("adl-quantiles.jsonl")

    def _open(self, name: str) -> _Sink:
        if name in self.elsewhere:
            return _WrittenElsewhere(name)
        return (self.root / name).open("wb", buffering=1 << 20)

    def effects(self, effects: Effects) -> None:
        for entry in effects.fund_entries:
            self._ledger.write(canonical_json(record_dict(entry)) + b"\n")
        for event in effects.adl_events:
            self._adl.write(canonical_json(record_dict(event)) + b"\n")
        for finding in effects.findings:
            self._findings.write(canonical_json(record_dict(finding)) + b"\n")
        for posting in effects.postings:
            self._postings.write(canonical_json(record_dict(posting)) + b"\n")
        for change in effects.adl_quantiles:
            self._quantiles.write(canonical_json(record_dict(change)) + b"\n")
        for round_ in effects.adl_rounds:
            self._rounds.write(canonical_json(round_.record) + b"\n")

    def write_batch(self, fund_ledger: bytes, adl_events: bytes, findings: bytes, dead_letters: bytes,
                    postings: bytes = b"", adl_quantiles: bytes = b"", adl_rounds: bytes = b"") -> None:
        """A batch's output lines, already canonical (backstop.engines)."""
        self._ledger.write(fund_ledger)
        self._adl.write(adl_events)
        self._rounds.write(adl_rounds)
        self._findings.write(findings)
        self._dead.write(dead_letters)
        self._postings.write(postings)
        self._quantiles.write(adl_quantiles)
        self.dead_letters += dead_letters.count(b"\n")

    def dead_letter_record(self, record: dict[str, Any]) -> None:
        """A dead letter as given (the service's carry where they came from instead of a line number)."""
        self._dead.write(canonical_json(record) + b"\n")
        self.dead_letters += 1

    def close(self) -> None:
        for handle in (self._ledger, self._adl, self._rounds, self._findings, self._dead, self._postings,
                       self._quantiles):
            handle.close()

    def __enter__(self) -> OutputDir:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

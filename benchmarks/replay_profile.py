"""Where `backstop replay` (compiled engine) spends its time: a `perf` sampling profile of one replay of the
benchmark journal, its samples summed into a few categories, beside the bytes the replay reads and writes.

    python benchmarks/replay_profile.py [--events 1000000] [--seed 42] [--journal PATH]

Needs Linux `perf` (linux-perf / linux-tools) allowed to sample the process (root, or
kernel.perf_event_paranoid <= 2); without it the benchmark says so and is skipped. The categories are matched on
the sampled function's name, first match wins (CATEGORIES below), so a renamed function moves its share to
"other": the table shows that share too.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from replay import journal_for  # noqa: E402

# (category, pattern on "<object> <symbol>"), first match wins.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("the kernel (writing the output files, page faults)", r"^\[kernel"),
    ("SHA-256 of the hash chains", r"sha2::"),
    ("output: canonical JSON and decimal text", r"canonical::|json::write|numbers::write|ledger::Account::name"
                                                 r"|fmt::|Display|drop_in_place<backstop_engine::canonical"),
    ("input: JSON parsing and wire validation", r"json::Parser|wire::|content::"),
    ("the rules and the rest of the compiled engine", r"^_engine\."),
    ("copying and allocating memory (libc)", r"libc\.so|ld-linux"),
    ("Python (start-up, the batch loop, file writes)", r"libpython|\.cpython-|_pydantic_core|orjson|openblas"),
)
OTHER = "other"
_LINE = re.compile(r"^\s*([0-9.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*?)\s*$")
# The compiled replay's threads as perf names them (at most 15 characters): the decode stage (decodes and validates
# each chunk's lines and their admission digests ahead of the rules), the output writer (formats the postings,
# chains them and writes the files) and the one that builds accounts.json beside the summary; the rest is the
# engine's own thread (and Python's, and the helpers that rank the ADL queues and render accounts.json's pieces).
THREADS = (("the decode thread", "backstop-decode"), ("the output writer thread", "backstop-output"),
           ("the accounts.json thread", "backstop-accoun"))
_THREAD_LINE = re.compile(r"^\s*([0-9.]+)%\s+(.+?)\s*$")


def categorize(report: str) -> dict[str, float]:
    """perf report lines (`--sort dso,symbol`, no children) summed per category, in percent of all samples."""
    shares = {name: 0.0 for name, _ in CATEGORIES} | {OTHER: 0.0}
    for line in report.splitlines():
        match = _LINE.match(line)
        if match is None:
            continue
        percent, dso, symbol = float(match.group(1)), match.group(2), match.group(3)
        where = f"{dso} {symbol}"
        name = next((name for name, pattern in CATEGORIES if re.search(pattern, where)), OTHER)
        shares[name] += percent
    return {name: round(share, 1) for name, share in shares.items()}


def thread_shares(report: str) -> dict[str, float]:
    """perf report lines (`--sort comm`), in percent of all samples per thread of THREADS, the rest the engine's."""
    by_name: dict[str, float] = {}
    for line in report.splitlines():
        match = _THREAD_LINE.match(line)
        if match is not None:
            by_name[match.group(2)] = by_name.get(match.group(2), 0.0) + float(match.group(1))
    shares = {label: by_name.pop(name, 0.0) for label, name in THREADS}
    return {"the engine's thread (and Python)": round(sum(by_name.values()), 1)} | {
        label: round(share, 1) for label, share in shares.items()}


def run(events: int, seed: int, journal: Path | None = None) -> dict[str, Any] | None:
    perf = shutil.which("perf")
    if perf is None:
        print("profile benchmark skipped: `perf` is not installed (linux-perf)", file=sys.stderr)
        return None
    path = journal or journal_for(events, seed)
    with tempfile.TemporaryDirectory() as scratch:
        data, out = Path(scratch) / "perf.data", Path(scratch) / "out"
        recorded = subprocess.run([perf, "record", "-F", "499", "-o", str(data), "--", sys.executable, "-m",
                                   "backstop.entrypoints.cli", "replay", str(path), "--out", str(out),
                                   "--engine", "compiled"], capture_output=True, text=True, check=False)
        if recorded.returncode != 0:
            print(f"profile benchmark skipped: perf record failed: {recorded.stderr.strip()[-300:]}",
                  file=sys.stderr)
            return None
        written = sum(file.stat().st_size for file in out.iterdir())
        report = subprocess.run([perf, "report", "-i", str(data), "--no-children", "--sort", "dso,symbol",
                                 "--stdio", "-q"], capture_output=True, text=True, check=True).stdout
        by_thread = subprocess.run([perf, "report", "-i", str(data), "--no-children", "--sort", "comm", "--stdio",
                                    "-q"], capture_output=True, text=True, check=True).stdout
    shares = categorize(report)
    read = path.stat().st_size
    return {
        "name": "replay profile",
        "input": {"records": sum(1 for _ in path.open("rb")), "bytes_read": read, "bytes_written": written,
                  "written_per_byte_read": round(written / read, 1)},
        "figures": [{"figure": f"share of samples: {name}", "value": share, "unit": "%"}
                    for name, share in shares.items()]
                   + [{"figure": f"share of samples on {name}", "value": share, "unit": "%"}
                      for name, share in thread_shares(by_thread).items()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--journal", type=Path, default=None, help="profile this journal instead")
    args = parser.parse_args()
    print(json.dumps(run(args.events, args.seed, args.journal), indent=2))


if __name__ == "__main__":
    main()

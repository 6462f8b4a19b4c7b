"""Replay benchmark: events/s of `backstop replay` beside the orjson decode-only rate of the same file.

    python benchmarks/replay.py [--events 1000000] [--seed 42]

The journal is generated from the seed (benchmarks/journal_gen.py) and cached in benchmarks/data/.
Both figures are measured in the same run on the same file; the ratio is the one to compare across machines.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from backstop.wire.decode import decode_record  # noqa: E402
from journal_gen import VERSION as JOURNAL_VERSION  # noqa: E402


def journal_for(events: int, seed: int) -> Path:
    path = HERE / "data" / f"replay-{events}-seed{seed}-v{JOURNAL_VERSION}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()  # in a child process, so this one stays small for the memory figure
        subprocess.run([sys.executable, str(HERE / "journal_gen.py"), str(path), "--events", str(events),
                        "--seed", str(seed)], check=True, stdout=subprocess.DEVNULL)
        print(f"generated {path} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return path


def decode_only(path: Path) -> tuple[int, float]:
    """Read and orjson-decode every line: the floor any JSON replay pays."""
    started = time.perf_counter()
    count = 0
    with path.open("rb") as handle:
        for line in handle:
            orjson.loads(line)
            count += 1
    return count, time.perf_counter() - started


def validate_only(path: Path) -> tuple[int, float]:
    """Decode and validate against the wire models (no engine)."""
    started = time.perf_counter()
    count = 0
    with path.open("rb") as handle:
        for line in handle:
            decode_record(line.rstrip(b"\n"))
            count += 1
    return count, time.perf_counter() - started


# `backstop replay` in a child process that reports its own peak RSS (kB) on its last stderr line. VmHWM, not
# ru_maxrss: Linux carries ru_maxrss across exec, so a child of a large parent would report the parent's size.
_CLI_WITH_PEAK = ("import sys\n"
                  "from backstop.entrypoints.cli import main\n"
                  "code = main(sys.argv[1:])\n"
                  "with open('/proc/self/status') as status:\n"
                  "    print(next(line.split()[1] for line in status if line.startswith('VmHWM:')), file=sys.stderr)\n"
                  "sys.exit(code)\n")


def backstop_replay(path: Path) -> tuple[float, dict[str, Any], int]:
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        run = subprocess.run([sys.executable, "-c", _CLI_WITH_PEAK, "replay", str(path), "--out", out], check=True,
                             capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        peak_kib = int(run.stderr.strip().splitlines()[-1])
        summary = json.loads((Path(out) / "summary.json").read_text())
    return elapsed, summary, peak_kib


def run(events: int, seed: int) -> dict[str, Any]:
    path = journal_for(events, seed)
    replay_s, summary, peak_kib = backstop_replay(path)  # first: the peak-memory figure is the child's alone
    lines, decode_s = decode_only(path)
    _, validate_s = validate_only(path)
    replay_rate = lines / replay_s
    decode_rate = lines / decode_s
    return {
        "name": "replay",
        "input": {"records": lines, "bytes": path.stat().st_size, "seed": seed,
                  "events_applied": summary["events_applied"], "duplicates": summary["duplicates"],
                  "rejected": summary["rejected"], "fund_ledger_entries": summary["fund_ledger_entries"],
                  "adl_events": summary["adl_events"]},
        "figures": [
            {"figure": "backstop replay", "value": round(replay_rate), "unit": "records/s",
             "baseline": "orjson decode only", "baseline_value": round(decode_rate),
             "ratio": round(replay_rate / decode_rate, 3)},
            {"figure": "decode + validate (wire models)", "value": round(lines / validate_s), "unit": "records/s",
             "baseline": "orjson decode only", "baseline_value": round(decode_rate),
             "ratio": round(decode_s / validate_s, 3)},
            {"figure": "backstop replay wall time", "value": round(replay_s, 2), "unit": "s"},
            {"figure": "backstop replay peak memory", "value": round(peak_kib / 1024), "unit": "MiB"},
        ],
        "head_hash": summary["head_hash"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    print(json.dumps(run(args.events, args.seed), indent=2))


if __name__ == "__main__":
    main()

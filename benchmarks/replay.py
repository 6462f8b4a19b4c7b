"""Replay benchmark: events/s of `backstop replay` with each engine beside the orjson decode-only rate of the same file.

    python benchmarks/replay.py [--events 1000000] [--seed 42] [--engines compiled,reference]

The journal is generated from the seed (benchmarks/journal_gen.py) and cached in benchmarks/data/.
Both figures are measured in the same run on the same file; the ratio is the one to compare across machines. The
file is read once before anything is timed (no figure pays for a cold page cache), and the compiled replay and the
orjson decode each run RUNS times, their median reported (one run of a few seconds moves by several percent on a
shared host); the reference engine, about a minute and a half a run, once.
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

from backstop.wire.decode import decode_model  # noqa: E402
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
            decode_model(line.rstrip(b"\n"))
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


def backstop_replay(path: Path, engine: str | None = None) -> tuple[float, dict[str, Any], int]:
    """Wall time, summary and peak RSS (KiB) of `backstop replay` (the CLI's default engine unless one is named)."""
    chosen = ["--engine", engine] if engine else []
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        run = subprocess.run([sys.executable, "-c", _CLI_WITH_PEAK, "replay", str(path), "--out", out, *chosen],
                             check=True, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        peak_kib = int(run.stderr.strip().splitlines()[-1])
        summary = json.loads((Path(out) / "summary.json").read_text())
    return elapsed, summary, peak_kib


RUNS = 3


def median_run(runs: list[tuple[float, dict[str, Any], int]]) -> tuple[float, dict[str, Any], int]:
    """The run of median wall time, with the largest peak memory of all of them."""
    chosen = sorted(runs, key=lambda run: run[0])[len(runs) // 2]
    return chosen[0], chosen[1], max(run[2] for run in runs)


def run(events: int, seed: int, engines: list[str]) -> dict[str, Any]:
    path = journal_for(events, seed)
    with path.open("rb") as journal:  # into the page cache before anything is timed
        while journal.read(1 << 24):
            pass
    replays = {engine: median_run([backstop_replay(path, engine)
                                   for _ in range(RUNS if engine == "compiled" else 1)]) for engine in engines}
    decodes = sorted(decode_only(path) for _ in range(RUNS))
    lines, decode_s = decodes[len(decodes) // 2]
    _, validate_s = validate_only(path)
    decode_rate = lines / decode_s
    summary = replays[engines[0]][1]
    figures: list[dict[str, Any]] = []
    for engine, (replay_s, _, peak_kib) in replays.items():
        figures += [
            {"figure": f"backstop replay ({engine} engine)", "value": round(lines / replay_s), "unit": "records/s",
             "baseline": "orjson decode only", "baseline_value": round(decode_rate),
             "ratio": round(decode_s / replay_s, 3)},
            {"figure": f"backstop replay wall time ({engine} engine)", "value": round(replay_s, 2), "unit": "s"},
            {"figure": f"backstop replay peak memory ({engine} engine)", "value": round(peak_kib / 1024),
             "unit": "MiB"},
        ]
    if {"compiled", "reference"} <= replays.keys():
        figures.append({"figure": "compiled engine speedup over the reference", "unit": "x",
                        "value": round(replays["reference"][0] / replays["compiled"][0], 1)})
        hashes = {engine: (result[1]["head_hash"], result[1]["state_hash"]) for engine, result in replays.items()}
        if len(set(hashes.values())) != 1:
            raise SystemExit(f"the engines disagree on the head or state hash: {hashes}")
    figures.append({"figure": "decode + validate (wire models)", "value": round(lines / validate_s),
                    "unit": "records/s", "baseline": "orjson decode only", "baseline_value": round(decode_rate),
                    "ratio": round(decode_s / validate_s, 3)})
    return {
        "name": "replay",
        "input": {"records": lines, "bytes": path.stat().st_size, "seed": seed,
                  "events_applied": summary["events_applied"], "duplicates": summary["duplicates"],
                  "rejected": summary["rejected"], "fund_ledger_entries": summary["fund_ledger_entries"],
                  "adl_events": summary["adl_events"]},
        "figures": figures,
        "head_hash": summary["head_hash"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--engines", default="compiled,reference", help="comma-separated, the first one's summary "
                        "is reported")
    args = parser.parse_args()
    print(json.dumps(run(args.events, args.seed, args.engines.split(",")), indent=2))


if __name__ == "__main__":
    main()

"""Replay memory against journal length: the same 10,000 accounts trading at the same rate for 1 hour and for
4 hours of event time (4x the records; `--hours 48` makes a ~2 GB file). `backstop replay` streams its input and
dedupe forgets ids older than the 10-minute lateness window, so peak memory should not grow with the length; the
ratio is the figure.

    python benchmarks/memory.py [--accounts 10000] [--events-per-hour 250000] [--hours 4] [--seed 11]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from incident import generate, in_child  # noqa: E402
from replay import backstop_replay  # noqa: E402


def run(accounts: int, events_per_hour: int, seed: int, long_hours: int = 4) -> dict[str, Any]:
    peaks, sizes = {}, {}
    for hours in (1, long_hours):
        path = HERE / "data" / f"memory-{accounts}-{events_per_hour}-{hours}h-seed{seed}.jsonl"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            in_child(generate, path, accounts=accounts, events=events_per_hour * hours, block=0, seed=seed,
                     minutes=60 * hours)
        _, summary, peak_kib = backstop_replay(path)
        peaks[hours], sizes[hours] = peak_kib / 1024, path.stat().st_size
        assert summary["rejected"] == 0
    return {
        "name": "replay memory",
        "input": {"accounts": accounts, "records_per_hour": events_per_hour, "seed": seed,
                  "bytes_1h": sizes[1], f"bytes_{long_hours}h": sizes[long_hours]},
        "figures": [
            {"figure": f"peak memory, {long_hours} h of events", "value": round(peaks[long_hours]), "unit": "MiB",
             "baseline": "peak memory, 1 h of events", "baseline_value": round(peaks[1]),
             "ratio": round(peaks[long_hours] / peaks[1], 2)},
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--events-per-hour", type=int, default=250_000)
    parser.add_argument("--hours", type=int, default=4, help="the long journal's hours of event time")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    print(json.dumps(run(args.accounts, args.events_per_hour, args.seed, args.hours), indent=2))


if __name__ == "__main__":
    main()

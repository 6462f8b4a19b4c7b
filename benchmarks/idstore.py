"""Held identities (docs/design.md §4, Admission): memory per identity and cost per insert and per lookup at 10 and
100 million identities, for the replay's store (backstop.core.idstore.IdStore: sorted runs of 32-byte entries
behind a Bloom filter) and the service's filter over PostgreSQL (backstop.pipeline.held_ids.ServiceIds), beside a
plain Python set of the same 16-byte digests at 10 million, in the same run.

    python benchmarks/idstore.py [--sizes 10000000 100000000] [--baseline 10000000] [--seed 7]

Every measurement runs in a child process of its own: memory is the child's resident growth while it fills the
structure (RSS, not an estimate), and no run inherits another's heap. Digests are seeded random bytes, as uniform
as SHA-256's. Inserts go one at a time through the public path the engine uses (the store's cost includes sorting
the recent identities into runs and merging runs); lookups are of identities never inserted (what almost every new
fill is) and of identities held (a duplicate).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

CHUNK = 1_000_000  # digests generated at a time
LOOKUPS = 1_000_000
HITS = 200_000
BATCH = 5000  # the service's batch: identities looked up together


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def _warm(seed: int) -> None:
    """One chunk's digests made and dropped, so that the allocator's arenas for them are not counted as the
    structure's memory."""
    _fill(lambda key: None, CHUNK, seed + 7)


def _fill(add: Callable[[bytes], None], size: int, seed: int) -> tuple[float, list[bytes]]:
    """Insert `size` digests one at a time; returns the seconds spent in `add` and a sample of the digests."""
    rng = np.random.default_rng(seed)
    sample: list[bytes] = []
    elapsed = 0.0
    for start in range(0, size, CHUNK):
        count = min(CHUNK, size - start)
        data = rng.bytes(16 * count)
        keys = [data[i:i + 16] for i in range(0, len(data), 16)]
        sample.extend(keys[:: max(1, size // HITS)][: HITS - len(sample)])
        began = time.perf_counter()
        for key in keys:
            add(key)
        elapsed += time.perf_counter() - began
    return elapsed, sample


def _misses(seed: int) -> list[bytes]:
    data = np.random.default_rng(seed + 1_000_003).bytes(16 * LOOKUPS)
    return [data[i:i + 16] for i in range(0, len(data), 16)]


def _timed_lookups(lookup: Callable[[bytes], Any], keys: list[bytes]) -> float:
    began = time.perf_counter()
    for key in keys:
        lookup(key)
    return (time.perf_counter() - began) / len(keys)


def measure_store(size: int, seed: int, report: Any) -> None:
    from backstop.core.idstore import IdStore

    misses = _misses(seed)
    store = IdStore()
    content = bytes(8)
    seq = iter(range(1, size + 1))
    _warm(seed)
    before = rss_bytes()
    insert_s, sample = _fill(lambda key: store.add(key, content, next(seq)), size, seed)
    store.flush()
    grown = rss_bytes() - before
    passed = sum(store._filter.might(key) for key in misses[:100_000]) / 100_000
    report.put({"insert_ns": insert_s / size * 1e9, "miss_ns": _timed_lookups(store.held, misses) * 1e9,
                "hit_ns": _timed_lookups(store.held, sample) * 1e9, "bytes_per_id": grown / size,
                "array_bytes_per_id": store.nbytes / size, "filter_passes": passed, "runs": len(store._runs)})


def measure_filter(size: int, seed: int, report: Any) -> None:
    from backstop.pipeline.held_ids import ServiceIds

    misses = _misses(seed)
    ids = ServiceIds(size)
    before = rss_bytes()
    rng = np.random.default_rng(seed)
    began = time.perf_counter()
    for start in range(0, size, CHUNK):
        ids.load(rng.bytes(16 * min(CHUNK, size - start)))
    load_s = time.perf_counter() - began
    grown = rss_bytes() - before
    asked, began = 0, time.perf_counter()
    for start in range(0, LOOKUPS, BATCH):
        asked += len(ids.unresolved(misses[start:start + BATCH]))
    batch_s = time.perf_counter() - began
    report.put({"load_ns": load_s / size * 1e9, "batch_ns_per_id": batch_s / LOOKUPS * 1e9,
                "bytes_per_id": grown / size, "asked": asked / LOOKUPS})


def measure_set(size: int, seed: int, report: Any) -> None:
    misses = _misses(seed)
    held: set[bytes] = set()
    _warm(seed)
    before = rss_bytes()
    insert_s, sample = _fill(held.add, size, seed)
    grown = rss_bytes() - before
    report.put({"insert_ns": insert_s / size * 1e9, "miss_ns": _timed_lookups(held.__contains__, misses) * 1e9,
                "hit_ns": _timed_lookups(held.__contains__, sample) * 1e9, "bytes_per_id": grown / size})


def in_child(function: Callable[..., None], *args: Any) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    report = context.Queue()
    process = context.Process(target=function, args=(*args, report))
    process.start()
    result: dict[str, Any] = report.get()
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"{function.__name__}{args} failed with exit code {process.exitcode}")
    return result


def _millions(size: int) -> str:
    return f"{size // 1_000_000}M"


def run(sizes: list[int], baseline_size: int, seed: int) -> dict[str, Any]:
    base = in_child(measure_set, baseline_size, seed)
    label = f"Python set of the digests, {_millions(baseline_size)}"
    figures = []
    extra: dict[str, Any] = {}
    for size in sizes:
        store = in_child(measure_store, size, seed)
        service = in_child(measure_filter, size, seed)
        at = _millions(size)
        figures += [
            {"figure": f"replay store, memory per identity, {at}", "value": round(store["bytes_per_id"], 1),
             "unit": "bytes", "baseline": label, "baseline_value": round(base["bytes_per_id"], 1),
             "ratio": round(store["bytes_per_id"] / base["bytes_per_id"], 2)},
            {"figure": f"replay store, insert, {at}", "value": round(store["insert_ns"]), "unit": "ns",
             "baseline": label, "baseline_value": round(base["insert_ns"]),
             "ratio": round(store["insert_ns"] / base["insert_ns"], 2)},
            {"figure": f"replay store, lookup of a new identity, {at}", "value": round(store["miss_ns"]), "unit": "ns",
             "baseline": label, "baseline_value": round(base["miss_ns"]),
             "ratio": round(store["miss_ns"] / base["miss_ns"], 2)},
            {"figure": f"replay store, lookup of a held identity, {at}", "value": round(store["hit_ns"]), "unit": "ns",
             "baseline": label, "baseline_value": round(base["hit_ns"]),
             "ratio": round(store["hit_ns"] / base["hit_ns"], 2)},
            {"figure": f"service filter, memory per identity, {at}", "value": round(service["bytes_per_id"], 2),
             "unit": "bytes", "baseline": label, "baseline_value": round(base["bytes_per_id"], 1),
             "ratio": round(service["bytes_per_id"] / base["bytes_per_id"], 3)},
            {"figure": f"service filter, batch lookup per identity, {at}", "value": round(service["batch_ns_per_id"]),
             "unit": "ns", "baseline": label, "baseline_value": round(base["miss_ns"]),
             "ratio": round(service["batch_ns_per_id"] / base["miss_ns"], 2)},
            {"figure": f"service filter, new identities left to PostgreSQL, {at}",
             "value": round(service["asked"] * 100, 3), "unit": "%"},
        ]
        extra[f"store_{at}"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in store.items()}
        extra[f"filter_{at}"] = {k: round(v, 4) for k, v in service.items()}
    return {"name": "held identities",
            "input": {"sizes": ", ".join(_millions(s) for s in sizes), "baseline": _millions(baseline_size),
                      "seed": seed, "lookups": LOOKUPS, "batch": BATCH},
            "figures": figures, "detail": extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000_000, 100_000_000])
    parser.add_argument("--baseline", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(json.dumps(run(args.sizes, args.baseline, args.seed), indent=2))


if __name__ == "__main__":
    sys.exit(main())

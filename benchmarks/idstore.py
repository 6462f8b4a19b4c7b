"""Held identities (docs/design.md §4, Admission): memory per identity and cost per insert and per lookup at 10 and
100 million identities, for the replay's store (backstop.core.idstore.IdStore: sorted runs of 32-byte entries
behind a Bloom filter) and the service's filter over PostgreSQL (backstop.pipeline.held_ids.ServiceIds), beside a
plain Python set of the same 16-byte digests at 10 million, in the same run.

    python benchmarks/idstore.py [--sizes 10000000 100000000] [--baseline 10000000] [--seed 7] [--pg-rows N]

With --pg-rows N (and BACKSTOP_BENCH_PG_DSN, a role that may create databases; default the local server), it also
fills a scratch database's applied_ids with N identities and times what a service start does with them (the filter
loaded with one COPY) and the batch's lookup query, then drops the database.

Every measurement runs in a child process of its own: memory is the child's resident growth while it fills the
structure (RSS, not an estimate), and no run inherits another's heap. Digests are seeded random bytes, as uniform
as SHA-256's. Inserts go one at a time through the public path the engine uses (the store's cost includes sorting
the recent identities into runs and merging runs); lookups are of identities never inserted (what almost every new
fill is) and of identities held (a duplicate).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import secrets
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
    passed = sum(store.filter_passes(key) for key in misses[:100_000]) / 100_000
    report.put({"insert_ns": insert_s / size * 1e9, "miss_ns": _timed_lookups(store.held, misses) * 1e9,
                "hit_ns": _timed_lookups(store.held, sample) * 1e9, "bytes_per_id": grown / size,
                "array_bytes_per_id": store.nbytes / size, "filter_passes": passed, "runs": store.runs})


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


async def _pg_load(rows: int, seed: int) -> dict[str, Any]:
    from urllib.parse import urlsplit, urlunsplit

    import asyncpg

    from backstop.adapters.postgres.migrations import migrate
    from backstop.adapters.postgres.store import Store
    from backstop.pipeline.held_ids import ServiceIds

    server_dsn = os.environ.get("BACKSTOP_BENCH_PG_DSN", "postgresql://backstop@127.0.0.1:5432/backstop")
    name = f"bench_ids_{secrets.token_hex(3)}"
    parts = urlsplit(server_dsn)
    dsn = urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
    server = await asyncpg.connect(server_dsn)
    await server.execute(f'CREATE DATABASE "{name}"')
    try:
        await migrate(dsn)
        connection = await asyncpg.connect(dsn)
        rng = np.random.default_rng(seed)
        held: list[bytes] = []
        for start in range(0, rows, CHUNK):
            count = min(CHUNK, rows - start)
            data = rng.bytes(16 * count)
            seqs = range(start + 1, start + count + 1)
            await connection.copy_records_to_table("journal", columns=[
                "seq", "source_topic", "source_partition", "source_offset", "type", "ts", "payload", "payload_hash"],
                records=[(seq, "bench", 0, seq, "fill", 0, "{}", "") for seq in seqs])
            await connection.copy_records_to_table("applied_ids", columns=["id_digest", "content_digest", "seq"],
                                                   records=[(data[16 * i:16 * i + 16], bytes(8), seq)
                                                            for i, seq in enumerate(seqs)])
            held.extend(data[16 * i:16 * i + 16] for i in range(0, count, max(1, rows // 100)))
        await connection.execute("ANALYZE applied_ids")
        await connection.close()
        store = await Store.open(dsn)
        try:
            ids = ServiceIds(await store.held_estimate())
            began = time.perf_counter()
            await store.held_keys(ids.load)
            load_s = time.perf_counter() - began
            medians = {}
            for label, asked in (("filtered", held[:10] + _misses(seed)[:10]),  # what the filter leaves of a batch
                                 ("unfiltered", held[:10] + _misses(seed)[:BATCH - 10])):  # all of it
                timings = []
                for _ in range(20):
                    began = time.perf_counter()
                    found = await store.held(asked)
                    timings.append(time.perf_counter() - began)
                assert len(found) == 10
                medians[label] = sorted(timings)[len(timings) // 2] * 1000
            assert len(ids) == rows
        finally:
            await store.close()
    finally:
        await server.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await server.close()
    return {"rows": rows, "load_s": load_s, **medians}


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


def run(sizes: list[int], baseline_size: int, seed: int, pg_rows: int = 0) -> dict[str, Any]:
    base = in_child(measure_set, baseline_size, seed)
    label = f"Python set of the digests, {_millions(baseline_size)}"
    figures = []
    extra: dict[str, Any] = {}
    for size in sizes:
        store = in_child(measure_store, size, seed)
        service = in_child(measure_filter, size, seed)
        at = _millions(size)
        figures += [
            {"figure": f"replay store, memory per identity (resident growth), {at}",
             "value": round(store["bytes_per_id"], 1),
             "unit": "bytes", "baseline": label, "baseline_value": round(base["bytes_per_id"], 1),
             "ratio": round(store["bytes_per_id"] / base["bytes_per_id"], 2)},
            {"figure": f"replay store, its arrays and filter per identity, {at}",
             "value": round(store["array_bytes_per_id"], 1), "unit": "bytes"},
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
    if pg_rows:
        loaded = asyncio.run(_pg_load(pg_rows, seed))
        figures += [
            {"figure": f"service start: filter loaded from PostgreSQL, {pg_rows:,} identities",
             "value": round(loaded["load_s"] / pg_rows * 1e9), "unit": "ns per identity"},
            {"figure": f"service: a batch's lookup query, 20 identities the filter left, {pg_rows:,} held",
             "value": round(loaded["filtered"], 2), "unit": "ms", "baseline": f"all {BATCH} of the batch's",
             "baseline_value": round(loaded["unfiltered"], 2),
             "ratio": round(loaded["filtered"] / loaded["unfiltered"], 3)},
        ]
    return {"name": "held identities",
            "input": {"sizes": ", ".join(_millions(s) for s in sizes), "baseline": _millions(baseline_size),
                      "seed": seed, "lookups": LOOKUPS, "batch": BATCH},
            "figures": figures, "detail": extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000_000, 100_000_000])
    parser.add_argument("--baseline", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pg-rows", type=int, default=0, help="also time a service start over N held identities")
    args = parser.parse_args()
    print(json.dumps(run(args.sizes, args.baseline, args.seed, args.pg_rows), indent=2))


if __name__ == "__main__":
    sys.exit(main())

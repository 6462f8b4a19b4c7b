"""Latency benchmark: from a liquidation sent to its input topic to the matching ADL event read by a downstream
consumer, p50/p99/max, while a background load of fills and marks runs at a fixed rate.

    python benchmarks/latency.py [--rate 20000] [--seconds 15] [--probes-per-second 10] [--counterparties 1000]
                                 [--trace]

`backstop serve` runs as its own process, as in production; this process produces the load and the probes and
consumes the ADL topic. The clock starts just before a probe is handed to the producer (so the figure includes
the append) and stops when the consumer receives the first ADL event carrying that liquidation_id. Every probe
deleverages: the fund's max_inventory_ratio is 0, and 1,000 shorts (--counterparties), all alike, stand on the
other side. Needs the local servers, like benchmarks/service.py.

With --trace the service logs its stage stamps (BACKSTOP_TRACE_STAGES) and the result says, per stage, where the
probes' time went (p50, p99, max in ms): into the service's consumer, the event-time merge, the engine, the projection
rows, the wait for the batch before to commit, the commit, the relay's wait, its read, the publish until Kafka
acknowledged it, and back out to this consumer.

Baseline, same run: each probe is also sent to a scratch topic that nothing processes, and the same consumer
reads it back: the raw Kafka hop (append, then readable downstream) under the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pydantic import SecretStr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from backstop.adapters.kafka import admin  # noqa: E402
from backstop.adapters.kafka.tools import end_offsets, ensure_topics, produce_file  # noqa: E402
from backstop.pipeline.topics import TopicNames, input_key  # noqa: E402
from backstop.settings import Settings  # noqa: E402
from service import SERVER_DSN, _with_database, anchor_key_file, drop_database, prepare_database  # noqa: E402

BACKSTOP = Path(sys.executable).parent / "backstop"
T0 = 1_760_100_000_000
SHORTS, PROBES, BACKGROUND_ACCOUNTS = 1000, 2000, 200


def prelude(probes: int, shorts: int = SHORTS) -> list[dict[str, Any]]:
    """A fund that keeps no inventory, BTC shorts to deleverage against, BTC longs to liquidate, ETH traders."""
    records: list[dict[str, Any]] = [
        {"type": "fund", "ts": T0, "fund_id": "MAIN", "settle_asset": "USDT", "surplus": "fund",
         "max_inventory_ratio": "0"},
        {"type": "transfer", "ts": T0, "transfer_id": "seed", "account_id": "fund:MAIN", "asset": "USDT",
         "amount": "1000000"}]
    for symbol, tick, lot in (("BTCUSDT", "0.1", "0.001"), ("ETHUSDT", "0.01", "0.01")):
        records.append({"type": "instrument", "ts": T0, "symbol": symbol, "settle_asset": "USDT", "tick_size": tick,
                        "lot_size": lot, "tiers": [{"max_notional": "1000000000", "mmr": "0.005",
                                                    "maint_amount": "0"}],
                        "liquidation_fee_rate": "0.005", "fund_id": "MAIN"})
    accounts: list[tuple[str, str | None, str | None, str | None, str | None]] = [
        (f"short-{n}", "sell", "0.1", "BTCUSDT", "100000") for n in range(shorts)]
    accounts += [(f"probe-{n}", "buy", "0.01", "BTCUSDT", "100000") for n in range(probes)]
    accounts += [(f"bg-{n}", None, None, None, None) for n in range(BACKGROUND_ACCOUNTS)]
    for account, side, qty, opened, price in accounts:
        records.append({"type": "transfer", "ts": T0, "transfer_id": f"d-{account}", "account_id": account,
                        "asset": "USDT", "amount": "100000"})
        if side:
            records.append({"type": "fill", "ts": T0, "fill_id": f"open-{account}", "account_id": account,
                            "symbol": opened, "side": side, "qty": qty, "price": price, "fee": "0",
                            "margin_mode": "isolated", "leverage": "10"})
    records += [{"type": "mark", "ts": T0, "symbol": "BTCUSDT", "mark_price": "100000"},
                {"type": "mark", "ts": T0, "symbol": "ETHUSDT", "mark_price": "4000"}]
    return records


def serve(settings: Settings, log: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "BACKSTOP_KAFKA_BOOTSTRAP": settings.kafka_bootstrap, "BACKSTOP_PG_DSN": settings.dsn(),
           "BACKSTOP_ANCHOR_KEY_FILE": str(settings.anchor_key_file),
           "BACKSTOP_TOPIC_PREFIX": settings.topic_prefix, "BACKSTOP_WEB_PORT": str(port),
           "BACKSTOP_TRACE_STAGES": str(settings.trace_stages).lower()}
    return subprocess.Popen([str(BACKSTOP), "serve"], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, cwd=log.parent)  # faust puts its data dir in the cwd


async def wait_consumed(dsn: str, ends: dict[tuple[str, int], int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            connection = await asyncpg.connect(dsn)
            try:
                rows = await connection.fetch("SELECT topic, partition, next_offset FROM consumed_offsets")
            finally:
                await connection.close()
            offsets = {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
            if all(offsets.get(tp, 0) >= end for tp, end in ends.items() if end):
                return
        except (OSError, asyncpg.PostgresError):
            pass
        await asyncio.sleep(0.2)
    raise TimeoutError("the service did not consume the prelude")


async def measure(settings: Settings, rate: int, seconds: float, probes_per_second: int,
                  probes_seen: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The latencies; with `probes_seen`, per probe its input partition and offset, when it was sent and when its
    first ADL event came back, with that event's position (for the stage breakdown)."""
    topics = TopicNames(settings.topic_prefix)
    sent: dict[str, float] = {}
    latency: dict[str, float] = {}
    positions: dict[str, int] = {}
    probe_acks: dict[str, asyncio.Future[Any]] = {}
    hop: dict[str, float] = {}  # the baseline: the same probe through Kafka alone
    echo = f"{settings.topic_prefix}echo"
    consumer = AIOKafkaConsumer(topics.adl_events, echo, bootstrap_servers=settings.kafka_bootstrap, group_id=None,
                                auto_offset_reset="latest")
    await consumer.start()
    await consumer.getmany(timeout_ms=500)  # joined and positioned at the end before the first probe

    async def read_adl() -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batch.values():
                for record in records:
                    liquidation_id = orjson.loads(record.value)["liquidation_id"]
                    seen = hop if record.topic == echo else latency
                    if liquidation_id in sent and liquidation_id not in seen:
                        seen[liquidation_id] = now - sent[liquidation_id]
                        if seen is latency:
                            headers = dict(record.headers or ())
                            positions[liquidation_id] = int(headers.get("backstop-position", b"0"))

    reader = asyncio.create_task(read_adl())
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=2,
                                enable_idempotence=True, max_batch_size=1 << 20)
    await producer.start()
    try:
        started = time.perf_counter()
        tick, produced, probes, pending = 0.01, 0, 0, []
        while (elapsed := time.perf_counter() - started) < seconds:
            ts = T0 + 1000 + int(elapsed * 1000)
            due = int(elapsed * rate) - produced
            for _ in range(max(due, 0)):
                n = produced
                produced += 1
                if n % 10 == 0:
                    record: dict[str, Any] = {"ts": ts, "symbol": "ETHUSDT",
                                              "mark_price": f"{4000 + (n // 10) % 50}"}
                    topic, key = topics.input("mark"), "ETHUSDT"
                else:
                    account = f"bg-{n % BACKGROUND_ACCOUNTS}"
                    record = {"ts": ts, "fill_id": f"bg-{n}", "account_id": account, "symbol": "ETHUSDT",
                              "side": "buy" if (n // BACKGROUND_ACCOUNTS) % 2 == 0 else "sell", "qty": "0.01",
                              "price": "4000", "fee": "0", "margin_mode": "cross", "leverage": "10"}
                    topic, key = topics.input("fill"), account
                pending.append(await producer.send(topic, orjson.dumps(record), key=key.encode()))
            if int(elapsed * probes_per_second) >= probes and probes < PROBES:
                liquidation_id = f"probe-liq-{probes}"
                record = {"ts": ts, "liquidation_id": liquidation_id, "account_id": f"probe-{probes}",
                          "symbol": "BTCUSDT", "qty": "0.01", "mark_price": "100000", "executions": []}
                sent[liquidation_id] = time.perf_counter()
                probe_key = input_key("liquidation", record).encode()
                probe_acks[liquidation_id] = await producer.send(topics.input("liquidation"), orjson.dumps(record),
                                                                  key=probe_key)
                pending.append(probe_acks[liquidation_id])
                pending.append(await producer.send(echo, orjson.dumps(record), key=probe_key))
                probes += 1
            if len(pending) > 20000:
                await asyncio.gather(*pending)
                pending.clear()
            await asyncio.sleep(tick)
        await asyncio.gather(*pending)
        offered_s = time.perf_counter() - started
        deadline = time.monotonic() + 600
        while (len(latency) < len(sent) or len(hop) < len(sent)) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        reader.cancel()
        await producer.stop()
        await consumer.stop()
    if probes_seen is not None:
        for liquidation_id, ack in probe_acks.items():
            metadata = ack.result()
            probes_seen[liquidation_id] = {"partition": metadata.partition, "offset": metadata.offset,
                                           "sent": sent[liquidation_id], "position": positions.get(liquidation_id),
                                           "received": sent[liquidation_id] + latency.get(liquidation_id, 0.0)}
    if len(latency) < len(sent) or len(hop) < len(sent):
        raise RuntimeError(f"of {len(sent)} probes, {len(latency)} came back as ADL events and {len(hop)} through "
                           f"the scratch topic")
    return {"background_rate": round(produced / offered_s), "probes": len(sent),
            **_percentiles(latency.values()), **{f"hop_{k}": v for k, v in _percentiles(hop.values()).items()}}


STAGES = (("kafka_in", "sent", "fetched"), ("merge", "fetched", "released"), ("gather", "released", "closed"),
          ("apply", "closed", "applied"),
          ("project", "applied", "projected"), ("commit_wait", "projected", "commit_start"),
          ("commit", "commit_start", "committed"), ("relay_wait", "committed", "read"),
          ("relay_read", "read", "read_done"), ("publish", "read_done", "acked"), ("kafka_out", "acked", "received"))


def stages(probes: dict[str, dict[str, Any]], serve_log: Path) -> dict[str, Any]:
    """Where each probe's time went, from the service's trace lines: the batch that held its liquidation, the relay
    round that published its ADL event. Stamps on both sides are the machine's monotonic clock."""
    batches: dict[tuple[int, int], dict[str, Any]] = {}
    rounds: list[dict[str, Any]] = []
    sizes: list[int] = []
    for line in serve_log.read_bytes().splitlines():
        if b'"backstop.trace"' not in line:
            continue
        entry = orjson.loads(line)
        if entry["message"] == "batch stages":
            sizes.append(entry["records"])
            for partition, offset, fetched, released in entry["liquidations"]:
                batches[(partition, offset)] = {**entry, "fetched": fetched, "released": released}
        elif "adl_events" in entry["up_to"]:
            rounds.append(entry)
    spans: dict[str, list[float]] = {name: [] for name, _, _ in STAGES}
    for probe in probes.values():
        batch = batches.get((probe["partition"], probe["offset"]))
        relay_round = next((r for r in rounds if probe["position"] is not None
                            and r["up_to"]["adl_events"] >= probe["position"]), None)
        if batch is None or relay_round is None:
            continue
        stamps = {**batch, **{k: relay_round[k] for k in ("read", "read_done", "acked")}, "sent": probe["sent"],
                  "received": probe["received"]}
        for name, start, end in STAGES:
            spans[name].append(stamps[end] - stamps[start])
    traced = len(spans["kafka_in"])
    return {"probes_traced": traced, "batches": len(sizes),
            "batch_records": _spread(sizes),
            **({f"{name}_ms": _percentiles(values) for name, values in spans.items()} if traced else {})}


def _spread(values: list[int]) -> dict[str, int]:
    ordered = sorted(values) or [0]
    return {"p50": ordered[len(ordered) // 2], "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
            "max": ordered[-1]}


def _percentiles(seconds: Any) -> dict[str, float]:
    values = sorted(seconds)
    return {"p50_ms": round(statistics.median(values) * 1000, 1),
            "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))] * 1000, 1),
            "max_ms": round(values[-1] * 1000, 1)}


async def run_async(rate: int, seconds: float, probes_per_second: int, shorts: int = SHORTS,
                    serve_log: Path | None = None, traced: bool = False) -> dict[str, Any]:
    run_id = secrets.token_hex(3)
    database = f"backstop_latency_{run_id}"
    settings = Settings(kafka_bootstrap=os.environ.get("BACKSTOP_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
                        topic_prefix=f"lat_{run_id}.", input_partitions=3, output_partitions=3)
    server = await asyncpg.connect(SERVER_DSN)
    await server.execute(f'CREATE DATABASE "{database}"')
    process = None
    try:
        with tempfile.TemporaryDirectory() as scratch:
            settings = settings.model_copy(update={
                "pg_dsn": SecretStr(await prepare_database(_with_database(SERVER_DSN, database))),
                "anchor_key_file": anchor_key_file(scratch)})
            ensure_topics(settings)
            admin.create(settings.kafka_bootstrap, [admin.TopicPlan(f"{settings.topic_prefix}echo", 3, {})])
            journal = Path(scratch) / "prelude.jsonl"
            journal.write_bytes(b"\n".join(orjson.dumps(r) for r in prelude(PROBES, shorts)) + b"\n")
            await produce_file(settings, journal)
            log = Path(scratch) / "serve.log"
            import socket

            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            process = serve(settings.model_copy(update={"trace_stages": traced}), log, port)
            await wait_consumed(settings.dsn(), await end_offsets(settings, list(TopicNames(
                settings.topic_prefix).inputs)), timeout=300)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
                assert response.status == 200
            probes: dict[str, dict[str, Any]] | None = {} if traced else None
            try:
                result = await measure(settings, rate, seconds, probes_per_second, probes)
                if probes is not None:
                    result["stages"] = stages(probes, log)
            finally:
                if serve_log is not None:
                    serve_log.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(log, serve_log)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=60)
        topics = TopicNames(settings.topic_prefix)
        admin.delete(settings.kafka_bootstrap, [*topics.inputs, *topics.outputs, f"{settings.topic_prefix}echo"])
        await drop_database(server, database)
        await server.close()
    return result


def run(rates: list[int], seconds: float, probes_per_second: int, shorts: int = SHORTS,
        serve_log: Path | None = None, traced: bool = False) -> dict[str, Any]:
    figures, runs = [], {}
    for rate in rates:
        log = None if serve_log is None else serve_log.with_name(f"{serve_log.stem}-{rate}{serve_log.suffix}")
        result = asyncio.run(run_async(rate, seconds, probes_per_second, shorts, log, traced))
        runs[f"rate_{rate}"] = result
        for name in ("p50_ms", "p99_ms", "max_ms"):
            hop = result[f"hop_{name}"]
            figures.append({"figure": f"liquidation -> ADL event, {name[:-3]}, background {rate:,}/s offered "
                                      f"({result['background_rate']:,}/s sent)", "value": result[name], "unit": "ms",
                            "baseline": "raw Kafka hop", "baseline_value": hop,
                            "ratio": round(result[name] / hop, 1) if hop else ""})
    return {"name": "latency", "input": {"seconds": seconds, "probes_per_second": probes_per_second,
                                        "counterparties": shorts, **{k: v["probes"] for k, v in runs.items()}},
            "figures": figures,
            **({"stages": {k: v["stages"] for k, v in runs.items()}} if traced else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, action="append", help="background events/s (repeatable); "
                        "default 20000 and 1000")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--probes-per-second", type=int, default=10)
    parser.add_argument("--counterparties", type=int, default=SHORTS,
                        help="open BTC shorts on the other side (the state the service holds); default 1000")
    parser.add_argument("--serve-log", type=Path, help="keep the service's log here (one file per rate)")
    parser.add_argument("--trace", action="store_true", help="the service logs its stage stamps; the result says "
                        "where the probes' time went, stage by stage")
    args = parser.parse_args()
    print(json.dumps(run(args.rate or [20000, 1000], args.seconds, args.probes_per_second, args.counterparties,
                         args.serve_log, args.trace), indent=2))


if __name__ == "__main__":
    main()

"""What a Kafka transaction per relay round would cost the latency of a round (docs/service.md, "The relay").

    python benchmarks/relay_transactions.py [--rounds 300] [--pairs 2] [--rate 100]

The relay sends each round with an idempotent producer. A transactional one (a transactional id shared by the
relay and its standby) would fence a relay whose lock ended with a round in flight; each round would then be a
transaction: AddPartitionsToTxn, the produce, EndTxn. This times a round as the relay would send it (one record of
about an ADL event's size to each of three partitions, awaited) both ways, alternating the two producers `--pairs`
times, `--rounds` rounds each at `--rate` rounds a second, on a topic of its own (dropped after), and prints each
run's p50, p99 and max in ms. Needs the local Kafka (deploy/local/kafka start) or BACKSTOP_KAFKA_BOOTSTRAP; writes
results/relay-transactions-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from machine import describe  # noqa: E402

PARTITIONS = 3
RECORD = b"x" * 900  # about an ADL event's JSON


def _quantile(sorted_ms: list[float], fraction: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * fraction))]


async def _rounds(bootstrap: str, topic: str, transactional: bool, rounds: int, rate: float) -> list[float]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True, acks="all",
                                transactional_id=f"{topic}-relay" if transactional else None)
    await producer.start()
    try:
        took = []
        for number in range(rounds + 10):  # the first ten warm the connections and are not counted
            started = time.perf_counter()
            if transactional:
                await producer.begin_transaction()
            sent = [await producer.send(topic, RECORD, partition=p) for p in range(PARTITIONS)]
            await asyncio.gather(*sent)
            if transactional:
                await producer.commit_transaction()
            if number >= 10:
                took.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(max(0.0, 1 / rate - (time.perf_counter() - started)))
        return sorted(took)
    finally:
        await producer.stop()


async def measure(bootstrap: str, rounds: int, pairs: int, rate: float) -> list[dict[str, Any]]:
    topic = f"bench-txn-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
        await asyncio.sleep(1)  # the topic's metadata reaches the broker
        runs = []
        for pair in range(pairs):
            for transactional in ((False, True) if pair % 2 == 0 else (True, False)):  # ABBA
                took = await _rounds(bootstrap, topic, transactional, rounds, rate)
                runs.append({"producer": "transactional" if transactional else "idempotent (the relay's)",
                             "p50_ms": round(_quantile(took, 0.5), 2), "p99_ms": round(_quantile(took, 0.99), 2),
                             "max_ms": round(took[-1], 2), "rounds": len(took)})
        return runs
    finally:
        await admin.delete_topics([topic])
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--rate", type=float, default=100.0)
    args = parser.parse_args()
    bootstrap = os.environ.get("BACKSTOP_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    runs = asyncio.run(measure(bootstrap, args.rounds, args.pairs, args.rate))
    for run in runs:
        print(f"{run['producer']:<26} p50 {run['p50_ms']:7.2f} ms  p99 {run['p99_ms']:7.2f} ms  "
              f"max {run['max_ms']:7.2f} ms  ({run['rounds']} rounds)")
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M")
    result = {"name": "relay_transactions", "machine": describe(), "rounds": args.rounds, "rate": args.rate,
              "runs": runs}
    (HERE / "results" / f"relay-transactions-{stamp}.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

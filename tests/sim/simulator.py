"""A deterministic simulator of the service, in the spirit of TigerBeetle's VOPR and FoundationDB's simulation
testing.

The real ledger processor and outbox relay (their supervised loops, the steps of each turn, the merge, ingest, the
engine, projections, the work written behind) run on the in-memory ports (backstop.adapters.memory,
backstop.service.forked.Inline), on an event loop whose clock is simulated: nothing sleeps, nothing reads the wall
clock, and one seed decides everything: the journal, how its records spread over partitions, the bad and repeated
records among them, whether they are all in the topics at the start or appended while the service runs, the
settings that shape batches, how the consumer's fetches behave, and the faults.

Faults: the process dies (kill -9) after any step or inside a store call (in-memory state lost; the database keeps
what was committed); a commit fails before it lands, or lands and then fails; commits are slow; fetch sizes vary;
fetch responses come late, per broker node, so the ends they carry are stale; deliveries repeat; a partition's
leader is away for a while (no fetch, no end); forked work is late or dies; a publish fails part-way; a standby
process takes over from the active one.

After every step of either loop, the invariants of docs/design.md section 6 are checked against a reference: the
same records merged with every record present, applied one at a time. What the database holds must be the
reference cut at the consumed offsets (the consumed records are a prefix of the merge order; the journal, fund
ledger, ADL events, dead letters and outbox are that prefix's, row for row; the head's seq, hashes and counters
too), the tables only grow (append-only), the in-memory engine balances (conservation) and agrees with the reference
at its seq, and no output record id is published twice. At the end: everything consumed and published once, the
state hash recorded, the position rows the last process left equal the reference's, and after a restart every
projection does. The reference itself is checked against a replay without the bad records (bad input never changes
state).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any, Literal, ParamSpec, TypeVar

import orjson
from journals import journal

from backstop.adapters.memory.broker import MemoryBroker, MemoryConsumer, MemoryPublisher, StoredRecord
from backstop.adapters.memory.store import MemoryDatabase, MemoryStore
from backstop.adapters.postgres.store import OUTBOX, TABLE_SOURCES
from backstop.core.dedupe import HeldRow, content_digest, identity, key_digest
from backstop.core.engine import Engine
from backstop.core.hashing import canonical_json, record_dict
from backstop.core.processor import Processor
from backstop.core.snapshot import state_hash
from backstop.engines import ENGINES, EngineName
from backstop.pipeline import projections
from backstop.pipeline.ingest import (
    BatchResult,
    Consumed,
    DeadLetter,
    JournalRow,
    OutboxMessage,
    ingest_batch,
    outbox_messages,
)
from backstop.pipeline.merge import event_time
from backstop.pipeline.topics import INPUT_TYPES, TopicNames, input_key
from backstop.service.forked import Inline
from backstop.service.ledger_loop import LedgerProcessor
from backstop.service.ports import OUTBOX_HEADER, RECORD_ID_HEADER, Partition, Runtime, place_in_headers
from backstop.service.relay import OutboxRelay, partition_for
from backstop.settings import Settings
from backstop.wire.decode import decode_record

P = ParamSpec("P")
T = TypeVar("T")
PREFIX = "sim."
TOPICS = TopicNames(PREFIX)
SOURCE_OF = {TOPICS.of_source(source): source for source in TABLE_SOURCES}  # a table source's topic -> the source
POOL_SIZE = 48  # journals drawn once per process; each seed picks one and spreads it its own way
POLL_S = 0.1  # how often (simulated) the simulator looks at the processes
TIME_LIMIT_S = 3600.0  # simulated: a seed that has not finished by then has stopped making progress
RESTART_DELAY_S = (0.0, 1.0)  # a crashed process comes back after a random (simulated) delay in this range
REQUEST_TIMEOUT_S = 2.0  # the simulated consumer's request timeout (a stall longer than this fails a request)
IDLE_STEPS = ("fetch", "merge", "housekeeping")  # steps of every turn, also the idle ones: crashes there are rarer


class Crashed(BaseException):
    """The simulated process died here (kill -9). A BaseException: nothing in the service may catch it."""


class SimulationFailure(AssertionError):
    pass


class Abort(BaseException):
    """An invariant broke inside one of the service's tasks: raised there so that the service cannot catch it and
    retry; the simulation then raises the failure itself."""


# ------------------------------------------------------------------------------------------------ simulated time
class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock only moves when every task waits: it then jumps to the next timer. No real I/O
    happens in a simulation, so the selector is never waited on."""

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0

        def jump(timeout: float | None = None) -> Any:
            if timeout is None:
                raise SimulationFailure("deadlock: every task waits for something that never comes")
            self._now += max(timeout, 0.0)
            return []  # no file descriptor is ever ready: nothing here does I/O, nor wakes the loop from a thread

        self._selector.select = jump  # type: ignore[attr-defined]
        # Tasks of a killed process end with Crashed, nobody awaiting them: not worth a report.
        self.set_exception_handler(lambda loop, context: None)

    def time(self) -> float:
        return self._now


# ------------------------------------------------------------------------------------------------ the input
@cache
def pool() -> tuple[tuple[bytes, ...], ...]:
    """Journals (records as canonical JSON with their type), drawn once: seed i of the pool is always the same."""
    drawn = []
    for index in range(POOL_SIZE):
        rng = random.Random(1_000_003 * index)
        drawn.append(tuple(canonical_json(r) for r in journal(rng, rng.randint(5, 40))))
    return tuple(drawn)


BAD_RECORDS: tuple[Callable[[int], tuple[str, bytes | None]], ...] = (
    lambda ts: ("fill", b"{not json"),
    lambda ts: ("mark", b"null"),
    lambda ts: ("transfer", None),  # a tombstone
    lambda ts: ("fill", orjson.dumps({"type": "mark", "ts": ts, "symbol": "BTCUSDT", "mark_price": "1"})),
    lambda ts: ("mark", orjson.dumps({"ts": ts, "symbol": "NOPE", "mark_price": "1"})),
    lambda ts: ("liquidation", orjson.dumps({"ts": ts, "liquidation_id": "x"})),
    lambda ts: ("fill", orjson.dumps({"ts": ts, "fill_id": "z", "account_id": "a0", "symbol": "BTCUSDT",
                                      "side": "buy", "qty": "-1", "price": "1", "fee": "0", "margin_mode": "cross",
                                      "leverage": "1"})),
)


def merge_order(partitions: dict[Partition, list[Consumed]]) -> list[Consumed]:
    """The order the merge must decide, with every record known: of the partitions' next records, always the least
    by (ts, type rank, topic, partition, offset)."""
    rank = {TOPICS.input(t): i for i, t in enumerate(INPUT_TYPES)}
    cursor = dict.fromkeys(partitions, 0)
    order = []
    while True:
        heads = [(event_time(records[cursor[p]]), rank[p[0]], p[0], p[1], cursor[p]) for p, records in
                 partitions.items() if cursor[p] < len(records)]
        if not heads:
            return order
        _, _, topic, number, offset = min(heads)
        order.append(partitions[(topic, number)][offset])
        cursor[(topic, number)] += 1


def comparable(value: Any) -> Any:
    if value is None or isinstance(value, int | Decimal):
        return None if value is None else Decimal(value)
    try:
        return Decimal(value)
    except InvalidOperation:
        return value


@dataclass
class Reference:
    """The outcome every run must reach, and where it stands after each prefix of the merge order."""

    order: list[Consumed]
    seq: list[int] = field(default_factory=lambda: [0])  # per prefix length: journal rows ...
    duplicates: list[int] = field(default_factory=lambda: [0])
    rejected: list[int] = field(default_factory=lambda: [0])
    head_hash: list[str] = field(default_factory=lambda: [""])
    lengths: list[tuple[int, int, int, int]] = field(default_factory=lambda: [(0, 0, 0, 0)])  # ledger, adl, dl, outbox
    hash_at_seq: dict[int, str] = field(default_factory=dict)
    journal: list[JournalRow] = field(default_factory=list)
    fund_ledger: list[str] = field(default_factory=list)
    adl_events: list[str] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    outbox: list[OutboxMessage] = field(default_factory=list)
    state_hash: str = ""
    accounts: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    held: list[HeldRow] = field(default_factory=list)  # the identities the journal's rows hold, in seq order


def held_rows(journal: list[JournalRow]) -> list[HeldRow]:
    """What applied_ids must hold for these journal rows (docs/design.md §4.1): each identity once, with its
    content digest and the seq that holds it."""
    rows = []
    for row in journal:
        record = decode_record(row.payload)
        found = identity(record)
        if found is not None:
            rows.append((key_digest(found), content_digest(record), row.seq))
    return rows


def reference(order: list[Consumed]) -> Reference:
    ref = Reference(order)
    processor = Processor(Engine(check_conservation=True, adl_quantiles=True))  # as the service (settings)
    for record in order:
        result = ingest_batch(processor, [record], TOPICS)
        ref.journal += result.journal
        ref.fund_ledger += [canonical_json(record_dict(e)).decode() for e in result.fund_entries]
        ref.adl_events += [canonical_json(record_dict(e)).decode() for e in result.adl_events]
        ref.dead_letters += result.dead_letters
        ref.outbox += outbox_messages(result)
        engine = processor.engine
        ref.seq.append(engine.last_seq)
        ref.duplicates.append(processor.duplicates)
        ref.rejected.append(processor.rejected)
        ref.head_hash.append(engine.head_hash if engine.last_seq else "")
        ref.hash_at_seq[engine.last_seq] = engine.head_hash
        ref.lengths.append((len(ref.fund_ledger), len(ref.adl_events), len(ref.dead_letters), len(ref.outbox)))
    engine = processor.engine
    ref.held = held_rows(ref.journal)
    ref.state_hash = state_hash(engine)
    ref.accounts = account_rows_of(engine)
    # bad input never changes state: without the records dead-lettered, the same journal, ledger and state
    dead = {(d.source_topic, d.source_partition, d.source_offset) for d in ref.dead_letters}
    if not dead:
        return ref
    clean = Processor(Engine(check_conservation=True, adl_quantiles=True))
    kept = ingest_batch(clean, [r for r in order if (r.topic, r.partition, r.offset) not in dead], TOPICS)
    if ([r.payload for r in kept.journal], clean.engine.head_hash, state_hash(clean.engine)) != (
            [r.payload for r in ref.journal], engine.head_hash, ref.state_hash):
        raise SimulationFailure("the records dead-lettered changed the outcome")
    return ref


def account_rows_of(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    rows = projections.build(engine, BatchResult(), refresh_all=True, touched=projections.Touched.everything(engine))
    return {"wallets": sorted(tuple(map(comparable, r[:3])) for r in rows.wallets),
            "positions": sorted(tuple(map(comparable, r[:8])) for r in rows.positions),
            "funds": sorted(tuple(map(comparable, (r[0], r[4]))) for r in rows.funds)}


@cache
def base_settings() -> Settings:
    return Settings(topic_prefix=PREFIX, kafka_bootstrap="simulated:0", check_conservation=True)


@dataclass
class Scenario:
    seed: int
    rng: random.Random
    settings: Settings
    partitions: dict[Partition, list[StoredRecord]]
    output_partitions: int
    live: bool  # appended while the service runs (in merge order, each after the one before), or there at start
    reference: Reference
    bad: int
    repeated: int


def scenario(seed: int) -> Scenario:
    rng = random.Random(seed)
    lines = [orjson.loads(line) for line in pool()[rng.randrange(POOL_SIZE)]]
    counts = {t: rng.choice((1, 1, 2, 3)) for t in INPUT_TYPES}
    sends: list[tuple[str, bytes, bytes | None]] = []  # (record type, key, value)
    for record in lines:
        record_type = record.pop("type")
        sends.append((record_type, input_key(record_type, record).encode(), orjson.dumps(record)))
    bad = rng.choice((0, 0, 1, 2, 4))
    for _ in range(bad):
        record_type, value = rng.choice(BAD_RECORDS)(rng.choice(lines)["ts"])
        sends.insert(rng.randrange(len(sends) + 1), (record_type, b"bad", value))
    repeated = rng.choice((0, 0, 1, 3))
    for _ in range(repeated):  # a record sent again, identical, later on
        at = rng.randrange(len(sends))
        sends.insert(rng.randrange(at, len(sends)) + 1, sends[at])
    partitions: dict[Partition, list[StoredRecord]] = {
        (TOPICS.input(t), n): [] for t in INPUT_TYPES for n in range(counts[t])}
    for record_type, key, value in sends:
        partitions[(TOPICS.input(record_type), partition_for(key.decode(), counts[record_type]))].append(
            StoredRecord(key, value))
    consumed = {p: [Consumed(p[0], p[1], offset, r.key, r.value) for offset, r in enumerate(records)]
                for p, records in partitions.items()}
    settings = base_settings().model_copy(update={
        "batch_max_records": rng.choice((1, 2, 3, 7, 50, 5000)), "batch_max_wait_ms": rng.choice((50, 200)),
        "merge_max_buffered": rng.choice((1, 3, 10, 200_000)),
        "snapshot_every_events": rng.choice((0, 4, 10, 30)), "adl_refresh_events": rng.choice((1, 5, 50_000)),
        "adl_refresh_event_ms": rng.choice((1, 60_000)), "state_hash_quiet_ms": rng.choice((0, 50, 300)),
        "relay_batch": rng.choice((1, 3, 2000)), "relay_idle_ms": rng.choice((20, 100)),
        # by the seed, not the stream: the seeds' other choices stay as they were
        "adl_refresh_events_per_position": (0, 4)[seed % 2], "snapshot_events_per_position": (0, 4)[seed // 2 % 2]})
    return Scenario(seed, rng, settings, partitions, rng.choice((1, 2, 3)), rng.random() < 0.5,
                    reference(merge_order(consumed)), bad, repeated)


# ------------------------------------------------------------------------------------------------ faults
class Faults:
    """Faults drawn from the seed, at most `budget` of them, and none after `until` (simulated seconds), so that
    every run can finish."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.budget = rng.choice((0, 2, 5, 10, 20))
        self.until = rng.uniform(0.2, 10.0)
        self.scale = rng.choice((0.3, 1.0, 3.0))  # how fault-prone this run is
        self.injected: Counter[str] = Counter()

    def draw(self, kind: str, probability: float) -> bool:
        if self.budget <= 0 or asyncio.get_running_loop().time() >= self.until:
            return False
        if self.rng.random() >= probability * self.scale:
            return False
        self.budget -= 1
        self.injected[kind] += 1
        return True


class Disorder:
    """How the simulated consumers' fetches behave (backstop.adapters.memory.broker.Disorder)."""

    def __init__(self, rng: random.Random, partitions: list[Partition]) -> None:
        self.rng = rng
        nodes = rng.randint(1, 3)
        self.nodes = {p: rng.randrange(nodes) for p in partitions}
        self.late = rng.choice((0.0, 0.3, 0.7))
        self.sizes = rng.choice(("all", "few", "any"))
        self.pauses = rng.random() < 0.5
        self.repeats = rng.choice((0.0, 0.0, 0.05, 0.2))
        self.stalls: dict[Partition, tuple[float, float]] = {}
        for partition in rng.sample(partitions, k=min(len(partitions), rng.choice((0, 0, 1, 2)))):
            start = rng.uniform(0, 5)
            self.stalls[partition] = (start, start + rng.choice((0.2, 1.0, REQUEST_TIMEOUT_S + 1)))

    def node_of(self, partition: Partition) -> int:
        return self.nodes[partition]

    def answers(self, node: int) -> bool:
        return self.rng.random() >= self.late

    def take(self, partition: Partition, available: int) -> int:
        if self.sizes == "all" or not available:
            return available
        return self.rng.randint(0, min(available, 3)) if self.sizes == "few" else self.rng.randint(0, available)

    def pause(self) -> float:
        return self.rng.choice((0.0, 0.0, 0.001, 0.02)) if self.pauses else 0.0

    def repeat(self, partition: Partition, delivered: int) -> int:
        return self.rng.randint(1, delivered) if delivered and self.rng.random() < self.repeats else 0

    def away(self, partition: Partition) -> bool:
        window = self.stalls.get(partition)
        return window is not None and window[0] <= asyncio.get_running_loop().time() < window[1]


# ------------------------------------------------------------------------------------------------ a process
class Process:
    """One `backstop serve`: the ledger processor and the relay on one store session."""

    def __init__(self, sim: Simulation, number: int) -> None:
        self.sim, self.name = sim, f"process {number}"
        # the engine of this process: a restart may switch engines, rebuilding from what the other one wrote
        self.engine: EngineName = sim.engine or sim.rng.choice(ENGINES)
        settings = sim.settings.model_copy(update={"engine": self.engine})
        self.store = MemoryStore(sim.db, interpose=self._store_point)
        runtime = Runtime(consumer=lambda _: MemoryConsumer(sim.broker, sim.disorder,
                                                            request_timeout_s=REQUEST_TIMEOUT_S),
                          publisher=lambda _: MemoryPublisher(sim.broker, interpose=self._publish_point),
                          background=self._background, offload=sim.offload, checkpoint=self._checkpoint)
        self.relay = OutboxRelay(settings, self.store, runtime)
        self.ledger = LedgerProcessor(settings, self.store, runtime, on_commit=self.relay.wake)
        self.tasks = [asyncio.create_task(self.ledger.run_forever()), asyncio.create_task(self.relay.run_forever())]
        self.alive = True

    def kill(self) -> None:
        if self.alive:
            self.alive = False
            self.store.kill()
            for task in self.tasks:
                task.cancel()

    def crash(self, where: str) -> None:
        self.sim.trace.append((self.name, f"crash {where}", self.sim.now()))
        self.kill()
        raise Crashed(where)

    async def _checkpoint(self, step: str) -> None:
        if not self.alive:
            raise Crashed(step)
        self.sim.check(self, step)
        await self.sim.interleave()
        if self.sim.faults.draw("crash after a step", 0.002 if step in IDLE_STEPS else 0.02):
            self.crash(f"after {step}")

    async def _store_point(self, point: str) -> None:
        faults, rng = self.sim.faults, self.sim.rng
        if point == "commit":
            if faults.draw("slow commit", 0.1):
                await asyncio.sleep(rng.uniform(0.0, 0.5))
            if faults.draw("commit fails", 0.02):
                raise ConnectionError("simulated: connection lost before the commit")
            if faults.draw("crash in a commit", 0.01):
                self.crash("in a commit, before it landed")
        elif point == "committed":
            if faults.draw("commit lands, then fails", 0.02):
                raise ConnectionError("simulated: connection lost after COMMIT was sent")
            if faults.draw("crash after a commit landed", 0.01):
                self.crash("after a commit landed")
        else:
            if faults.draw(f"{point} fails", 0.003):
                raise ConnectionError(f"simulated: {point} failed")
            if faults.draw("crash in a store call", 0.002):
                self.crash(f"in {point}")

    async def _publish_point(self, point: str) -> None:
        sim = self.sim
        if sim.faults.draw("publish fails part-way", 0.005 * sim.publish_faults):
            sim.count_block_cut()
            raise ConnectionError("simulated: publish failed part-way")
        if sim.faults.draw("crash while publishing", 0.003 * sim.publish_faults):
            sim.count_block_cut()
            self.crash("while publishing")

    def _background(self, kind: str, errors: dict[str, str]) -> Inline[Any]:
        faults, rng = self.sim.faults, self.sim.rng

        def outcome() -> Literal["running", "done", "failed"]:
            if faults.draw(f"forked {kind} dies", 0.05):
                return "failed"
            return "running" if rng.random() < 0.3 else "done"

        return Inline(kind, errors, outcome)


# ------------------------------------------------------------------------------------------------ the simulation
@dataclass
class Report:
    seed: int
    records: int
    journal: int
    faults: Counter[str]
    processes: int
    simulated_s: float
    checks: int
    live: bool
    trace: list[tuple[str, str, float]]  # every step and crash, in order, with its simulated time
    engines: list[str]  # each process's engine, in the order they started
    blocks_cut: int  # publish faults that left a quantile block part published
    relay_rounds: Counter[str]  # relay rounds with rows, by where they came from (handed over or read)


class Simulation:
    def __init__(self, seed: int, engine: EngineName | None = None, publish_faults: float = 1.0) -> None:
        self.seed = seed
        self.engine = engine  # None: each process draws its engine from the seed
        self.publish_faults = publish_faults  # how much likelier than by default a fault is while publishing
        self.scenario = scenario(seed)
        self.rng = self.scenario.rng
        self.settings = self.scenario.settings
        self.reference = self.scenario.reference
        self.db = MemoryDatabase()
        self.broker = MemoryBroker()
        self.faults = Faults(self.rng)
        self.disorder = Disorder(self.rng, sorted(self.scenario.partitions))
        self.processes: list[Process] = []
        self.trace: list[tuple[str, str, float]] = []
        self.checks = 0
        self.failure: SimulationFailure | None = None
        self.appended = False
        # what the checks have seen so far
        self.prefix = 0  # records of the merge order consumed (committed offsets)
        self.offsets: dict[Partition, int] = {}
        self.seen_rows: dict[str, tuple[int, object]] = {}
        self.outbox_of: dict[str, list[OutboxMessage]] = {}  # the reference's outbox records per topic, in order
        for message in self.reference.outbox:
            self.outbox_of.setdefault(message.topic, []).append(message)
        self.outbox_at: dict[str, int] = {}  # per topic: outbox rows checked
        self.blocks_cut = 0  # publish faults that left a quantile block part published
        self.published: dict[tuple[str, int], str] = {}  # (source, its id) -> record id
        self.published_at: dict[Partition, int] = {}  # per output partition: records checked
        self.cursors: dict[str, int] = {}  # each relay source's cursor, as last seen
        self.held_seen = 0  # identities of the reference checked in applied_ids
        self.written: tuple[int, ...] = (-1,)
        self.appends = -1
        self.engine_at: tuple[int, int] | None = None

    def count_block_cut(self) -> None:
        """A publish fault with a quantile block part in Kafka, part not (the relay's restart must neither send
        again what is there nor skip the rest) is counted apart: the tests require such faults to happen."""
        published = {place[1] for log in self.broker.topics[TOPICS.adl_quantiles] for record in log
                     if (place := place_in_headers(record.headers)) is not None}
        start = 0
        for end in self.db.outbox_rows:
            there = sum(1 for row_id in range(start + 1, end + 1) if row_id in published)
            if 0 < there < end - start:
                self.blocks_cut += 1
                return
            start = end

    @staticmethod
    def now() -> float:
        return asyncio.get_running_loop().time()

    def fail(self, message: str) -> SimulationFailure:
        return SimulationFailure(f"seed {self.seed}: {message} (simulated time {self.now():.3f} s; faults so far "
                                 f"{dict(self.faults.injected)}; reproduce: BACKSTOP_SIM_SEED={self.seed} "
                                 f"scripts/test tests/sim)")

    async def interleave(self) -> None:
        """Let other tasks run a little (a random number of loop turns): the commit beside the next batch, the
        relay beside the processor."""
        for _ in range(self.rng.choice((0, 0, 1, 3))):
            await asyncio.sleep(0)

    async def offload(self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        await self.interleave()
        return func(*args, **kwargs)

    # ---------------------------------------------------------------- running
    async def run(self) -> Report:
        scenario = self.scenario
        for topic in TOPICS.inputs:
            self.broker.create(topic, sum(1 for t, _ in scenario.partitions if t == topic))
        for topic in TOPICS.outputs:
            self.broker.create(topic, scenario.output_partitions)
        producer = asyncio.create_task(self._produce())
        self.processes.append(Process(self, 1))
        handover_at = self.rng.uniform(0.1, 10.0) if self.rng.random() < 0.2 else None
        restart_at: float | None = None
        while not (self.appended and self._done()):
            await asyncio.sleep(POLL_S)
            if self.failure is not None:
                raise self.failure
            if self.now() > TIME_LIMIT_S:
                raise self.fail(f"no progress: {self.prefix} of {len(self.reference.order)} records consumed")
            self._reap()
            if producer.done() and producer.exception() is not None:
                raise self.fail(f"the producer failed: {producer.exception()!r}")
            live = [p for p in self.processes if p.alive]
            if handover_at is not None and self.now() >= handover_at and live:
                handover_at = None
                self.processes.append(Process(self, len(self.processes) + 1))  # a standby: waits on the locks
                await self._leave(live[0], kill=self.rng.random() < 0.5)
            elif not live and restart_at is None:
                restart_at = self.now() + self.rng.uniform(*RESTART_DELAY_S)
            elif restart_at is not None and self.now() >= restart_at:
                restart_at = None
                self.processes.append(Process(self, len(self.processes) + 1))
        for process in [p for p in self.processes if p.alive]:
            await self._leave(process, kill=False)
        self._final()
        await self._projections_after_a_restart()
        return Report(self.seed, len(self.reference.order), len(self.reference.journal), self.faults.injected,
                      len(self.processes), self.now(), self.checks, scenario.live, self.trace,
                      [process.engine for process in self.processes], self.blocks_cut,
                      sum((process.relay.rounds for process in self.processes), Counter()))

    async def _produce(self) -> None:
        """Every record in merge order, each appended after the one before: there at the start, or while the
        service runs (then the journal must still be the reference: a record is never ordered as if one appended
        before it did not exist)."""
        scenario = self.scenario
        for record in self.reference.order:
            if scenario.live:
                await asyncio.sleep(self.rng.choice((0.0, 0.0, 0.001, 0.01, 0.2)))
            self.broker.append(record.topic, record.partition, record.key, record.value)
        self.appended = True

    async def _leave(self, process: Process, *, kill: bool) -> None:
        """A worker leaves: killed, or stopped (a clean stop lands the batch already applied)."""
        if kill:
            process.kill()
        else:
            process.ledger.stop()
            process.relay.stop()
        results = await asyncio.gather(*process.tasks, return_exceptions=True)
        process.alive = False
        process.store.kill()
        self._check_results(process, results)

    def _reap(self) -> None:
        for process in self.processes:
            if process.alive and any(task.done() for task in process.tasks):
                process.kill()  # one loop ended: the process is not serving, whatever the other does
            if not process.alive and all(task.done() for task in process.tasks):
                self._check_results(process, [t.exception() if not t.cancelled() else None for t in process.tasks])

    def _check_results(self, process: Process, results: list[Any]) -> None:
        for result in results:
            if self.failure is not None:
                raise self.failure
            if isinstance(result, BaseException) and not isinstance(result, Crashed | asyncio.CancelledError):
                raise self.fail(f"{process.name} stopped on {type(result).__name__}: {result}") from result

    def _done(self) -> bool:
        db, ref = self.db, self.reference
        head = db.engine_head
        return (self.prefix == len(ref.order) and head is not None and head["state_hash_seq"] == head["seq"]
                and len(self.published) == len(ref.outbox) + sum(map(len, db.relayed.values())))

    # ---------------------------------------------------------------- the invariants
    def check(self, process: Process, step: str) -> None:
        try:
            self._check(process, step)
        except SimulationFailure as failure:
            self.failure = self.failure or failure
            raise Abort(str(failure)) from failure

    def _check(self, process: Process, step: str) -> None:
        self.checks += 1
        self.trace.append((process.name, step, self.now()))
        written = (self.db.transactions, self.db.relay_cursor, *self.db.relay_cursors.values())
        if written != self.written:  # what can change the tables
            self.written = written
            self._check_store(step)
        if self.broker.appends != self.appends:  # or the topics
            self.appends = self.broker.appends
            self._check_published()
        run = process.ledger.current
        engine_at = (id(run), run.engine.last_seq) if run is not None else None
        if run is not None and engine_at != self.engine_at:
            self.engine_at = engine_at
            engine = run.engine
            total = engine.ledger_sum()
            if total != 0:
                raise self.fail(f"conservation: the balances sum to {total} after {step} ({engine.name} engine)")
            head = self.db.engine_head
            seq, head_hash = engine.head()[:2]
            if head is not None and seq < head["seq"]:
                raise self.fail(f"the engine at seq {seq} is behind the stored head {head['seq']}")
            if seq and head_hash != self.reference.hash_at_seq.get(seq):
                raise self.fail(f"the {engine.name} engine's head hash at seq {seq} is not the reference's")

    def _check_store(self, step: str) -> None:
        db, ref = self.db, self.reference
        for partition, offset in db.consumed_offsets.items():
            if offset < self.offsets.get(partition, 0):
                raise self.fail(f"the consumed offset of {partition} moved back to {offset}")
        self.offsets = dict(db.consumed_offsets)
        total = sum(self.offsets.values())
        while self.prefix < total:  # the consumed records must be the next ones of the merge order
            record = ref.order[self.prefix]
            if record.offset >= self.offsets.get((record.topic, record.partition), 0):
                raise self.fail(f"consumed out of merge order: record {self.prefix} of the reference "
                                f"({record.topic}:{record.partition}@{record.offset}) is not consumed, but "
                                f"{total} records are (offsets {sorted(self.offsets.items())})")
            self.prefix += 1
        length = self.prefix
        head = db.engine_head
        if head is not None:
            stored = (head["seq"], head["head_hash"] if head["seq"] else "", head["duplicates"], head["rejected"])
            want = (ref.seq[length], ref.head_hash[length], ref.duplicates[length], ref.rejected[length])
            if stored != want:
                raise self.fail(f"after {step}: the stored head {stored} is not the reference's {want} at "
                                f"{length} records consumed")
        ledger, adl, dead, outbox = ref.lengths[length]
        tables: list[tuple[str, list[Any], list[Any], Callable[[Any], Any]]] = [
            ("journal", db.journal, ref.journal, lambda row: row),
            ("fund_ledger", db.fund_ledger, ref.fund_ledger, lambda row: row[3]),
            ("adl_events", db.adl_events, ref.adl_events, lambda row: row[3]),
            ("dead_letter", db.dead_letter, ref.dead_letters, lambda row: row),
            ("outbox", db.outbox, ref.outbox, lambda row: (row.topic, row.key, row.record_id, row.payload)),
        ]
        wants = {"journal": ref.seq[length], "fund_ledger": ledger, "adl_events": adl, "dead_letter": dead,
                 "outbox": outbox}
        for name, rows, expected, view in tables:
            seen, last = self.seen_rows.get(name, (0, None))
            if len(rows) < seen or (seen and rows[seen - 1] is not last):
                raise self.fail(f"append-only: {name} lost or changed rows after {step}")
            if len(rows) != wants[name]:
                raise self.fail(f"{name} holds {len(rows)} rows, the reference {wants[name]} at {length} consumed")
            for index in range(seen, len(rows)):
                if name == "outbox":  # per topic in the reference's order: a batch's block comes before its dead
                    topic = rows[index].topic  # letters, which one record at a time interleaves with it
                    at = self.outbox_at.get(topic, 0)
                    self.outbox_at[topic] = at + 1
                    want = self.outbox_of[topic][at]
                    want = (want.topic, want.key, want.record_id, want.payload.decode())
                else:
                    want = expected[index]
                if view(rows[index]) != want:
                    raise self.fail(f"{name} row {index + 1} differs from the reference after {step}")
            self.seen_rows[name] = (len(rows), rows[-1] if rows else None)
        committed = ref.seq[length]  # applied_ids holds exactly the identities of the committed journal rows
        held = ref.held
        while self.held_seen < len(held) and held[self.held_seen][2] <= committed:
            key = held[self.held_seen][0]
            if db.applied_ids.get(key) != held[self.held_seen]:
                raise self.fail(f"applied_ids: identity {key.hex()} of seq {held[self.held_seen][2]} is "
                                f"{db.applied_ids.get(key)} after {step}")
            self.held_seen += 1
        if len(db.applied_ids) != self.held_seen:
            raise self.fail(f"applied_ids holds {len(db.applied_ids)} identities, the journal's rows {self.held_seen}")
        cursors = {OUTBOX: db.relay_cursor, **db.relay_cursors}
        for source, cursor in cursors.items():
            if cursor < self.cursors.get(source, 0):
                raise self.fail(f"the relay cursor of {source} moved back")
        self.cursors = cursors

    def _check_published(self) -> None:
        db = self.db
        for topic in TOPICS.outputs:
            for number, log in enumerate(self.broker.topics[topic]):
                start = self.published_at.get((topic, number), 0)
                for record in log[start:]:
                    headers = dict(record.headers)
                    place, record_id = place_in_headers(record.headers), headers[RECORD_ID_HEADER].decode()
                    if place is None:
                        raise self.fail(f"published record {record_id} names no place in a source")
                    header, row_id = place
                    source = OUTBOX if header == OUTBOX_HEADER else SOURCE_OF[topic]
                    if (source, row_id) in self.published:
                        raise self.fail(f"exactly once: {source} row {row_id} ({record_id}) published twice")
                    rows = db.outbox if source == OUTBOX else db.relayed[source]
                    row = rows[row_id - 1] if 0 < row_id <= len(rows) else None
                    if row is None or (row.id, row.record_id, row.payload.encode()) != (row_id, record_id,
                                                                                        record.value):
                        raise self.fail(f"published record {record_id} is not {source} row {row_id}")
                    if source == OUTBOX and row.topic != topic:
                        raise self.fail(f"outbox row {row_id} was published to {topic}, not {row.topic}")
                    self.published[(source, row_id)] = record_id
                self.published_at[(topic, number)] = len(log)

    def _final(self) -> None:
        self._check_store("the end")
        self._check_published()
        ref, head = self.reference, self.db.engine_head
        if self.prefix != len(ref.order):
            raise self.fail(f"only {self.prefix} of {len(ref.order)} records consumed")
        if head is None or head["state_hash"] != ref.state_hash or head["state_hash_seq"] != ref.seq[-1]:
            raise self.fail("the state hash recorded at the head is not the reference's")
        # The position rows as the last process left them, before any restart rewrites them: a row a batch should
        # have deleted or rewritten shows here (the marks' columns, and wallets after funding, wait for a refresh).
        have = sorted(tuple(map(comparable, r[:7])) for r in self.db.positions.values())
        want = sorted(row[:7] for row in ref.accounts["positions"])
        if have != want:
            raise self.fail(f"the position rows left by the last process are not the reference's: extra "
                            f"{sorted(set(have) - set(want))[:5]}, missing {sorted(set(want) - set(have))[:5]}")
        every = [(OUTBOX, row.id) for row in self.db.outbox] + [
            (source, row.id) for source, rows in self.db.relayed.items() for row in rows]
        if sorted(self.published) != sorted(every):
            raise self.fail("exactly once: a row was never published")

    async def _projections_after_a_restart(self) -> None:
        """Every start rewrites every projection row from the rebuilt engine (the rows a crash lost, or a refresh
        that died): after one, the account rows are the reference's."""
        self.faults.budget = 0
        process = Process(self, len(self.processes) + 1)
        self.processes.append(process)
        while not process.ledger.progress.ready:
            await asyncio.sleep(POLL_S)
            self._reap()
            if not process.alive:
                raise self.fail("the last restart did not come up")
        await self._leave(process, kill=False)
        db = self.db
        have = {"wallets": sorted(tuple(map(comparable, r[:3])) for r in db.wallets.values()),
                "positions": sorted(tuple(map(comparable, r[:8])) for r in db.positions.values()),
                "funds": sorted(tuple(map(comparable, (r[0], r[4]))) for r in db.funds.values())}
        if have != self.reference.accounts:
            raise self.fail(f"the account projections after a restart are not the reference's: {have} != "
                            f"{self.reference.accounts}")


def simulate(seed: int, engine: EngineName | None = None, publish_faults: float = 1.0) -> Report:
    """One seed, start to end, on a loop of its own; raises SimulationFailure naming the seed. `engine`: every
    process runs it (None: each process draws one from the seed, so restarts switch engines too); `publish_faults`
    multiplies the odds of a fault while the relay publishes."""
    loop = VirtualClockLoop()
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # the service logs every fault it rides out; here that is noise
    try:
        return loop.run_until_complete(Simulation(seed, engine, publish_faults).run())
    finally:
        logging.disable(previous)
        for task in asyncio.all_tasks(loop):
            task.cancel()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()

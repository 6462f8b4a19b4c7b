"""One consumed batch through dedupe, sequencing and the engine, into the rows the service persists.

The service reads a batch from Kafka, looks up the identities in it that only PostgreSQL can decide
(`resolve_identities`, one query), calls `ingest_batch` (pure: no I/O), and writes the returned `BatchResult` to
PostgreSQL in one transaction (journal rows, held identities, effects, dead letters, outbox, offsets). The outbox
gets only what has no table of its own: the batch's quantile records as one block (their canonical JSON lines, in
order) and its dead letters; the relay publishes the journal rows and the effects from their tables
(backstop.service.relay).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, NamedTuple

import orjson

from backstop.core.anchor import journal_step
from backstop.core.dedupe import HeldRow, identity, identity_of_fields, key_digest
from backstop.core.errors import InvariantViolation, RejectionKind, one_line
from backstop.core.events import EVENT_TYPES, Event
from backstop.core.hashing import canonical_json, record_dict
from backstop.core.processor import Applied, Duplicate, Processor
from backstop.core.records import (
    SCHEMA_VERSION,
    AdlEvent,
    AdlQuantileRecord,
    DeadLetterRecord,
    Finding,
    FundLedgerEntry,
    Posting,
    kept_raw,
)
from backstop.pipeline.copy_text import copy_rows
from backstop.pipeline.held_ids import ServiceIds
from backstop.pipeline.topics import TopicNames
from backstop.wire.decode import MAX_RECORD_BYTES, InvalidRecord, decode_record, refuse_repeated_key, shown, validate
from backstop.wire.translate import to_event

RAW_KEEP_BYTES = 64 * 1024


# The per-record containers are NamedTuples: immutable like a frozen dataclass, whose __init__ sets each field
# through object.__setattr__, several times slower, and three of them are made per record.
class Consumed(NamedTuple):
    """One Kafka record as consumed."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class JournalRow(NamedTuple):
    seq: int
    source_topic: str
    source_partition: int
    source_offset: int
    type: str
    ts: int
    payload: bytes  # the record's canonical wire form, the line `backstop replay` reads
    payload_hash: str


@dataclass(frozen=True, slots=True)
class JournalFacts:
    """What the service reads of a batch's journal rows besides storing them: the compiled engine's found in Rust in
    the pass that builds the rows' COPY text (backstop._engine.journal_copy_and_facts: no Python step per row), the
    reference engine's from its rows (of_rows)."""

    rows: int = 0
    first_seq: int = 0
    last_seq: int = 0
    last_ts: int = 0  # the last row's
    types: dict[str, int] = field(default_factory=dict)  # applied records per type

    @classmethod
    def of_rows(cls, rows: list[JournalRow]) -> JournalFacts:
        if not rows:
            return cls()
        return cls(len(rows), rows[0].seq, rows[-1].seq, rows[-1].ts, dict(Counter(row.type for row in rows)))


_RECORD_AT = b'"record":'
_RECORD_END = b',"schema_version":'


def journal_rows_of_lines(lines: bytes) -> list[JournalRow]:
    """The compiled engine's journal lines (journal records' canonical JSON, one a line) as rows."""
    rows = []
    for line in lines.split(b"\n")[:-1] if lines else ():
        row = orjson.loads(line)
        # the payload as stored: the bytes inside the line, whose keys are sorted, so after "payload_hash" (hex)
        # comes "record", then "schema_version" and keys whose values are numbers and topic names
        payload = line[line.index(_RECORD_AT) + len(_RECORD_AT):line.rindex(_RECORD_END)]
        rows.append(JournalRow(row["seq"], row["source_topic"], row["source_partition"], row["source_offset"],
                               row["record"]["type"], row["ts"], payload, row["payload_hash"]))
    return rows


@dataclass(frozen=True, slots=True)
class DeadLetter:
    source_topic: str
    source_partition: int
    source_offset: int
    reason: str
    raw: bytes
    kind: RejectionKind | None  # None: read back from a row written before kinds were recorded
    after_seq: int | None  # the journal seq it was decided after (None: as kind)

    def record(self) -> DeadLetterRecord:
        text, exact, truncated = kept_raw(self.raw, RAW_KEEP_BYTES)
        return DeadLetterRecord(SCHEMA_VERSION, f"dl-{self.source_topic}-{self.source_partition}-{self.source_offset}",
                                self.source_topic, self.source_partition, self.source_offset, self.reason, text,
                                self.kind, self.after_seq, exact, truncated)


def journal_record(row: JournalRow) -> bytes:
    """The canonical JSON of the row's JournalRecord, built without the dataclass (a frozen instance and its dict
    per record cost the service ~5%); the payload is canonical JSON already, so it is spliced in, not encoded
    again. test_ingest checks the bytes against the dataclass's."""
    return canonical_json({
        "schema_version": SCHEMA_VERSION, "id": f"j-{row.seq}", "seq": row.seq, "ts": row.ts,
        "source_topic": row.source_topic,
        "source_partition": row.source_partition, "source_offset": row.source_offset,
        "payload_hash": row.payload_hash, "record": orjson.Fragment(row.payload)})


class OutboxMessage(NamedTuple):
    """A record for an output topic: deterministic id, key, canonical JSON value."""

    topic: str
    key: str
    record_id: str
    payload: bytes


class OutputLine(NamedTuple):
    """An output record as the compiled engine wrote it: its canonical JSON line, and that JSON parsed (decimals
    stay text). Stored and published as it is: no record object is made, nothing is encoded again."""

    fields: dict[str, Any]
    line: bytes


def output_values(record: Any, names: tuple[str, ...]) -> tuple[Any, ...]:
    """The named fields of an output record (a record of backstop.core.records, or an OutputLine)."""
    if isinstance(record, OutputLine):
        return itemgetter(*names)(record.fields) if len(names) > 1 else (record.fields[names[0]],)
    return tuple(getattr(record, name) for name in names)


def output_json(record: Any) -> bytes:
    """The canonical JSON of an output record (a record of backstop.core.records, or an OutputLine)."""
    return record.line if isinstance(record, OutputLine) else canonical_json(record_dict(record))


@dataclass(slots=True)
class BatchResult:
    """What a batch produced. The output records are records of backstop.core.records (the reference engine) or
    OutputLines (the compiled engine): read them with output_values and output_json."""

    # the reference engine's journal rows; the compiled engine's stay its journal lines (journal_lines) unless
    # asked for: read them with journal_rows(), and what the service needs of them with journal_facts()
    journal: list[JournalRow] = field(default_factory=list)
    journal_lines: bytes = b""
    # the compiled engine's, found beside the COPY text below; the reference's from its rows when first asked
    facts: JournalFacts | None = None
    # the journal rows as COPY text, as the compiled engine builds them in Rust (its journal lines' columns), so the
    # commit encodes none; empty: the store encodes `journal` (store.journal_copy_text, the same bytes)
    journal_copy: bytes = b""
    fund_entries: list[FundLedgerEntry | OutputLine] = field(default_factory=list)
    adl_events: list[AdlEvent | OutputLine] = field(default_factory=list)
    findings: list[Finding | OutputLine] = field(default_factory=list)
    postings: list[Posting | OutputLine] = field(default_factory=list)
    # postings as the compiled engine writes them, after `postings`: canonical JSON lines, stored and published as
    # they are (the store's COPY text is built from them in Rust), so no Python object is made per posting
    posting_lines: bytes = b""
    adl_quantiles: list[AdlQuantileRecord | OutputLine] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    held_ids: list[HeldRow] = field(default_factory=list)  # identities the batch's journal rows hold (applied_ids)
    # the quantile records as one outbox row: their canonical JSON lines, each ended by a newline, in order (the
    # relay splits it into the records it publishes: quantile_block_rows), so no row and no Python object is made per
    # quantile record when the batch is written
    quantile_block: bytes = b""
    # each of the block's records' key and then its id, each ended by a newline, stored with the block (migration
    # 0012) so the relay parses none of its lines: the compiled engine's built in Rust; empty: the store builds them
    # from the block (store.block_keys, the same bytes)
    quantile_keys: bytes = b""
    quantile_topic: str = ""  # the topic of the block's records
    outbox: list[OutboxMessage] = field(default_factory=list)  # dead letters, after the block
    # outbox rows as COPY text (topic, key, record id, payload), after `outbox`: the compiled engine builds a batch's
    # in Rust
    outbox_copy: bytes = b""
    duplicates: dict[str, int] = field(default_factory=dict)  # per record type
    next_offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    touched_accounts: set[str] = field(default_factory=set)
    touched_symbols: set[str] = field(default_factory=set)
    touched_positions: set[tuple[str, str]] = field(default_factory=set)  # (account, symbol)
    closed_positions: set[tuple[str, str, str]] = field(default_factory=set)  # (account, symbol, side) closed

    def journal_facts(self) -> JournalFacts:
        if self.facts is None:
            self.facts = JournalFacts.of_rows(self.journal)
        return self.facts

    def journal_rows(self) -> list[JournalRow]:
        """The journal rows, the compiled engine's parsed from its lines when first asked (the in-memory store,
        tests): the service's path stores journal_copy and reads journal_facts()."""
        if self.journal_lines and not self.journal:
            self.journal = journal_rows_of_lines(self.journal_lines)
        return self.journal

    def journal_digest(self, digest: str) -> str:
        """The checkpoints' journal digest after this batch's rows, from `digest` before them (core.anchor)."""
        if self.journal_lines:
            from backstop import _engine  # only the compiled engine writes journal lines

            return _engine.journal_digest(digest, self.journal_lines)
        for row in self.journal:
            digest = journal_step(digest, row.seq, row.source_topic, row.source_partition, row.source_offset,
                                  row.payload_hash)
        return digest


def quantile_key(fields: dict[str, Any]) -> str:
    """A quantile record's Kafka key: a position's quantile is keyed by its account, a symbol's risk level by its
    symbol."""
    key: str = fields["account_id"] if fields["kind"] == "quantile" else fields["symbol"]
    return key


def quantile_block_rows(block: str) -> list[tuple[str, str, str]]:
    """A block of quantile records (canonical JSON lines) as (key, record id, the line) per record, in order."""
    rows = []
    for line in block.split("\n")[:-1]:  # each line ends with a newline (canonical JSON holds none)
        fields = orjson.loads(line)
        rows.append((quantile_key(fields), fields["id"], line))
    return rows


def outbox_messages(result: BatchResult) -> list[OutboxMessage]:
    """Every record a batch publishes through the outbox, in the outbox's order, whichever form it came in (tests,
    the in-memory store): the quantile block's records, then the dead letters."""
    quantiles = [OutboxMessage(result.quantile_topic, key, record_id, line.encode())
                 for key, record_id, line in quantile_block_rows(result.quantile_block.decode())]
    return quantiles + result.outbox + [OutboxMessage(str(topic), str(key), str(record_id), str(payload).encode())
                            for topic, key, record_id, payload in copy_rows(result.outbox_copy)]


def posting_tail(result: BatchResult) -> tuple[int, str | None]:
    """How many postings a batch made and the last one's hash (the chain's new head; None: none made), whichever form
    they came in: only the last line is parsed, and the lines (megabytes a batch) are never copied."""
    lines = result.posting_lines
    if len(lines) > lines.endswith(b"\n"):  # only the compiled engine writes lines, so it is there
        from backstop._engine import line_count  # counts them without the GIL

        last: str = orjson.loads(_last_line(lines))["hash"]
        return len(result.postings) + line_count(lines) + (not lines.endswith(b"\n")), last  # a last line without "\n"
    if result.postings:
        return len(result.postings), output_values(result.postings[-1], ("hash",))[0]
    return 0, None


class PostingBlock(NamedTuple):
    """A batch's postings as stored (posting_blocks, migration 0017): their lines in chain order, each ended by a
    newline, how many, and the journal seqs of the first and the last."""

    lines: bytes
    postings: int
    first_seq: int
    last_seq: int


def posting_block(result: BatchResult) -> PostingBlock | None:
    """The batch's postings as one block (None: it made none), whichever form they came in: the compiled engine's
    lines as they are (only the first and the last parsed), the reference engine's records as their lines."""
    count = posting_tail(result)[0]
    if not count:
        return None
    lines = result.posting_lines
    if lines and not lines.endswith(b"\n"):
        lines += b"\n"
    if result.postings:
        lines = b"".join(output_json(p) + b"\n" for p in result.postings) + lines
    first = orjson.loads(lines[:lines.index(b"\n")])
    return PostingBlock(lines, count, first["seq"], orjson.loads(_last_line(lines))["seq"])


def _last_line(lines: bytes) -> bytes:
    """The last line of lines that end with a newline or not (without copying the rest)."""
    end = len(lines) - 1 if lines.endswith(b"\n") else len(lines)
    return lines[lines.rfind(b"\n", 0, end) + 1:end]


def last_posting_hash(lines: str) -> str:
    """The hash of a block's last posting (the chain's head after it)."""
    end = len(lines) - 1 if lines.endswith("\n") else len(lines)
    hash_: str = orjson.loads(lines[lines.rfind("\n", 0, end) + 1:end])["hash"]
    return hash_


def posting_records(result: BatchResult) -> list[Posting | OutputLine]:
    """Every posting of a batch as a record, whichever form it came in (tests, the in-memory store)."""
    return result.postings + [OutputLine(orjson.loads(line), line) for line in result.posting_lines.splitlines()]


def decode_consumed(message: Consumed, record_type: str) -> tuple[Event, bytes, dict[str, Any]]:
    """Decode a Kafka value: the topic names the type; a `type` field, if present, must agree.

    Returns the record as the core's event (backstop.wire.translate), its canonical JSON (with its type: the journal
    payload, a line `backstop replay` reads) and that JSON as a dict. orjson parses it (strict JSON; a key repeated in
    an object is refused) and writes it again with sorted keys, which the models then validate: the compiled engine
    does the same in one pass."""
    value = message.value
    if value is None:
        raise InvalidRecord("empty record (tombstone)")
    if len(value) > MAX_RECORD_BYTES:
        raise InvalidRecord(f"record of {len(value)} bytes exceeds the limit of {MAX_RECORD_BYTES}")
    try:
        document = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise InvalidRecord("invalid JSON") from None
    refuse_repeated_key(value, document)
    if not isinstance(document, dict):
        raise InvalidRecord("Input should be an object")
    declared = document.setdefault("type", record_type)
    if declared != record_type or not isinstance(declared, str):
        raise InvalidRecord(f'type: {shown(declared)} is not "{record_type}", the type of the topic {message.topic}')
    try:
        payload = canonical_json(document)
    except orjson.JSONEncodeError:  # nested deeper than orjson writes, which is deeper than the models read
        raise InvalidRecord("invalid JSON") from None
    return to_event(validate(payload)), payload, document


Where = tuple[str, int, int]  # (topic, partition, offset) of a consumed record


class PoisonRecord(Exception):
    """The engine raised on a record (the reference) or panicked while applying it (the compiled engine:
    backstop.pipeline.service_engine), neither rejecting it nor breaking a rule it checks: a bug, which may have left
    half the event applied. The batch is lost; the service rebuilds the engine from PostgreSQL and applies the
    batch again with this record dead-lettered (`quarantine`) instead of crashing on it forever."""

    def __init__(self, where: Where, reason: str) -> None:
        super().__init__(f"{where[0]}[{where[1]}]@{where[2]}: {reason}")
        self.where, self.reason = where, reason


def ingest_batch(processor: Processor, batch: list[Consumed], topics: TopicNames,
                 quarantine: dict[Where, str] | None = None) -> BatchResult:
    """`quarantine`: records the engine raised on before (PoisonRecord), dead-lettered without being applied."""
    with processor.engine.decimal_context():
        return _ingest(processor, batch, topics, quarantine or {})


def _ingest(processor: Processor, batch: list[Consumed], topics: TopicNames, quarantine: dict[Where, str]
            ) -> BatchResult:
    result = BatchResult()
    quantile_lines: list[bytes] = []
    for message in batch:
        result.next_offsets[(message.topic, message.partition)] = message.offset + 1
        record_type = topics.type_of(message.topic)
        if record_type is None:
            _dead(result, message, f"not an input topic: {message.topic}", topics, "invalid", processor)
            continue
        try:
            record, payload, _ = decode_consumed(message, record_type)
        except InvalidRecord as error:
            processor.reject_unparsed()
            _dead(result, message, str(error), topics, "invalid", processor)
            continue
        where = (message.topic, message.partition, message.offset)
        poison = quarantine.get(where)
        if poison is not None:
            processor.reject_unparsed()
            _dead(result, message, poison, topics, "engine_error", processor)
            continue
        try:
            outcome = processor.process(record)
        except (InvariantViolation, MemoryError):
            raise
        except Exception as error:  # the engine's bug, not the input's fault: see PoisonRecord
            raise PoisonRecord(where, f"engine error: {type(error).__name__}: {error}") from error
        if isinstance(outcome, Duplicate):
            result.duplicates[record_type] = result.duplicates.get(record_type, 0) + 1
            continue
        if not isinstance(outcome, Applied):
            _dead(result, message, outcome.reason, topics, outcome.kind, processor)
            continue
        row = JournalRow(outcome.seq, message.topic, message.partition, message.offset, record_type, record.ts,
                         payload, hashlib.sha256(payload).hexdigest())
        result.journal.append(row)  # published from the journal table (the relay), as are the effects below
        _touch(result, record)
        effects = outcome.effects
        for entry in effects.fund_entries:
            result.fund_entries.append(entry)
        for event in effects.adl_events:
            result.adl_events.append(event)
            result.touched_accounts.add(event.account_id)
            result.touched_positions.add((event.account_id, event.symbol))
        result.findings.extend(effects.findings)
        for posting in effects.postings:
            result.postings.append(posting)
        result.closed_positions.update(effects.closed_positions)
        for change in effects.adl_quantiles:
            result.adl_quantiles.append(change)
            quantile_lines.append(canonical_json(record_dict(change)))
    if quantile_lines:
        result.quantile_block, result.quantile_topic = b"\n".join(quantile_lines) + b"\n", topics.adl_quantiles
    ids = processor.engine.dedupe.ids
    if isinstance(ids, ServiceIds):
        result.held_ids = ids.drain()
    return result


# ---------------------------------------------------------------- identities: looked up before a batch is applied
def batch_identities(batch: Iterable[Consumed], topics: TopicNames) -> list[bytes]:
    """The key digests of the identities the batch's records carry, read from their JSON without decoding them
    (a record that does not decode has none that matters: it is dead-lettered)."""
    keys = []
    for message in batch:
        kind = topics.type_of(message.topic)
        if kind is None or kind not in _IDENTIFIED or not message.value:
            continue
        try:
            fields = orjson.loads(message.value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(fields, dict):
            found = identity_of_fields(kind, fields)
            if found is not None:
                keys.append(key_digest(found))
    return keys


_IDENTIFIED = frozenset({"fill", "transfer", "liquidation", "funding"})
HeldLookup = Callable[[list[bytes]], Awaitable[list[HeldRow]]]  # key digests -> the applied_ids rows among them


async def resolve_identities(processor: Processor, keys: Iterable[bytes], lookup: HeldLookup, *,
                             committed_seq: int | None = None) -> None:
    """Look up, in one query, the identities of the next batch that the service's memory cannot decide; a no-op for
    an engine that holds its identities in memory. `committed_seq`: the journal is committed up to there."""
    ids = processor.engine.dedupe.ids
    if isinstance(ids, ServiceIds):
        await _resolve(ids, keys, lookup, committed_seq)


async def _resolve(ids: ServiceIds, keys: Iterable[bytes], lookup: HeldLookup, committed_seq: int | None) -> None:
    if committed_seq is not None:
        ids.committed(committed_seq)
    asked = ids.unresolved(keys)
    ids.resolve(asked, await lookup(asked) if asked else [])


REPLAY_CHUNK = 2000  # journal rows re-applied per identity lookup


async def replay_journal(processor: Processor, rows: AsyncIterator[tuple[int, bytes]], lookup: HeldLookup) -> None:
    """Re-apply stored journal rows (seq, payload) after the engine's seq, a chunk per lookup; each must apply as
    its own seq (the identities PostgreSQL holds by that very seq are not held before it)."""
    chunk: list[tuple[int, Event]] = []
    async for seq, payload in rows:
        chunk.append((seq, decode_record(payload)))
        if len(chunk) >= REPLAY_CHUNK:
            await _replay_chunk(processor, chunk, lookup)
            chunk = []
    await _replay_chunk(processor, chunk, lookup)


async def _replay_chunk(processor: Processor, chunk: list[tuple[int, Event]], lookup: HeldLookup) -> None:
    keys = [key_digest(found) for _, record in chunk if (found := identity(record)) is not None]
    await resolve_identities(processor, keys, lookup)
    with processor.engine.decimal_context():
        for seq, record in chunk:
            processor.process(record)
            if processor.engine.last_seq != seq:
                raise InvariantViolation(f"journal row {seq} did not re-apply as seq {seq}")


# Per record type: does it name an account, a symbol?
_NAMES = {kind: ("account_id" in event.__dataclass_fields__, "symbol" in event.__dataclass_fields__)
          for kind, event in EVENT_TYPES.items()}


def _touch(result: BatchResult, record: Event) -> None:
    has_account, has_symbol = _NAMES[record.type]
    account = record.account_id if has_account else None  # type: ignore[union-attr]
    if account is not None:
        result.touched_accounts.add(account)
    symbol = record.symbol if has_symbol else None  # type: ignore[union-attr]
    if symbol is not None:
        result.touched_symbols.add(symbol)
        if account is not None:
            result.touched_positions.add((account, symbol))


def _dead(result: BatchResult, message: Consumed, reason: str, topics: TopicNames, kind: RejectionKind,
          processor: Processor) -> None:
    letter = DeadLetter(message.topic, message.partition, message.offset, one_line(reason),
                        message.value or b"", kind, processor.engine.last_seq)
    result.dead_letters.append(letter)
    record = letter.record()
    result.outbox.append(OutboxMessage(topics.dead_letter, f"{message.topic}:{message.partition}", record.id,
                                       canonical_json(record_dict(record))))

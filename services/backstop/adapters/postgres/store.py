"""PostgreSQL store of the service: everything one batch produces, written in ONE transaction.

The writer holds a session advisory lock (one ledger processor per database); every batch also checks that the
journal head it extends is the one it read (fencing), so a stale writer can never interleave. With an anchor key,
every batch that appends to the journal also writes a signed checkpoint of the history (backstop.core.anchor).
The relay reads what it publishes from the tables the batches wrote, each after a cursor of its own (unpublished).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import islice, repeat
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import asyncpg
import numpy as np
import orjson

from backstop import faults
from backstop.core.anchor import JOURNAL_GENESIS, Anchor, Checkpoint, SignedCheckpoint, journal_step
from backstop.core.dedupe import HeldRow
from backstop.core.errors import InvariantViolation
from backstop.core.hashing import GENESIS_HASH
from backstop.core.records import SCHEMA_VERSION
from backstop.core.snapshot import SNAPSHOT_VERSION
from backstop.pipeline.ingest import (
    BatchResult,
    JournalRow,
    last_posting_hash,
    output_json,
    output_values,
    posting_block,
    posting_tail,
    quantile_block_rows,
    quantile_key,
)
from backstop.pipeline.projections import FullRefresh, Projections, Rows, rows_of
from backstop.pipeline.topics import TopicNames, input_key, input_key_field

if TYPE_CHECKING:  # the ports name this module's types
    from backstop.service.ports import RelayRead

WRITER_LOCK = 0x62616B77726974  # one ledger processor per database
RELAY_LOCK = 0x62616B72656C61  # one outbox relay per database


class LockLost(Exception):
    """The session that held this instance's lock ended (killed, or its connection lost): another instance may hold
    the lock now, and this one must not act as its holder."""


class HeadMoved(InvariantViolation):
    """The journal's head is not the one this writer applied its batch after: another writer committed since. With
    the writer's lock checked before each commit, that is a handover: the instance whose session ended had a batch
    past its check when the lock passed, and whichever of the two commits second meets the other's head. Its batch
    is not written, and the supervisor rebuilds its engine from the store rather than stop it."""


class Lease(Protocol):
    """A lock held: `check` raises LockLost unless it still is (the relay asks before each publish)."""

    async def check(self) -> None: ...


LEASE_CHECK_S = 5.0  # a lock's session that does not answer within this is taken as lost
LOCK_POLL_S = 0.2  # a standby asks for the lock this often


@dataclass(frozen=True, slots=True)
class _SessionLease:
    connection: Any  # the pool's connection that took the lock
    lock_id: int

    async def check(self) -> None:
        """A session advisory lock lives exactly as long as its session: one round trip on that connection."""
        try:
            async with asyncio.timeout(LEASE_CHECK_S):
                await self.connection.fetchval("SELECT 1")
        except Exception as error:  # whatever fails it (a killed session can leave the protocol in a state asyncpg
            # calls internal), the lock cannot be taken as held
            raise LockLost(f"the session holding lock {self.lock_id} ended ({type(error).__name__}: "
                           f"{str(error).splitlines()[0] if str(error) else 'no answer'})") from None


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    head_hash: str
    ledger_head: str
    adl_head: str
    duplicates: int
    rejected: int
    ledger_position: int
    adl_position: int


OUTBOX = "outbox"  # the relay's source of what has no table of its own (ADL quantile records, dead letters)
TABLE_SOURCES = ("journal", "fund_ledger", "adl_events", "postings")  # published from their own tables


class OutboxRow(NamedTuple):  # one per published record: a NamedTuple is built 3x faster than a frozen dataclass
    id: int  # its place in its source: the outbox id, the journal seq, or the position in its table
    topic: str
    key: str
    record_id: str
    payload: str
    source: str = OUTBOX  # the table it is read from (OUTBOX or one of TABLE_SOURCES)


# The relay's next rows: at most $1 of every source after its cursor, in one statement (one round trip, one
# snapshot), sorted by source (in RELAY_SOURCES order) and then by id. Each row: its source's rank, its id, and
# either the outbox's topic, key, record id and payload, a table's key, record id and stored record, or the journal
# row's columns, of which the relay builds the journal record (journal_relay_row). The tables wait while outbox rows
# written before they became sources (migration 0008, legacy_up_to) do.
RELAY_SOURCES = (OUTBOX, *TABLE_SOURCES)
_TABLES_READY = "(SELECT published_up_to >= legacy_up_to FROM relay_cursor)"


def _after_cursor(source: str) -> str:
    return f"(SELECT published_up_to FROM relay_sources WHERE source = '{source}')"


def unpublished_sql(limit: str) -> str:
    """The relay's next rows (UNPUBLISHED_SQL), at most `limit` of every source: "$1" for a prepared statement,
    digits for a COPY (which takes no parameter). The outbox's rows are those whose records before them (a block
    counts its records: migration 0011) number fewer than the limit, read by their narrow columns first, so a
    block's payload is read only if its row is taken; each carries its record count, the outbox cursor (a block's
    records up to the cursor are in Kafka) and a block's keys. The postings' blocks (migration 0017) are taken the
    same way, each with its count and the postings' cursor; their lines name their keys and ids."""
    after = _after_cursor
    return (
        "SELECT * FROM ("
        "(SELECT 0 AS rank, o.id, o.topic, o.key, o.record_id, o.payload, NULL::text AS source_topic, NULL::int AS "
        "source_partition, NULL::bigint AS source_offset, NULL::bigint AS ts, NULL::text AS payload_hash, "
        "o.records, c.published_up_to AS after, o.keys FROM relay_cursor c, (SELECT id, sum(coalesce(records, 1)) "
        "OVER (ORDER BY id) - coalesce(records, 1) AS before FROM (SELECT id, records FROM outbox WHERE id > (SELECT "
        f"published_up_to FROM relay_cursor) ORDER BY id LIMIT {limit}) AS n) AS w JOIN outbox o USING (id) "
        f"WHERE w.before < {limit}) "
        "UNION ALL (SELECT 1, seq, type, NULL, NULL, payload, source_topic, source_partition, source_offset, ts, "
        f"payload_hash, NULL, NULL, NULL FROM journal WHERE {_TABLES_READY} AND seq > {after('journal')} "
        f"ORDER BY seq LIMIT {limit}) "
        "UNION ALL (SELECT 2, position, NULL, fund_id, id, record, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL "
        f"FROM fund_ledger WHERE {_TABLES_READY} AND position > {after('fund_ledger')} ORDER BY position "
        f"LIMIT {limit}) "
        "UNION ALL (SELECT 3, position, NULL, account_id, id, record, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL "
        f"FROM adl_events WHERE {_TABLES_READY} AND position > {after('adl_events')} ORDER BY position "
        f"LIMIT {limit}) "
        "UNION ALL (SELECT 4, b.last_position, NULL, NULL, NULL, b.records, NULL, NULL, NULL, NULL, NULL, b.postings, "
        f"{after('postings')}, NULL FROM (SELECT last_position, sum(postings) OVER (ORDER BY last_position) - postings "
        "AS before FROM (SELECT last_position, postings FROM posting_blocks WHERE "
        f"{_TABLES_READY} AND last_position > {after('postings')} ORDER BY last_position LIMIT {limit}) AS n) AS w "
        f"JOIN posting_blocks b USING (last_position) WHERE w.before < {limit})"
        ") AS next ORDER BY rank, id")


UNPUBLISHED_SQL = unpublished_sql("$1")

# $1 ids of the outbox's sequence taken in one expression (one writer holds the lock): the last of them.
_TAKE_OUTBOX_IDS = ("setval(pg_get_serial_sequence('outbox', 'id'), "
                    "nextval(pg_get_serial_sequence('outbox', 'id')) + $1 - 1)")
# A batch's quantile block: its $1 records take $1 ids, the last of them the row's id; $4 their keys and ids
# (migration 0012).
QUANTILE_BLOCK_SQL = (f"INSERT INTO outbox (id, records, topic, payload, keys) VALUES ({_TAKE_OUTBOX_IDS}, $1, $2, $3, "
                      f"$4) RETURNING id")
# The ids of $1 outbox rows, taken before their COPY, which names them.
RESERVE_OUTBOX_IDS_SQL = f"SELECT {_TAKE_OUTBOX_IDS}"


# The outbox ids of one-record rows among $1 record ids, after id $2 and up to $3 (record_id is unique).
OUTBOX_RECORD_PLACES_SQL = ("SELECT record_id, id, topic FROM outbox WHERE record_id = ANY($1::text[]) AND id > $2 "
                            "AND id <= $3")
# The blocks of topics $4 after id $2 and up to $3 whose keys (or, written before migration 0012, lines) hold one
# of $1 record ids as text: block_rows finds which of their records, if any, has it. Looked for in windows of ids
# from the newest.
OUTBOX_BLOCK_PLACES_SQL = ("SELECT id, records, topic, payload, keys FROM outbox o WHERE id > $2 AND id <= $3 AND "
                           "records IS NOT NULL AND topic = ANY($4::text[]) AND EXISTS (SELECT FROM "
                           "unnest($1::text[]) AS r(id) WHERE strpos(coalesce(o.keys, o.payload), r.id) > 0) "
                           "ORDER BY id DESC")
# The outbox row that holds id $1: a one-record row at it, or the block whose ids run up to its own.
OUTBOX_ROW_AT_SQL = "SELECT id, records, topic, payload, keys, record_id FROM outbox WHERE id >= $1 ORDER BY id LIMIT 1"
OUTBOX_PLACES_WINDOW = 1 << 20  # ids: a block takes one per record


def block_rows(last_id: int, records: int, topic: str, block: str, after: int, keys: str | None) -> list[OutboxRow]:
    """A block's records as the relay publishes them: ids `last_id - records + 1` to `last_id`, less those up to
    `after` (the cursor: in Kafka already), each with the key and id stored beside its line (`keys`: migration 0012),
    so no line is parsed; a block written before 0012 (no keys) has each line parsed for them (quantile_key). This
    runs once per quantile record the service publishes."""
    lines = block.split("\n")
    if lines.pop() or len(lines) != records:
        raise InvariantViolation(f"outbox block {last_id} holds {len(lines)} records, its row says {records}")
    first = last_id - records + 1
    skip = max(after - first + 1, 0)
    if keys is None:
        return [tuple.__new__(OutboxRow, (place, topic, quantile_key(fields := orjson.loads(line)), fields["id"],
                                          line, OUTBOX))
                for place, line in enumerate(lines[skip:] if skip else lines, first + skip)]
    named = keys.split("\n")
    if named.pop() or len(named) != 2 * records:
        raise InvariantViolation(f"outbox block {last_id} names {len(named) // 2} keys for its {records} records")
    return list(map(tuple.__new__, repeat(OutboxRow), zip(
        range(first + skip, last_id + 1), repeat(topic), islice(named, 2 * skip, None, 2),
        islice(named, 2 * skip + 1, None, 2), islice(lines, skip, None), repeat(OUTBOX))))


def posting_block_rows(last_position: int, records: int, topic: str, block: str, after: int) -> list[OutboxRow]:
    """A posting block's records as the relay publishes them (migration 0017): positions `last_position - records +
    1` to `last_position`, less those up to `after` (the postings' cursor), each keyed by its asset and named by its
    id, read from its line (the compiled relay's: backstop._engine.RelayRows)."""
    lines = block.split("\n")
    if lines.pop() or len(lines) != records:
        raise InvariantViolation(f"posting block {last_position} holds {len(lines)} postings, its row says {records}")
    first = last_position - records + 1
    skip = max(after - first + 1, 0)
    return [tuple.__new__(OutboxRow, (place, topic, (fields := orjson.loads(line))["asset"], fields["id"], line,
                                      "postings"))
            for place, line in enumerate(lines[skip:], first + skip)]


def block_keys(block: bytes) -> bytes:
    """A quantile block's keys and record ids as stored with it (migration 0012): each record's key, then its id,
    each ended by a newline. The compiled engine's are built in Rust (backstop._engine.quantile_keys), the same bytes
    (tests/differential/test_service_engines.py)."""
    return "".join(f"{key}\n{record_id}\n" for key, record_id, _ in quantile_block_rows(block.decode())).encode()


# Rows not yet published, over every source, from each source's last id and its cursor (index lookups, not a
# count): the journal's seqs and the tables' positions have no gaps; an outbox id a rolled-back batch took is counted
# too, so the outbox's part is an upper bound, exact at zero.
RELAY_BACKLOG_SQL = (
    "SELECT (SELECT greatest(coalesce(max(id), 0) - (SELECT published_up_to FROM relay_cursor), 0) FROM outbox) + "
    "(SELECT coalesce(sum(greatest(last - published_up_to, 0)), 0)::bigint FROM relay_sources JOIN (VALUES "
    "('journal', (SELECT coalesce(max(seq), 0) FROM journal)), "
    "('fund_ledger', (SELECT coalesce(max(position), 0) FROM fund_ledger)), "
    "('adl_events', (SELECT coalesce(max(position), 0) FROM adl_events)), "
    "('postings', (SELECT coalesce(max(last_position), 0) FROM posting_blocks))) AS t(source, last) USING (source))")


def refuse_journal_gap(after: int, seqs: list[int]) -> None:
    """The journal's rows read after seq `after`, in seq order, follow it without a gap (a row its owner deleted);
    InvariantViolation names the first seq missing."""
    if seqs and seqs[-1] - after != len(seqs):  # seqs are unique and sorted: then one is missing
        missing = next(after + n for n, seq in enumerate(seqs, 1) if seq != after + n)
        raise InvariantViolation(f"the stored journal has a gap: seq {missing} is missing")


def journal_relay_row(row: JournalRow) -> tuple[str, str, str]:
    """A journal row as the relay publishes it: (key, record id, the journal record's canonical JSON)."""
    return journal_record_text(row.seq, row.source_topic, row.source_partition, row.source_offset, row.type, row.ts,
                               row.payload.decode(), row.payload_hash)


# The key field of each input type (input_key_field) as it opens its value in a record's canonical JSON.
_KEY_OPENS = {record_type: f'"{input_key_field(record_type)}":"' for record_type in (
    "fund", "instrument", "transfer", "fill", "mark", "funding", "liquidation")}


def journal_key(record_type: str, payload: str) -> str:
    """The journal record's Kafka key (input_key) read from its payload without parsing it: a stored payload is the
    canonical JSON of a validated input record, whose key field is an identifier or a symbol (no quote, no escape)
    and no nested value has a field of that name, so the field opens once and its value ends at the next quote.
    Anything else (a name found twice, or not at all) is parsed."""
    opens = _KEY_OPENS.get(record_type)
    if opens is not None:
        at = payload.find(opens)
        if at >= 0 and payload.find(opens, at + 1) < 0:
            start = at + len(opens)
            return payload[start:payload.index('"', start)]
    return input_key(record_type, orjson.loads(payload))


def journal_record_text(seq: int, source_topic: str, source_partition: int, source_offset: int, record_type: str,
                        ts: int, payload: str, payload_hash: str) -> tuple[str, str, str]:
    """A journal row's columns as the relay publishes them: (key, record id, the journal record's canonical JSON).
    The JSON is journal_record's, written out in its sorted key order (the payload is canonical JSON already; the hash
    is hex; the topic is encoded as JSON); test_ingest and the relay tests hold it to journal_record's bytes, and
    test_store_text the key to input_key."""
    return journal_key(record_type, payload), f"j-{seq}", (
        f'{{"id":"j-{seq}","payload_hash":"{payload_hash}","record":{payload},'
        f'"schema_version":{SCHEMA_VERSION},"seq":{seq},"source_offset":{source_offset},'
        f'"source_partition":{source_partition},"source_topic":{orjson.dumps(source_topic).decode()},'
        f'"ts":{ts}}}')


WALLET_COLUMNS = ["account_id", "asset", "wallet", "seq"]
POSITION_COLUMNS = ["account_id", "symbol", "position_side", "qty", "entry_price", "margin_mode", "leverage",
                    "isolated_margin", "mark_price", "liquidation_price", "bankruptcy_price", "seq"]
FUND_COLUMNS = ["fund_id", "settle_asset", "surplus", "max_inventory_ratio", "balance", "bad_debt",
                "inventory_notional", "seq"]
KEY_COLUMNS = {"account_wallets": 2, "positions": 3}  # each projection's key: its first columns
ADL_QUEUE_COLUMNS = ["symbol", "side", "account_id", "rank", "score", "quantile", "seq"]
FUND_LEDGER_COLUMNS = ("id", "seq", "ts", "fund_id", "kind", "amount", "balance_after", "liquidation_id",
                       "counter_account", "prev_hash", "hash")
ADL_EVENT_COLUMNS = ("id", "seq", "ts", "symbol", "liquidation_id", "fund_id", "account_id", "side", "qty", "price",
                     "rank", "score", "quantile", "prev_hash", "hash")
# A batch's postings, one row (migration 0017): the last one's position, their count, the journal seqs of the first
# and the last, their lines. Readers read the view `postings`, a row per posting.
POSTING_BLOCK_SQL = ("INSERT INTO posting_blocks (last_position, postings, first_seq, last_seq, records) "
                     "VALUES ($1, $2, $3, $4, $5)")
OUTBOX_COLUMNS = ["topic", "key", "record_id", "payload"]
FINDING_COLUMNS = ("id", "seq", "ts", "kind", "account_id", "liquidation_id", "symbol", "details")

# COPY's text format: a tab between columns, \N for NULL, and these escaped inside a value.
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_text(rows: Iterable[tuple[Any, ...]]) -> bytes:
    """Rows of str, int, Decimal and None as COPY text (a Decimal's str is a valid numeric, exponent and all)."""
    return "".join("\t".join("\\N" if value is None else str(value).translate(_COPY_ESCAPES) for value in row) + "\n"
                   for row in rows).encode()


JOURNAL_COLUMNS = ["seq", "source_topic", "source_partition", "source_offset", "type", "ts", "payload", "payload_hash"]


def journal_copy_text(rows: Iterable[JournalRow]) -> bytes:
    """Journal rows as COPY text of JOURNAL_COLUMNS: the reference engine's; the compiled engine's are built in Rust
    from its journal lines (backstop._engine.journal_copy), and tests/differential/test_service_engines.py holds the
    two byte-identical."""
    return copy_text((r.seq, r.source_topic, r.source_partition, r.source_offset, r.type, r.ts, r.payload.decode(),
                      r.payload_hash) for r in rows)


_COPY_HEADER = 19  # "PGCOPY\n\xff\r\n\0", 4 bytes of flags, 4 of the header extension's length
_COPY_ROW = 22
_COPY_ROW_PREFIX = b"\x00\x01\x00\x00\x00\x10"  # one field, 16 bytes long


class _BinaryDigests:
    """The output of COPY (SELECT <a bytea of 16-byte digests>) TO STDOUT (FORMAT binary), parsed as it streams."""

    def __init__(self, sink: Callable[[bytes], None]) -> None:
        self.sink = sink
        self.buffer = b""
        self.in_header = True

    async def __call__(self, chunk: bytes) -> None:
        data = self.buffer + chunk
        if self.in_header:
            extension = int.from_bytes(data[15:19], "big") if len(data) >= _COPY_HEADER else None
            if extension is None or len(data) < _COPY_HEADER + extension:
                self.buffer = data
                return
            data, self.in_header = data[_COPY_HEADER + extension:], False
        whole = len(data) // _COPY_ROW * _COPY_ROW
        rows = np.frombuffer(data, dtype=np.uint8, count=whole).reshape(-1, _COPY_ROW)
        if len(rows):
            if rows[:, :6].tobytes() != _COPY_ROW_PREFIX * len(rows):
                raise InvariantViolation("applied_ids: a row that is not one 16-byte digest")
            self.sink(rows[:, 6:].tobytes())
        self.buffer = data[whole:]

    def finish(self) -> None:
        if self.buffer != b"\xff\xff":  # the trailer: a field count of -1
            raise InvariantViolation("applied_ids: COPY ended in the middle of a row")


HOLD_CHUNK_ROWS = 50_000  # identities per statement when a rebuild holds them again
REFRESH_CHUNK_ROWS = 5000  # rows per transaction of a full refresh: a batch waits on its locks that long at most


class RefreshCopy(NamedTuple):
    """A FullRefresh as COPY text, wallets and positions in chunks of one transaction each: what the forked child
    sends back, so that the parent only passes bytes on to the server and never builds or splits a row."""

    seq: int
    wallets: list[bytes]
    positions: list[bytes]
    adl_queue: bytes

    @classmethod
    def of(cls, refresh: FullRefresh, chunk_rows: int = REFRESH_CHUNK_ROWS) -> RefreshCopy:
        def chunks(rows: list[tuple[Any, ...]]) -> list[bytes]:
            return [copy_text(rows[start:start + chunk_rows]) for start in range(0, len(rows), chunk_rows)]

        return cls(refresh.seq, chunks(refresh.wallets), chunks(refresh.positions), copy_text(refresh.adl_queue))


class StaleRow(NamedTuple):
    """A position row a full refresh removed: absent at the refresh's seq, and written last at `seq`, before it."""

    account_id: str
    symbol: str
    position_side: str
    seq: int


async def _copy(connection: asyncpg.Connection, table: str, columns: list[str], rows: Rows) -> None:
    """Rows into a table by COPY: tuples, or COPY text as the compiled engine writes it."""
    if not rows:
        return
    if isinstance(rows, bytes):
        await connection.copy_to_table(table, source=io.BytesIO(rows), columns=columns, format="text")
    else:
        await connection.copy_records_to_table(table, records=rows, columns=columns)


Upsert = tuple[str, list[str], int, Rows]  # a table, its columns, how many of them are its key, the rows


# A batch caught up writes a few rows per table, where a COPY's two round trips (and a temporary table's creation)
# cost more than the rows: up to this many a table, the COPY text goes as a parameter of one statement. The server
# reads ~14 µs a row that way against ~4 by COPY, so larger batches keep COPY.
INLINE_ROWS = 32


_NULL_VALUE = re.compile(rb"(?<![^\t\n])\\N(?![^\t\n])")  # \N as a whole value: COPY text's NULL


def _inline_text(rows: Rows) -> str | None:
    """COPY text of at most INLINE_ROWS rows, each ending in a newline and none empty, that escapes nothing but
    NULL (every backslash in a whole value \\N), so that splitting it at newlines and tabs gives each value's text
    exactly."""
    if not isinstance(rows, bytes) or not rows.endswith(b"\n") or rows.count(b"\n") > INLINE_ROWS \
            or rows.startswith(b"\n") or b"\n\n" in rows \
            or rows.count(b"\\") != len(_NULL_VALUE.findall(rows)):
        return None
    return rows.decode()


@functools.cache
def _inline_insert(table: str, columns: tuple[str, ...], parameter: int, key_columns: int = 0) -> str:
    """One table's INSERT from COPY text in a parameter (`_inline_text`), ON CONFLICT of its key (its first
    `key_columns` columns) an update, if it has one: each line's values, by column name, read by the table's own row
    type (json_populate_record: each value's text through its column type's input, as COPY reads it)."""
    names = ", ".join(columns)
    keys = "ARRAY[" + ", ".join(f"'{c}'" for c in columns) + "]"
    sql = (f"INSERT INTO {table} ({names}) SELECT {', '.join(f'r.{c}' for c in columns)} "
           f"FROM unnest(string_to_array(left(${parameter}, -1), E'\\n')) AS line, "
           f"json_populate_record(NULL::{table}, json_object({keys}, "
           f"array_replace(string_to_array(line, E'\\t'), E'\\\\N', NULL))) AS r")
    if key_columns:
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns[key_columns:])
        sql += f" ON CONFLICT ({', '.join(columns[:key_columns])}) DO UPDATE SET {updates}"
    return sql


def _held_text(held: list[HeldRow]) -> str:
    return "".join(f"{key.hex()}\t{content.hex()}\t{seq}\n" for key, content, seq in held)


Inline = tuple[str, list[str], int, str]  # an upsert's table, columns and key width, its rows as COPY text


async def _upsert(connection: asyncpg.Connection, upserts: list[Upsert], before: Callable[[], Awaitable[None]]
                  ) -> list[Inline]:
    """Insert or update many rows of several tables: each table's rows by COPY into a temporary table of its own,
    then `before` (what must precede the writes), then one INSERT ... ON CONFLICT per table (its key: the first
    `key_columns` columns), all of them in one round trip, as are the temporary tables' creation. When every table's
    rows are few COPY text lines (`_inline_text`), only `before`: the rows are returned, for the transaction's last
    statement to write (`_with_inline`). Table and column names are this module's constants, never input."""
    upserts = [upsert for upsert in upserts if upsert[3]]
    texts = [_inline_text(rows) for _, _, _, rows in upserts]
    if upserts and all(text is not None for text in texts):
        await before()
        return [(table, columns, key_columns, text) for (table, columns, key_columns, _), text
                in zip(upserts, texts, strict=True) if text is not None]
    if upserts:
        await connection.execute("; ".join(f"CREATE TEMP TABLE IF NOT EXISTS staging_{table} (LIKE {table}) "
                                           f"ON COMMIT DELETE ROWS" for table, _, _, _ in upserts))
    for table, columns, _, rows in upserts:
        await _copy(connection, f"staging_{table}", columns, rows)
    await before()
    statements = []
    for table, columns, key_columns, _ in upserts:
        names = ", ".join(columns)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns[key_columns:])
        statements.append(f"INSERT INTO {table} ({names}) SELECT {names} FROM staging_{table} "
                          f"ON CONFLICT ({', '.join(columns[:key_columns])}) DO UPDATE SET {updates}")
    if statements:
        await connection.execute("; ".join(statements))
    return []


def _with_inline(sql: str, inline: list[Inline], first: int) -> str:
    """A statement that begins WITH, writing the inline upserts first in CTEs of their own, their COPY texts in
    parameters `first` on."""
    if not inline:
        return sql
    upserts = ", ".join(f"upsert_{table} AS ({_inline_insert(table, tuple(columns), first + n, key_columns)})"
                        for n, (table, columns, key_columns, _) in enumerate(inline))
    return sql.replace("WITH ", f"WITH {upserts}, ", 1)


INLINE_JOURNAL_SQL = _inline_insert("journal", tuple(JOURNAL_COLUMNS), 1)


def _inline_held_sql(parameter: int) -> str:
    """Held identities from a text parameter: a line each, the two digests in hex and the seq."""
    return ("INSERT INTO applied_ids (id_digest, content_digest, seq) "
            "SELECT decode(k[1], 'hex'), decode(k[2], 'hex'), k[3]::bigint "
            f"FROM unnest(string_to_array(left(${parameter}, -1), E'\\n')) AS line, "
            "string_to_array(line, E'\\t') AS k")


INLINE_HELD_SQL = _inline_held_sql(1)
# a small batch's journal rows and the identities they hold: one statement (the check that each identity's seq is in
# the journal runs at its end, when the journal's rows are in)
INLINE_JOURNAL_AND_HELD_SQL = f"WITH journal_rows AS ({INLINE_JOURNAL_SQL}) {_inline_held_sql(2)}"
# A batch's consumed offsets and its journal head: one statement (two tables, so no row is written twice).
HEAD_AND_OFFSETS_SQL = (
    "WITH offsets AS (INSERT INTO consumed_offsets (topic, partition, next_offset) "
    "SELECT * FROM unnest($7::text[], $8::int[], $9::bigint[]) "
    "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset) "
    "INSERT INTO engine_head (singleton, seq, head_hash, ledger_head, adl_head, duplicates, rejected) "
    "VALUES (true, $1, $2, $3, $4, $5, $6) ON CONFLICT (singleton) DO UPDATE SET seq = $1, "
    "head_hash = $2, ledger_head = $3, adl_head = $4, duplicates = $5, rejected = $6")
CHECKPOINT_COLUMNS = ["seq", "prev_seq", "adopted_seq", "journal_digest", "head_hash", "ledger_head", "ledger_entries",
                      "adl_head", "adl_events", "postings_head", "postings_count"]  # the last two: migration 0009
# ... and the batch's signed checkpoint (`_sign`), in parameters 10 on
SIGNED_HEAD_AND_OFFSETS_SQL = HEAD_AND_OFFSETS_SQL.replace("WITH ", (
    f"WITH checkpoint AS (INSERT INTO checkpoints ({', '.join(CHECKPOINT_COLUMNS)}, key_id, mac) "
    f"VALUES ({', '.join(f'${n}' for n in range(10, len(CHECKPOINT_COLUMNS) + 12))})), "), 1)
# The relay's cursors, every source's in one statement (so in one transaction, and one round trip): the outbox's
# ($1, NULL when it did not move) and the tables' (source names and places in $2 and $3).
MARK_PUBLISHED_SQL = (
    "WITH outbox AS (UPDATE relay_cursor SET published_up_to = $1::bigint WHERE published_up_to < $1::bigint) "
    "UPDATE relay_sources s SET published_up_to = u.up_to FROM unnest($2::text[], $3::bigint[]) "
    "AS u(source, up_to) WHERE s.source = u.source AND s.published_up_to < u.up_to")
ADOPTION_CHUNK_ROWS = 50_000
# The positions a batch closed and does not hold again (as the engine named them; every side no one holds after a
# start, which rewrites every row).
# As three text[] parameters, asyncpg checks each element against abstract classes (0.9 µs a key); the compiled
# engine's COPY text goes instead as one text parameter that the server splits into lines and values, which is exact
# when the text escapes nothing (no tab, newline or backslash in a value: the wire contract keeps them out of
# account ids, symbols and sides).
_CLOSED_MATCH = "WHERE p.account_id = c.account_id AND p.symbol = c.symbol AND p.position_side = c.position_side"
# The ADL queue is replaced whole, by a refresh or a start's rewrite; it has no key (migration 0018), so two
# replacements at once (a refresh of a run that is stopping, the next run's rewrite) would each delete only the rows
# their statement saw and leave both sets. The lock (one holder at a time; readers are not held up) puts them in turn.
REPLACE_ADL_QUEUE_SQL = "LOCK TABLE adl_queue IN SHARE ROW EXCLUSIVE MODE; DELETE FROM adl_queue"
DELETE_CLOSED_SQL = ("DELETE FROM positions p USING unnest($1::text[], $2::text[], $3::text[]) "
                     f"AS c(account_id, symbol, position_side) {_CLOSED_MATCH}")
DELETE_CLOSED_LINES_SQL = (
    "DELETE FROM positions p USING (SELECT k[1] AS account_id, k[2] AS symbol, k[3] AS position_side "
    "FROM unnest(string_to_array(rtrim($1, E'\\n'), E'\\n')) AS line, string_to_array(line, E'\\t') AS k) AS c "
    f"{_CLOSED_MATCH}")


async def _session_kept(connection: asyncpg.Connection) -> None:
    """The pool's reset of a released connection: none. asyncpg rolls back a transaction left open before this runs;
    its default reset is another round trip per release (unlocking advisory locks, closing cursors, resetting
    settings), and the store leaves nothing of the kind in a session: cursors live in transactions, no setting is
    changed, and hold_lock unlocks its lock or ends the session."""


def signed_checkpoint(row: asyncpg.Record) -> SignedCheckpoint:
    return SignedCheckpoint(Checkpoint(*(row[c] for c in CHECKPOINT_COLUMNS)), row["key_id"], row["mac"])


@dataclass(slots=True)
class Written:
    """What _append sent of a batch that the relay's rows are built from."""

    journal_copy: bytes = b""
    postings: tuple[int, bytes] | None = None  # the posting block: its last position and its lines
    block_id: int = 0  # the quantile block's row id (its last record's); 0: no block
    block_keys: bytes = b""
    outbox_copy: bytes = b""  # the compiled engine's other outbox rows as sent, each with its id first
    outbox_last: int = 0  # their last id; 0: none


@dataclass(frozen=True, slots=True)
class CommittedRows:
    """What one batch's commit wrote to the relay's sources (ports.Committed), as the store sent it: made into the
    relay's rows in Rust when the relay takes them (backstop._engine.RelayRows.committed, the same rows as
    relay_read's: tests/integration/test_relay.py)."""

    before: dict[str, int]
    after: dict[str, int]
    block: tuple[int, str, str, str] | None  # (row id, topic, lines, keys)
    outbox_copy: bytes  # the other outbox rows: id, topic, key, record id, payload
    journal_copy: bytes
    fund_ledger: list[tuple[int, str, str, str]]  # (position, key, record id, record)
    adl_events: list[tuple[int, str, str, str]]
    postings: tuple[int, bytes] | None  # the posting block: its last position and its lines

    def relay_rows(self, topics: TopicNames) -> RelayRead:
        from backstop import _engine
        from backstop.service.ports import PLACE_HEADERS

        return _engine.RelayRows.committed(self.block, self.outbox_copy, self.journal_copy, self.fund_ledger,
                                           self.adl_events, self.postings,
                                           [topics.of_source(s) for s in TABLE_SOURCES], PLACE_HEADERS)


def _relayed(records: list[Any], last_position: int, key: str) -> list[tuple[int, str, str, str]]:
    """A table's rows of the batch as the relay reads them: (position, key, record id, record)."""
    first = last_position - len(records) + 1
    return [(first + i, *output_values(r, (key, "id")), output_json(r).decode()) for i, r in enumerate(records)]


# the columns a fund-ledger entry's or ADL event's row repeats of its record, with their SQL types
_RECORD_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "fund_ledger": (("id", "text"), ("seq", "bigint"), ("ts", "bigint"), ("fund_id", "text"), ("kind", "text"),
                    ("amount", "numeric"), ("balance_after", "numeric"), ("liquidation_id", "text"),
                    ("counter_account", "text"), ("prev_hash", "text"), ("hash", "text")),
    "adl_events": (("id", "text"), ("seq", "bigint"), ("ts", "bigint"), ("symbol", "text"),
                   ("liquidation_id", "text"), ("fund_id", "text"), ("account_id", "text"), ("side", "text"),
                   ("qty", "numeric"), ("price", "numeric"), ("rank", "int"), ("score", "numeric"),
                   ("quantile", "int"), ("prev_hash", "text"), ("hash", "text")),
}


class Store:
    def __init__(self, pool: asyncpg.Pool, anchor: Anchor | None = None, *, relay_in_rust: bool = False) -> None:
        self.pool = pool
        self.anchor = anchor
        self.relay_in_rust = relay_in_rust  # relay_read: the rows' COPY text read into the compiled engine
        # the last checkpoint committed here: (seq, journal digest, postings count, postings head)
        self._anchored: tuple[int, str, int, str] | None = None
        # (journal seq, postings stored then, the outbox's last id then) after the last batch committed here: the
        # next batch at that seq numbers its postings on from there, and hands the relay the places its rows follow,
        # without asking (one writer holds the lock; the head check fences the rest). The outbox's id: None when
        # not known (after rows the sequence numbered in a COPY).
        self._places_at: tuple[int, int, int | None] | None = None

    @classmethod
    async def open(cls, dsn: str, *, min_size: int = 1, max_size: int = 4, anchor: Anchor | None = None,
                   relay_in_rust: bool = False) -> Store:
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, timeout=30,
                                         command_timeout=120, reset=_session_kept)
        return cls(pool, anchor, relay_in_rust=relay_in_rust)

    async def close(self) -> None:
        await self.pool.close()

    # ---------------------------------------------------------------- reading state back
    async def head(self) -> Head:
        async with self.pool.acquire() as connection:
            row = await connection.fetchrow("SELECT * FROM engine_head")
            ledger_position = await connection.fetchval("SELECT coalesce(max(position), 0) FROM fund_ledger")
            adl_position = await connection.fetchval("SELECT coalesce(max(position), 0) FROM adl_events")
        if row is None:
            genesis = "0" * 64
            return Head(0, "", genesis, genesis, 0, 0, ledger_position, adl_position)
        return Head(row["seq"], row["head_hash"], row["ledger_head"], row["adl_head"], row["duplicates"],
                    row["rejected"], ledger_position, adl_position)

    async def offsets(self) -> dict[tuple[str, int], int]:
        rows = await self.pool.fetch("SELECT topic, partition, next_offset FROM consumed_offsets")
        return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}

    async def input_topic_ids(self) -> dict[str, str]:
        rows = await self.pool.fetch("SELECT topic, topic_id FROM input_topics")
        return {r["topic"]: str(r["topic_id"]) for r in rows}

    async def adopt_input_topics(self, ids: Mapping[str, str]) -> None:
        await self.pool.executemany("INSERT INTO input_topics (topic, topic_id) VALUES ($1, $2::uuid) ON CONFLICT "
                                    "(topic) DO UPDATE SET topic_id = EXCLUDED.topic_id", sorted(ids.items()))

    async def latest_snapshot(self) -> tuple[int, dict[str, Any]] | None:
        """The latest snapshot this backstop can restore (one written by an older version is passed over: the
        journal replays to the same state)."""
        row = await self.pool.fetchrow(
            "SELECT seq, document FROM snapshots WHERE (document::jsonb #>> '{engine,snapshot_version}') = $1 "
            "ORDER BY seq DESC LIMIT 1", str(SNAPSHOT_VERSION))
        return None if row is None else (row["seq"], orjson.loads(row["document"]))

    # ---------------------------------------------------------------- held identities (docs/design.md §4)
    async def held(self, keys: list[bytes]) -> list[tuple[bytes, bytes, int]]:
        """The applied_ids rows (key digest, content digest, seq) of these key digests: one query."""
        rows = await self.pool.fetch("SELECT id_digest, content_digest, seq FROM applied_ids "
                                     "WHERE id_digest = ANY($1::bytea[])", keys)
        return [(r["id_digest"], r["content_digest"], r["seq"]) for r in rows]

    async def held_estimate(self) -> int:
        """About how many identities are held (the planner's count: for sizing a filter, not for deciding)."""
        value = await self.pool.fetchval("SELECT reltuples::bigint FROM pg_class WHERE oid = 'applied_ids'::regclass")
        return max(int(value or 0), 0)

    async def held_keys(self, sink: Callable[[bytes], None]) -> None:
        """Every held key digest, to `sink` as concatenated 16-byte digests, a chunk at a time: COPY's binary rows
        of one 16-byte bytea are 22 bytes each (a 2-byte field count, a 4-byte length, the digest)."""
        reader = _BinaryDigests(sink)
        async with self.pool.acquire() as connection:
            await connection.copy_from_query("SELECT id_digest FROM applied_ids", output=reader, format="binary")
        reader.finish()

    async def hold(self, rows: list[tuple[bytes, bytes, int]]) -> None:
        """Held identities that a rebuild re-applied: they are there already, except in a database migrated while
        its journal was older than applied_ids (then this fills it)."""
        for start in range(0, len(rows), HOLD_CHUNK_ROWS):
            chunk = rows[start:start + HOLD_CHUNK_ROWS]
            await self.pool.execute(
                "INSERT INTO applied_ids (id_digest, content_digest, seq) SELECT * FROM "
                "unnest($1::bytea[], $2::bytea[], $3::bigint[]) ON CONFLICT (id_digest) DO NOTHING",
                [r[0] for r in chunk], [r[1] for r in chunk], [r[2] for r in chunk])

    async def journal(self, *, after_seq: int = 0, chunk: int = 10_000) -> AsyncIterator[tuple[int, bytes]]:
        """(seq, payload) in seq order, read in chunks; a seq missing (a row its owner deleted) is an
        InvariantViolation naming it."""
        last = after_seq
        while True:
            rows = await self.pool.fetch("SELECT seq, payload FROM journal WHERE seq > $1 ORDER BY seq LIMIT $2",
                                         last, chunk)
            refuse_journal_gap(last, [row["seq"] for row in rows])
            for row in rows:
                yield row["seq"], row["payload"].encode()
            if len(rows) < chunk:
                return
            last = rows[-1]["seq"]

    async def journal_rows(self, *, chunk: int = 10_000
                           ) -> AsyncIterator[tuple[int, str, int, int, bytes, str]]:
        """(seq, source topic, partition, offset, payload, payload_hash) in seq order, read in chunks."""
        last = 0
        while True:
            rows = await self.pool.fetch("SELECT seq, source_topic, source_partition, source_offset, payload, "
                                         "payload_hash FROM journal WHERE seq > $1 ORDER BY seq LIMIT $2", last, chunk)
            for row in rows:
                yield (row["seq"], row["source_topic"], row["source_partition"], row["source_offset"],
                       row["payload"].encode(), row["payload_hash"])
            if len(rows) < chunk:
                return
            last = rows[-1]["seq"]

    async def checkpoints(self) -> list[SignedCheckpoint]:
        return [signed_checkpoint(r) for r in await self.pool.fetch("SELECT * FROM checkpoints ORDER BY seq")]

    async def dead_letters(self) -> list[tuple[str, int, int, str, bytes, Any, int | None]]:
        """(source topic, partition, offset, reason, raw, kind, after_seq) of every input the service dead-lettered,
        in the order it did (kind and after_seq are None on rows written before migration 0005)."""
        rows = await self.pool.fetch("SELECT source_topic, source_partition, source_offset, reason, raw, kind, "
                                     "after_seq FROM dead_letter ORDER BY id")
        return [(r["source_topic"], r["source_partition"], r["source_offset"], r["reason"], bytes(r["raw"]),
                 r["kind"], r["after_seq"]) for r in rows]

    async def records(self, table: str) -> list[dict[str, Any]]:
        """The stored fund-ledger entries, ADL events or postings, as published, in chain order."""
        if table not in ("fund_ledger", "adl_events", "postings"):
            raise ValueError(table)
        if table == "postings":  # their blocks in order, split (the view sorts every posting by a derived position)
            blocks = await self.pool.fetch("SELECT records FROM posting_blocks ORDER BY last_position")
            return [orjson.loads(line) for b in blocks for line in b["records"].split("\n")[:-1]]  # each ends "\n"
        rows = await self.pool.fetch(f"SELECT record FROM {table} ORDER BY position")
        return [orjson.loads(r["record"]) for r in rows]

    async def columns_unlike_record(self, table: str) -> str | None:
        """The first fund-ledger entry or ADL event (in chain order) whose columns, which queries read, are not its
        `record`, which the chain and the checkpoints cover; None when every row agrees."""
        columns = _RECORD_COLUMNS[table]
        differs = " OR ".join(f"(record::jsonb->>'{name}')::{kind} IS DISTINCT FROM {name}" for name, kind in columns)
        row = await self.pool.fetchrow(f"SELECT position, id FROM {table} WHERE {differs} ORDER BY position LIMIT 1")
        return None if row is None else f"{table} row {row['position']} ({row['id']})"

    @contextlib.asynccontextmanager
    async def hold_lock(self, lock_id: int) -> AsyncIterator[Lease]:
        """A session advisory lock, on a connection of its own: one holder per database, a second waits here (a
        standby); the lock dies with its session, which the lease checks."""
        async with self.pool.acquire() as connection:
            # asked again every LOCK_POLL_S rather than waited for in one statement: a statement waiting longer than
            # the pool's command_timeout fails (a standby restarted every 2 minutes), and one cancelled at its
            # timeout may have taken the lock just before, which a second call would take again (held twice)
            while not await connection.fetchval("SELECT pg_try_advisory_lock($1)", lock_id):
                await asyncio.sleep(LOCK_POLL_S)
            try:
                yield _SessionLease(connection, lock_id)
            finally:
                try:
                    await connection.execute("SELECT pg_advisory_unlock($1)", lock_id)
                except BaseException as error:
                    # the pool keeps a released connection's session as it is (_session_kept): one that may still
                    # hold the lock is ended, and its session with it (a connection already lost is gone already)
                    with contextlib.suppress(asyncpg.InterfaceError):
                        connection.terminate()
                    if not isinstance(error, (asyncpg.InterfaceError, asyncpg.PostgresError, OSError)):
                        raise  # after a database crash there is nothing left to unlock

    # ---------------------------------------------------------------- the batch transaction
    async def commit(self, *, expected_seq: int, result: BatchResult, head: Head, projections: Projections,
                     expected_counts: tuple[int, int] | None = None) -> CommittedRows | None:
        async with self.pool.acquire() as connection:
            return await self.write_batch(connection, expected_seq=expected_seq, result=result, head=head,
                                          projections=projections, expected_counts=expected_counts)

    async def write_batch(self, connection: asyncpg.Connection, *, expected_seq: int, result: BatchResult,
                          head: Head, projections: Projections, expected_counts: tuple[int, int] | None = None
                          ) -> CommittedRows | None:
        """The batch in one transaction; what it wrote to the relay's sources where the relay runs in Rust and
        every place its rows follow is known (None: the relay reads them back). `expected_counts`: the head's
        duplicates and rejected the batch was applied after, checked with its seq (a batch of only duplicates or
        dead letters moves those, not the seq)."""
        async with connection.transaction():
            row = await connection.fetchrow("SELECT seq, duplicates, rejected FROM engine_head FOR UPDATE")
            current = (row["seq"], row["duplicates"], row["rejected"]) if row is not None else (0, 0, 0)
            if current[0] != expected_seq or (expected_counts is not None and current[1:] != expected_counts):
                raise HeadMoved(f"journal head moved: expected seq {expected_seq} (duplicates and rejected "
                                f"{expected_counts or 'unchecked'}), found {current[0]} ({current[1]}, {current[2]}): "
                                f"another writer is active")
            postings_before, outbox_before = await self._stored_before(connection, expected_seq)
            written = await self._append(connection, result, head, postings_before)
            signed = await self._sign(connection, self.anchor, expected_seq, result, head) \
                if self.anchor is not None and result.journal_facts().rows else None
            inline = await self._project(connection, projections)
            offsets = sorted(result.next_offsets.items())
            arguments = [head.seq, head.head_hash, head.ledger_head, head.adl_head, head.duplicates, head.rejected,
                         [t for (t, _), _ in offsets], [p for (_, p), _ in offsets], [o for _, o in offsets]]
            if signed is not None:  # the batch's checkpoint in the same statement
                arguments += [*(getattr(signed.checkpoint, c) for c in CHECKPOINT_COLUMNS), signed.key_id, signed.mac]
            # and a small batch's projection rows; the state hash at the head is recorded apart (record_state_hash)
            sql = _with_inline(HEAD_AND_OFFSETS_SQL if signed is None else SIGNED_HEAD_AND_OFFSETS_SQL, inline,
                               len(arguments) + 1)
            await connection.execute(sql, *arguments, *(text for *_, text in inline))
            faults.reached("in_transaction")
        numbered = bool(result.outbox)  # rows the outbox's sequence numbered as it inserted them: ids not known
        outbox_after = written.outbox_last or written.block_id or outbox_before
        postings_after = postings_before + posting_tail(result)[0]
        self._places_at = (head.seq, postings_after, None if numbered else outbox_after)
        if signed is not None:
            checkpoint = signed.checkpoint
            self._anchored = (checkpoint.seq, checkpoint.journal_digest, checkpoint.postings_count or 0,
                              checkpoint.postings_head or GENESIS_HASH)  # both signed by _sign
        if not self.relay_in_rust or numbered or result.postings:
            return None
        return CommittedRows(
            {OUTBOX: outbox_before, "journal": expected_seq,
             "fund_ledger": head.ledger_position - len(result.fund_entries),
             "adl_events": head.adl_position - len(result.adl_events), "postings": postings_before},
            {OUTBOX: outbox_after, "journal": head.seq, "fund_ledger": head.ledger_position,
             "adl_events": head.adl_position, "postings": postings_after},
            (written.block_id, result.quantile_topic, result.quantile_block.decode(), written.block_keys.decode())
            if written.block_id else None,
            written.outbox_copy, written.journal_copy, _relayed(result.fund_entries, head.ledger_position, "fund_id"),
            _relayed(result.adl_events, head.adl_position, "account_id"), written.postings)

    # ---------------------------------------------------------------- checkpoints
    async def _sign(self, connection: asyncpg.Connection, anchor: Anchor, expected_seq: int, result: BatchResult,
                    head: Head) -> SignedCheckpoint:
        """The batch's checkpoint, signed (write_batch writes it with the head): the journal digest and the postings'
        head and count carried on over its rows from the checkpoint it follows (or, after a checkpoint signed before
        migration 0009 or an adoption, the postings read from the table, which holds the batch's already), and the
        heads it leaves."""
        if self._anchored is not None and self._anchored[0] == expected_seq:
            prev_seq, digest, adopted_seq = expected_seq, self._anchored[1], 0
            postings: tuple[int, str] | None = self._anchored[2], self._anchored[3]
        else:
            prev_seq, digest, adopted_seq, postings = await self.anchored_head(connection, anchor, expected_seq)
        if postings is None:
            last = await connection.fetchrow(
                "SELECT last_position, records FROM posting_blocks ORDER BY last_position DESC LIMIT 1")
            postings_count, postings_head = (last[0], last_posting_hash(last[1])) if last else (0, GENESIS_HASH)
        else:
            made, last_hash = posting_tail(result)
            postings_count, postings_head = postings[0] + made, last_hash or postings[1]
        facts = result.journal_facts()
        if facts.first_seq != expected_seq + 1 or facts.last_seq != head.seq:
            raise InvariantViolation(f"the batch's journal rows run from seq {facts.first_seq} to "
                                     f"{facts.last_seq}, not from {expected_seq + 1} to {head.seq}")
        # SHA-256 over the batch's journal lines, in a thread (Rust without the GIL, under the compiled engine): the
        # event loop meanwhile serves the consumer and the relay
        digest = await asyncio.get_running_loop().run_in_executor(None, result.journal_digest, digest)
        return anchor.key.sign(Checkpoint(head.seq, prev_seq, adopted_seq, digest, head.head_hash, head.ledger_head,
                                          head.ledger_position, head.adl_head, head.adl_position, postings_head,
                                          postings_count))

    async def anchored_head(self, connection: asyncpg.Connection, anchor: Anchor, head_seq: int
                            ) -> tuple[int, str, int, tuple[int, str] | None]:
        """(the seq of the checkpoint to follow, the journal digest there, the seq adopted, the postings' count and
        head there: None when that checkpoint does not sign them) for signing on from the journal head `head_seq`.
        That head must carry a checkpoint this key signed, else the history is new to this key: it is signed on only
        if the operator adopted exactly this head (BACKSTOP_ANCHOR_ADOPT), never silently, or an owner who rewrote
        the history and removed its checkpoints would have it signed."""
        row = await connection.fetchrow("SELECT * FROM checkpoints ORDER BY seq DESC LIMIT 1")
        if row is None and head_seq == 0:
            return 0, JOURNAL_GENESIS, 0, (0, GENESIS_HASH)
        if row is not None and row["seq"] == head_seq:
            signed = signed_checkpoint(row)
            if anchor.key.verifies(signed):
                checkpoint = signed.checkpoint
                postings = None if checkpoint.postings_count is None or checkpoint.postings_head is None \
                    else (checkpoint.postings_count, checkpoint.postings_head)
                return head_seq, checkpoint.journal_digest, 0, postings
            problem = (f"the checkpoint at the journal's head (seq {head_seq}) does not verify with this anchor key "
                       f"(key id {anchor.key.key_id}; the checkpoint names {signed.key_id})")
        elif row is None:
            problem = f"no checkpoint signs the journal's head (seq {head_seq})"
        else:
            problem = f"the last checkpoint is at seq {row['seq']}, the journal's head at seq {head_seq}"
        adopt = anchor.adopt
        if adopt is None or adopt.seq != head_seq:
            raise InvariantViolation(
                f"{problem}: the history may have been rewritten. Check it (backstop audit verify --dsn); if it is "
                f"right, start once with BACKSTOP_ANCHOR_ADOPT=<seq>:<journal digest> as audit verify prints them")
        digest = await self.journal_digest(connection, head_seq)
        if digest != adopt.journal_digest:
            raise InvariantViolation(f"BACKSTOP_ANCHOR_ADOPT names journal digest {adopt.journal_digest} at seq "
                                     f"{head_seq}, but the stored journal gives {digest}")
        return 0, digest, head_seq, None

    @staticmethod
    async def journal_digest(connection: asyncpg.Connection, through_seq: int) -> str:
        digest, last = JOURNAL_GENESIS, 0
        while last < through_seq:
            rows = await connection.fetch(
                "SELECT seq, source_topic, source_partition, source_offset, payload_hash FROM journal "
                "WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3", last, through_seq, ADOPTION_CHUNK_ROWS)
            if not rows:
                break
            for r in rows:
                digest = journal_step(digest, r["seq"], r["source_topic"], r["source_partition"], r["source_offset"],
                                      r["payload_hash"])
            last = rows[-1]["seq"]
        return digest

    async def check_anchor(self) -> int:
        """Before the service starts: the journal's head is signed with this store's key (or adopted); raises
        InvariantViolation with the reason. Returns the seq adopted (its checkpoint is written with the next batch),
        or 0."""
        if self.anchor is None:
            return 0
        async with self.pool.acquire() as connection, connection.transaction(isolation="repeatable_read",
                                                                               readonly=True):
            # One snapshot for the head and its checkpoint: a worker joining as a standby reads them while the
            # active one commits batches (each with its checkpoint).
            head_seq = await connection.fetchval("SELECT coalesce(max(seq), 0) FROM journal")
            return (await self.anchored_head(connection, self.anchor, head_seq))[2]

    async def _stored_before(self, connection: asyncpg.Connection, expected_seq: int) -> tuple[int, int]:
        """The postings stored before the batch (their positions have no gaps) and the outbox's last id: carried on
        from the batch committed here last if this one extends it, else read (at start, after another writer, after
        a commit whose outcome is unknown, after rows the outbox's sequence numbered)."""
        places = self._places_at
        if places is not None and places[0] == expected_seq and places[2] is not None:
            return places[1], places[2]
        row = await connection.fetchrow("SELECT (SELECT coalesce(max(last_position), 0) FROM posting_blocks), "
                                        "(SELECT coalesce(max(id), 0) FROM outbox)")
        return row[0], row[1]

    async def _append(self, connection: asyncpg.Connection, result: BatchResult, head: Head,
                      postings_before: int) -> Written:
        written = Written()
        held = result.held_ids  # the primary key refuses an identity held twice: the batch fails, nothing commits
        if result.journal_facts().rows:  # the compiled engine's COPY text as it is, or the reference's rows encoded
            text = written.journal_copy = result.journal_copy or journal_copy_text(result.journal)
            if (inline := _inline_text(text)) is None:
                await connection.copy_to_table("journal", source=io.BytesIO(text), columns=JOURNAL_COLUMNS,
                                               format="text")
            elif 0 < len(held) <= INLINE_ROWS:  # a few rows: one statement, not COPY's round trips
                await connection.execute(INLINE_JOURNAL_AND_HELD_SQL, inline, _held_text(held))
                held = []
            else:
                await connection.execute(INLINE_JOURNAL_SQL, inline)
        for table, records, first, columns in (
                ("fund_ledger", result.fund_entries, head.ledger_position - len(result.fund_entries) + 1,
                 FUND_LEDGER_COLUMNS),
                ("adl_events", result.adl_events, head.adl_position - len(result.adl_events) + 1, ADL_EVENT_COLUMNS)):
            if not records:
                continue
            # each row: its position, its columns, and its record's canonical JSON (stored as it was published)
            await connection.copy_records_to_table(table, columns=["position", *columns, "record"], records=[
                (first + i, *output_values(r, columns), output_json(r).decode()) for i, r in enumerate(records)])
        block = posting_block(result)
        if block is not None:  # one row, the lines as the engine wrote them (the trigger checks its place and seqs)
            last_position = postings_before + block.postings
            written.postings = (last_position, block.lines)
            await connection.execute(POSTING_BLOCK_SQL, last_position, block.postings, block.first_seq, block.last_seq,
                                     block.lines.decode())
        if result.findings:  # by COPY: one statement, not one per finding
            rows = [output_values(f, FINDING_COLUMNS) for f in result.findings]
            await connection.copy_records_to_table("findings", columns=list(FINDING_COLUMNS), records=[
                (*row[:-1], orjson.dumps(row[-1]).decode()) for row in rows])
        if len(held) > INLINE_ROWS:
            await connection.copy_records_to_table("applied_ids", columns=["id_digest", "content_digest", "seq"],
                                                   records=held)
        elif held:
            await connection.execute(INLINE_HELD_SQL, _held_text(held))
        if result.dead_letters:
            await connection.executemany(
                "INSERT INTO dead_letter (source_topic, source_partition, source_offset, reason, raw, kind, after_seq) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                [(d.source_topic, d.source_partition, d.source_offset, d.reason, d.raw, d.kind, d.after_seq)
                 for d in result.dead_letters])
        if result.quantile_block:  # before the dead letters, as the reference engine writes them
            keys = written.block_keys = result.quantile_keys or block_keys(result.quantile_block)
            written.block_id = await connection.fetchval(
                QUANTILE_BLOCK_SQL, result.quantile_block.count(b"\n"), result.quantile_topic,
                result.quantile_block.decode(), keys.decode())
        if result.outbox:
            await connection.copy_records_to_table("outbox", columns=OUTBOX_COLUMNS,
                                                   records=[(m.topic, m.key, m.record_id, m.payload.decode())
                                                            for m in result.outbox])
        if result.outbox_copy:  # their ids taken first, so that the relay can be handed the rows as stored
            lines = result.outbox_copy.split(b"\n")[:-1]  # a row per line: COPY text escapes a newline in a value
            written.outbox_last = await connection.fetchval(RESERVE_OUTBOX_IDS_SQL, len(lines))
            first = written.outbox_last - len(lines) + 1
            text = written.outbox_copy = b"".join(b"%d\t%b\n" % (first + i, line) for i, line in enumerate(lines))
            await connection.copy_to_table("outbox", source=io.BytesIO(text), columns=["id", *OUTBOX_COLUMNS],
                                           format="text")
        return written

    async def _project(self, connection: asyncpg.Connection, projections: Projections) -> list[Inline]:
        """The projection rows, but a small batch's wallets, positions and funds: those are returned, for the batch's
        last statement (`_upsert`)."""
        closed = projections.closed_positions

        async def delete_closed() -> None:  # before the positions' upsert: a key closed and opened again stays
            if not closed:
                return
            if isinstance(closed, bytes) and b"\\" not in closed:  # COPY text that escapes nothing: lines as they are
                await connection.execute(DELETE_CLOSED_LINES_SQL, closed.decode())
                return
            accounts, symbols, sides = zip(*rows_of(closed), strict=True)
            await connection.execute(DELETE_CLOSED_SQL, accounts, symbols, sides)

        inline = await _upsert(connection, [
            ("account_wallets", WALLET_COLUMNS, KEY_COLUMNS["account_wallets"], projections.wallets),
            ("positions", POSITION_COLUMNS, KEY_COLUMNS["positions"], projections.positions),
            ("funds", FUND_COLUMNS, 1, projections.funds)], delete_closed)
        if projections.lots is not None:
            await connection.execute("DELETE FROM fund_lots")
            await _copy(connection, "fund_lots", [
                "fund_id", "liquidation_id", "symbol", "side", "qty", "cost", "bankruptcy_price",
                "liquidated_account", "seq"], projections.lots)
        if projections.adl_queue is not None:
            await connection.execute(REPLACE_ADL_QUEUE_SQL)
            await _copy(connection, "adl_queue", ADL_QUEUE_COLUMNS, projections.adl_queue)
        return inline

    # ---------------------------------------------------------------- written behind the batches
    async def write_refresh(self, refresh: RefreshCopy) -> list[StaleRow]:
        """A full refresh as of refresh.seq, beside the batch transactions: wallet and position rows updated where
        only earlier batches have written them (a row that does not exist stays so: new and closed rows are the
        batches' to write; a row as of refresh.seq itself was written from the very state the refresh was, so it
        already holds the refresh's values, and catching up that is most rows: the batch at which a refresh falls
        due writes every row touched since the last one), in short transactions that never wait for a row: a row a
        batch holds is skipped, since that batch writes it as of a later seq (so the refresh can never be part of a
        deadlock); then the ADL queue, which only full refreshes write, replaced in one transaction, after the
        stale rows below are removed in one of their own (a batch that closes such a row waits for it: for that
        statement, not for the queue's rewrite).

        Every position open at refresh.seq now has a row as of that seq or later, so a row still older than it was
        closed by then and no batch has written it since: catching up, the batches' rows wait (Touched), and a
        refresh may be as of a batch that did not write them. Those rows are removed, and returned (one a failed
        batch held is removed too, and rewritten by the restart that failure causes)."""
        async with self.pool.acquire() as connection:
            for table, columns, chunks in (("account_wallets", WALLET_COLUMNS, refresh.wallets),
                                           ("positions", POSITION_COLUMNS, refresh.positions)):
                staging, keys = f"refresh_{table}", columns[:KEY_COLUMNS[table]]
                updates = ", ".join(f"{c} = r.{c}" for c in columns[len(keys):])
                same_key = " AND ".join(f"t.{c} = r.{c}" for c in keys)
                for chunk in chunks:
                    async with connection.transaction():
                        await connection.execute(
                            f"CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE {table}) ON COMMIT DELETE ROWS")
                        await connection.copy_to_table(staging, source=io.BytesIO(chunk), columns=columns,
                                                       format="text")
                        await connection.execute(
                            f"WITH mine AS (SELECT t.ctid FROM {table} t JOIN {staging} r USING ({', '.join(keys)}) "
                            f"WHERE t.seq < r.seq FOR UPDATE OF t SKIP LOCKED) "
                            f"UPDATE {table} t SET {updates} FROM {staging} r, mine WHERE t.ctid = mine.ctid "
                            f"AND {same_key} AND t.seq < r.seq")
            stale = await connection.fetch(  # a transaction of its own: a batch may wait for these rows
                "WITH stale AS (SELECT ctid FROM positions WHERE seq < $1 FOR UPDATE SKIP LOCKED) "
                "DELETE FROM positions t USING stale WHERE t.ctid = stale.ctid "
                "RETURNING t.account_id, t.symbol, t.position_side, t.seq", refresh.seq)
            async with connection.transaction():
                await connection.execute(REPLACE_ADL_QUEUE_SQL)
                await connection.copy_to_table("adl_queue", source=io.BytesIO(refresh.adl_queue),
                                               columns=ADL_QUEUE_COLUMNS, format="text")
        return sorted(StaleRow(r[0], r[1], r[2], int(r[3])) for r in stale)

    async def write_snapshot(self, seq: int, state_hash: str, document: bytes) -> None:
        """Only once the journal up to seq is committed: recovery starts from the latest snapshot."""
        await self.pool.execute("INSERT INTO snapshots (seq, state_hash, document) VALUES ($1, $2, $3)",
                                seq, state_hash, document.decode())

    async def record_state_hash(self, seq: int, value: str) -> None:
        """The state hash at seq, written only if the journal head is still at seq."""
        await self.pool.execute("UPDATE engine_head SET state_hash = $2, state_hash_seq = $1 WHERE seq = $1",
                                seq, value)

    async def stored_hashes(self) -> dict[str, Any]:
        row = await self.pool.fetchrow("SELECT seq, head_hash, state_hash, state_hash_seq FROM engine_head")
        return dict(row) if row else {"seq": 0, "head_hash": None, "state_hash": None, "state_hash_seq": None}

    # ---------------------------------------------------------------- the relay's sources
    async def unpublished(self, limit: int, topics: TopicNames) -> list[OutboxRow]:
        """The next rows of every source after its cursor, at most `limit` of each, each source in its own order
        (one statement: UNPUBLISHED_SQL). While outbox rows written before the tables became sources (migration
        0008) wait, only those."""
        found = await self.pool.fetch(UNPUBLISHED_SQL, limit)
        table_topics = [topics.of_source(source) for source in TABLE_SOURCES]
        rows: list[OutboxRow] = []
        append, new = rows.append, tuple.__new__  # a NamedTuple's own __new__ is a Python call per row
        for r in found:
            rank = r[0]
            if rank == 0:
                if r[11] is None:
                    append(new(OutboxRow, (r[1], r[2], r[3], r[4], r[5], OUTBOX)))
                else:
                    rows.extend(block_rows(r[1], r[11], r[2], r[5], r[12], r[13]))
            elif rank == 1:  # the journal: its record built from the row's columns
                append(new(OutboxRow, (r[1], table_topics[0], *journal_record_text(
                    r[1], r[6], r[7], r[8], r[2], r[9], r[5], r[10]), "journal")))
            elif r[11] is not None:  # a posting block
                rows.extend(posting_block_rows(r[1], r[11], table_topics[rank - 1], r[5], r[12]))
            else:
                append(new(OutboxRow, (r[1], table_topics[rank - 1], r[3], r[4], r[5], TABLE_SOURCES[rank - 1])))
        return rows

    async def relay_read(self, limit: int, topics: TopicNames) -> RelayRead:
        """unpublished's rows; where the relay runs in Rust, the statement's COPY text read by the compiled engine
        (backstop._engine.RelayRows: the same rows, tests/integration/test_relay.py::read_both), so no row becomes a
        Python object."""
        from backstop.service.ports import PLACE_HEADERS, RowList

        if not self.relay_in_rust:
            return RowList(await self.unpublished(limit, topics))
        from backstop import _engine

        chunks: list[bytes] = []

        async def take(chunk: bytes) -> None:
            chunks.append(chunk)

        async with self.pool.acquire() as connection:
            await connection.copy_from_query(unpublished_sql(str(int(limit))), output=take)
        return _engine.RelayRows(b"".join(chunks), [topics.of_source(source) for source in TABLE_SOURCES],
                                 PLACE_HEADERS)

    async def mark_published(self, up_to: Mapping[str, int]) -> None:
        """Every row of each source up to its id in `up_to` is in Kafka (no cursor ever moves back)."""
        tables = sorted((source, last) for source, last in up_to.items() if source != OUTBOX)
        await self.pool.execute(MARK_PUBLISHED_SQL, up_to.get(OUTBOX), [source for source, _ in tables],
                                [last for _, last in tables])

    async def published_places(self) -> dict[str, int]:
        """Each relay source's cursor."""
        rows = await self.pool.fetch("SELECT $1::text, published_up_to FROM relay_cursor UNION ALL "
                                     "SELECT source, published_up_to FROM relay_sources", OUTBOX)
        return {source: place for source, place in rows}

    async def outbox_backlog(self) -> int:
        """Rows not yet published, over every source."""
        backlog: int = await self.pool.fetchval(RELAY_BACKLOG_SQL)
        return backlog

    async def outbox_places(self, tails: Mapping[str, tuple[str, int]], after: int) -> tuple[dict[str, int], int]:
        """Each record at the id it was published with, if this database holds it there (every database that
        holds it does, unless restored from a backup older than it): the row at or after that id, one record or a
        block whose ids run up to its id. Else, among the rows after `after` and up to the last committed now:
        one-record rows by their unique record id, blocks of its topic from the newest back, a window of ids per
        statement (each short, however long the outbox), each block that names one of the ids split for its
        records'."""
        top: int = await self.pool.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
        found: dict[str, int] = {}
        for record_id, (_, place) in sorted(tails.items()):
            row = await self.pool.fetchrow(OUTBOX_ROW_AT_SQL, place) if 0 < place <= top else None
            if row is None or row["id"] - (row["records"] or 1) >= place:  # no row holds that id (rolled back)
                continue
            at = (row["record_id"] if row["records"] is None else block_rows(
                row["id"], row["records"], row["topic"], row["payload"], place - 1, row["keys"])[0].record_id)
            if at == record_id:
                found[record_id] = place
        wanted = {record_id: topic for record_id, (topic, _) in tails.items() if record_id not in found}
        if not wanted:
            return found, top
        found.update((record_id, place) for record_id, place, topic in await self.pool.fetch(
            OUTBOX_RECORD_PLACES_SQL, sorted(wanted), after, top) if wanted[record_id] == topic)
        high = top
        while wanted.keys() - found.keys() and high > after:
            low, missing = max(high - OUTBOX_PLACES_WINDOW, after), sorted(wanted.keys() - found.keys())
            for block in await self.pool.fetch(OUTBOX_BLOCK_PLACES_SQL, missing, low, high,
                                               sorted({wanted[record_id] for record_id in missing})):
                rows = block_rows(block["id"], block["records"], block["topic"], block["payload"], after,
                                  block["keys"])
                for row in rows:
                    if wanted.get(row.record_id) == row.topic:
                        found.setdefault(row.record_id, row.id)  # the newest block's, should an id repeat
            high = low
        return found, top

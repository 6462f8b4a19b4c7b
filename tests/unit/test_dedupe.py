"""Duplicates (backstop.core.dedupe, docs/design.md §4 Admission): an identity is applied at most once, ever; the same
record again is a duplicate whenever it comes; the same identity with other content is a conflicting_duplicate that
names the seq holding it; marks and definitions compare with the last of their subject. And the store that holds the
identities (backstop.core.idstore): exact, compact, and the same after a round trip through its file."""

from __future__ import annotations

import hashlib
import io
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from backstop.core import idstore
from backstop.core.dedupe import content_digest, content_document, describe, identity, key_digest
from backstop.core.idstore import IdStore
from backstop.core.processor import Applied, Duplicate, Outcome, Processor, Rejection
from backstop.core.snapshot import restore, state_document, state_hash
from backstop.entrypoints.cli import main as cli
from backstop.wire.decode import decode_record
from scenario import fill, fund, funding, instrument, liquidation, mark, run, transfer

T0 = 1_900_000_000_000
MINUTE = 60_000
BASE = [fund(ts=T0), instrument(tick="0.1", lot="0.001", ts=T0), transfer("seed", "fund:MAIN", "100000", ts=T0),
        transfer("d-u", "u", "10000", ts=T0), transfer("d-v", "v", "10000", ts=T0),
        transfer("d-w", "w", "10000", ts=T0)]


def kinds(outcomes: list[Outcome]) -> list[str]:
    return [o.kind if isinstance(o, Rejection) else type(o).__name__ for o in outcomes]


def busy(start: int, minutes: int) -> list[dict[str, object]]:
    """A mark a minute: event time moves on."""
    return [mark(str(50000 + m), ts=start + m * MINUTE) for m in range(minutes)]


def test_a_fill_sent_again_thirty_minutes_later_is_a_duplicate_and_the_position_is_not_doubled() -> None:
    original = fill("f-1", "u", "buy", "1", "50000", ts=T0 + 1)
    processor, outcomes = run([*BASE, original, fill("f-2", "v", "sell", "1", "50000", ts=T0 + 2),
                               *busy(T0 + MINUTE, 31), dict(original)])
    assert isinstance(outcomes[-1], Duplicate)
    assert outcomes[-1].key == f"fill id f-1 applied at seq {len(BASE) + 1}"
    assert processor.engine.positions.get("u", "BTCUSDT").qty == 1
    assert processor.duplicates == 1 and processor.rejected == 0


def test_a_transfer_id_reused_with_another_amount_later_is_a_conflicting_duplicate_and_moves_nothing() -> None:
    processor, outcomes = run([*BASE, transfer("t-7", "u", "100", ts=T0 + 1), *busy(T0 + MINUTE, 32),
                               transfer("t-7", "u", "250", ts=T0 + 32 * MINUTE)])
    last = outcomes[-1]
    assert isinstance(last, Rejection) and last.kind == "conflicting_duplicate"
    assert last.reason == f"conflicting_duplicate: transfer id t-7 is held by seq {len(BASE) + 1} with other content"
    assert processor.engine.ledger.balance("wallet:u:USDT") == 10100
    assert processor.conflicting_duplicates == 1 and processor.rejected == 1


def test_a_small_liquidation_placed_first_does_not_swallow_the_real_one_that_reuses_its_id() -> None:
    """Issue 19 item 3: a 1-lot liq-S made the real 20-lot one vanish as a 'duplicate' (1 ADL event instead of 2)."""
    setup = [*BASE, fill("open-u", "u", "buy", "0.02", "50000", mode="isolated", leverage="50", ts=T0 + 1),
             fill("open-v", "v", "sell", "0.01", "50000", ts=T0 + 1),
             fill("open-w", "w", "sell", "0.01", "50000", ts=T0 + 1)]
    small = liquidation("liq-S", "u", "0.001", "49000", ts=T0 + 2)
    real = liquidation("liq-S", "u", "0.02", "49000", ts=T0 + 2)
    processor, outcomes = run([*setup, small, real])
    assert kinds(outcomes[-2:]) == ["Applied", "conflicting_duplicate"]
    assert outcomes[-1] == Rejection(f"conflicting_duplicate: liquidation id liq-S is held by seq {len(setup) + 1} "
                                     f"with other content", "conflicting_duplicate")
    assert processor.engine.positions.get("u", "BTCUSDT").qty == Decimal("0.019")  # only the first was applied


def test_the_same_content_spelled_differently_is_a_duplicate() -> None:
    original = liquidation("l", "u", "0.5", "49000", ts=T0 + 3)
    spelled = {**original, "qty": "0.500", "mark_price": "49000.0"}
    del spelled["executions"]  # absent is the default: []
    processor, outcomes = run([*BASE, fill("a", "u", "buy", "1", "50000", ts=T0 + 1),
                               fill("b", "v", "sell", "1", "50000", ts=T0 + 1), original, spelled,
                               {**fill("a", "u", "buy", "1", "50000", ts=T0 + 1), "fee": "0.0"}])
    assert kinds(outcomes[-2:]) == ["Duplicate", "Duplicate"]
    record = decode_record(orjson.dumps(spelled))
    assert content_document(record) == {"type": "liquidation", "ts": T0 + 3, "liquidation_id": "l", "account_id": "u",
                                        "symbol": "BTCUSDT", "qty": Decimal("0.500"),
                                        "mark_price": Decimal("49000.0")}
    assert content_digest(record) == content_digest(decode_record(orjson.dumps(original)))
    assert len(processor.engine.dedupe.ids) == 7  # four transfers, two fills, one liquidation
    assert processor.engine.dedupe.count == len(processor.engine.dedupe.ids)


def test_identities_are_per_kind_and_a_funding_is_identified_by_symbol_and_ts() -> None:
    records = [decode_record(orjson.dumps(r)) for r in (fill("x", "u", "buy", "1", "1"), transfer("x", "u", "1"),
                                                       liquidation("x", "u", "1", "1"), funding("0.1", "1", ts=7))]
    assert [identity(r) for r in records] == ["fill:x", "transfer:x", "liquidation:x", "funding:BTCUSDT:7"]
    assert len({key_digest(identity(r) or "") for r in records}) == 4
    assert [describe(identity(r) or "") for r in records] == ["fill id x", "transfer id x", "liquidation id x",
                                                              "funding of BTCUSDT at ts 7"]
    _, outcomes = run([*BASE, fill("x", "u", "buy", "1", "50000", ts=T0 + 1), transfer("x", "u", "5", ts=T0 + 1)])
    assert kinds(outcomes[-2:]) == ["Applied", "Applied"]


def test_a_mark_or_definition_equal_to_the_last_of_its_subject_is_a_duplicate() -> None:
    a, b = mark("50000", ts=T0 + 5), mark("50100", ts=T0 + 5)
    _, outcomes = run([*BASE, a, dict(a), b, dict(a), fund(ts=T0), instrument(tick="0.1", lot="0.001", ts=T0),
                       instrument(tick="0.1", lot="0.001", ts=T0 + 6)])
    # a, b, a at one ts: the later in the journal wins, a is the last mark again; definitions as they came
    assert kinds(outcomes[len(BASE):]) == ["Applied", "Duplicate", "Applied", "Applied", "Duplicate", "Duplicate",
                                           "Applied"]


def test_memory_for_marks_and_definitions_is_one_digest_per_subject() -> None:
    processor, outcomes = run([*BASE, *busy(T0 + 1, 500)])
    assert all(isinstance(o, Applied) for o in outcomes)
    assert processor.engine.dedupe.latest.keys() == {"fund:MAIN", "instrument:BTCUSDT", "mark:BTCUSDT"}


def test_held_identities_and_subjects_are_in_the_state_hash_and_survive_a_snapshot() -> None:
    journal = [*BASE, fill("f", "u", "buy", "1", "50000", ts=T0 + 1), mark("50000", ts=T0 + 2)]
    processor, _ = run(journal)
    again, _ = run(journal[:-1])
    assert state_hash(processor.engine) != state_hash(again.engine)  # the last mark's digest differs
    other, _ = run([*BASE, fill("g", "u", "buy", "1", "50000", ts=T0 + 1), mark("50000", ts=T0 + 2)])
    assert state_hash(processor.engine) != state_hash(other.engine)  # the same state but another identity held
    buffer = io.BytesIO()
    store = processor.engine.dedupe.ids
    assert isinstance(store, IdStore)
    store.write(buffer)
    buffer.seek(0)
    ids, _ = IdStore.read(buffer)
    resumed = Processor(restore(orjson.loads(orjson.dumps(state_document(processor.engine))), ids=ids))
    assert state_hash(resumed.engine) == state_hash(processor.engine)
    _, outcomes = run([journal[-3], journal[-1], {**journal[-2], "qty": "2"}], processor=resumed)
    assert kinds(outcomes) == ["Duplicate", "Duplicate", "conflicting_duplicate"]


def _keys(count: int, salt: bytes = b"") -> list[bytes]:
    return [hashlib.sha256(salt + i.to_bytes(8, "big")).digest()[:16] for i in range(count)]


def test_the_store_finds_every_identity_through_flushes_and_merges_and_nothing_else() -> None:
    store = IdStore()
    keys = _keys(5 * idstore.RECENT_LIMIT + 123)
    for seq, key in enumerate(keys, start=1):
        store.add(key, seq.to_bytes(8, "big"), seq)
    assert len(store) == len(keys)
    for seq, key in enumerate(keys, start=1):
        if seq % 101 == 0 or seq > len(keys) - 200:
            assert store.held(key) == (seq.to_bytes(8, "big"), seq)
    assert not any(store.held(key) for key in _keys(20_000, b"other"))


def test_the_store_holds_an_identity_in_about_32_bytes() -> None:
    store = IdStore()
    keys = _keys(8 * idstore.RECENT_LIMIT)
    for seq, key in enumerate(keys, start=1):
        store.add(key, key[:8], seq)
    store.flush()
    assert 32 <= store.nbytes / len(store) <= 40


def test_the_store_round_trips_through_its_file_and_refuses_a_damaged_one(tmp_path: Path) -> None:
    store = IdStore()
    keys = _keys(idstore.RECENT_LIMIT + 10)
    for seq, key in enumerate(keys, start=1):
        store.add(key, key[8:], seq)
    path = tmp_path / "ids"
    with path.open("wb") as handle:
        written = store.write(handle)
    with path.open("rb") as handle:
        read, digest = IdStore.read(handle)
    assert digest == written and len(read) == len(store)
    assert all(read.held(key) == (key[8:], seq) for seq, key in enumerate(keys, start=1))
    data = path.read_bytes()
    for damaged in (data[:-8], data + b"\0", b"NOTIDS00" + data[8:]):
        with pytest.raises(ValueError):
            IdStore.read(io.BytesIO(damaged))


def test_replay_snapshots_carry_the_identities_and_a_resumed_replay_still_knows_them(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    records = [*BASE, fill("early", "u", "buy", "1", "50000", ts=T0 + 1), fill("e2", "v", "sell", "1", "50000",
                                                                               ts=T0 + 1),
               *busy(T0 + MINUTE, 40), fill("early", "u", "buy", "1", "50000", ts=T0 + 1),
               transfer("d-u", "u", "7", ts=T0 + 40 * MINUTE)]
    journal.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    assert cli(["replay", str(journal), "--out", str(tmp_path / "whole"), "--snapshot-every", "20"]) == 0
    snapshots = sorted((tmp_path / "whole" / "snapshots").glob("*.json"))
    assert snapshots and all(path.with_suffix(".ids").is_file() for path in snapshots)
    assert cli(["replay", str(journal), "--out", str(tmp_path / "resumed"), "--from-snapshot",
                str(snapshots[0])]) == 0
    whole, resumed = (orjson.loads((tmp_path / name / "summary.json").read_bytes()) for name in ("whole", "resumed"))
    # (`adl` sums the rounds of the replay that wrote the summary: the resumed one's own, design §11.4)
    assert {**whole, "adl": None} == {k: v for k, v in {**resumed, "adl": None}.items() if k != "from_snapshot"}
    assert (whole["duplicates"], whole["conflicting_duplicates"], whole["rejected"]) == (1, 1, 1)
    dead = [orjson.loads(line) for line in (tmp_path / "whole" / "dead-letter.jsonl").read_bytes().splitlines()]
    assert [(d["line"], d["kind"]) for d in dead] == [(len(records), "conflicting_duplicate")]


def test_the_vectors_of_the_design_document() -> None:
    """docs/design.md §4.1 states these digests for a second engine to check itself against."""
    liquidation_line = (b'{"type":"liquidation","ts":1760140860100,"liquidation_id":"liq-iso","account_id":"iso",'
                        b'"symbol":"BTCUSDT","qty":"1.0","mark_price":"108200","executions":[]}')
    record = decode_record(liquidation_line)
    assert orjson.dumps(content_document(record), default=str, option=orjson.OPT_SORT_KEYS) == (
        b'{"account_id":"iso","liquidation_id":"liq-iso","mark_price":"108200","qty":"1.0","symbol":"BTCUSDT",'
        b'"ts":1760140860100,"type":"liquidation"}')  # 1.0 until canonical_json writes it as §9.5 text: "1"
    assert (key_digest(identity(record) or "").hex(), content_digest(record).hex()) == (
        "04fd283a50e4ee7be09771f92471f478", "1100a3508c595ff6")
    funding_record = decode_record(b'{"type":"funding","ts":1760169600000,"symbol":"BTCUSDT","rate":"0.0001",'
                                   b'"mark_price":"108000"}')
    assert (key_digest(identity(funding_record) or "").hex(), content_digest(funding_record).hex()) == (
        "f515a5751b5c36f73149716547327148", "e424f27826fb8ac0")


def test_a_copied_store_shares_its_runs_and_holds_on_its_own() -> None:
    """backstop explain deep-copies the engine to look ahead."""
    import copy

    store = IdStore()
    keys = _keys(idstore.RECENT_LIMIT + 1)
    for seq, key in enumerate(keys, start=1):
        store.add(key, bytes(8), seq)
    twin = copy.deepcopy(store)
    twin.add(b"x" * 16, bytes(8), 10**6)
    assert twin.held(keys[0]) == store.held(keys[0]) == (bytes(8), 1)
    assert store.held(b"x" * 16) is None and len(twin) == len(store) + 1

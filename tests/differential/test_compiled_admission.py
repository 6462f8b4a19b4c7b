"""Admission (docs/design.md §4.1) in both engines, through `backstop replay`: duplicates identical and conflicting,
marks and definitions equal to the last of their subject, records late, ahead and far ahead, stale marks and
fundings, every output file byte-identical (snapshots and their identity files too); a snapshot written by either
engine resumes in either, and a damaged identity file is refused alike. Hypothesis journals with outliers and
identities sent again (tests/property/strategies.py's event-time strategies) replay alike.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backstop.core.hashing import canonical_json
from backstop.core.ordering import MAX_AHEAD_MS, MAX_LATENESS_MS
from backstop.engines import ENGINES, EngineName
from backstop.entrypoints.replay import ReplayError
from differential.alike import assert_same, run
from property.strategies import SYMBOLS, journals, outlier, outlier_kinds, timed
from scenario import fill, fund, funding, instrument, liquidation, mark, transfer

T0 = 1_900_000_000_000
MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
SETUP = [fund(ts=T0), instrument(tick="0.1", lot="0.001", ts=T0), transfer("seed", "fund:MAIN", "100000", ts=T0),
         *(transfer(f"d-{a}", a, "10000", ts=T0) for a in "uvw")]
OPEN = [fill("open-u", "u", "buy", "0.02", "50000", mode="isolated", leverage="50", ts=T0 + 1),
        fill("open-v", "v", "sell", "0.01", "50000", ts=T0 + 1),
        fill("open-w", "w", "sell", "0.01", "50000", ts=T0 + 1)]
LATER = T0 + 31 * MINUTE


def admission_journal() -> list[dict[str, Any]]:
    """Every rule of §4.1 at least once, each refused record among valid ones."""
    busy = [mark(str(50000 - m), ts=T0 + m * MINUTE) for m in range(1, 32)]  # event time moves on 31 minutes
    return [
        *SETUP, *OPEN,
        liquidation("liq-S", "u", "0.001", "49000", ts=T0 + 2),  # placed first
        liquidation("liq-S", "u", "0.019", "49000", ts=T0 + 2),  # the real one reuses its id: conflicting
        *busy,
        fill("open-v", "v", "sell", "0.01", "50000", ts=T0 + 1),  # 30 minutes later, identical: a duplicate
        {**fill("open-w", "w", "sell", "0.010", "50000.0", ts=T0 + 1), "fee": "0.00"},  # spelled otherwise: too
        transfer("d-u", "u", "250", ts=LATER),  # the id again with another amount: conflicting
        funding("0.0001", "49970", ts=LATER + 1),
        funding("0.0001", "49970.0", ts=LATER + 1),  # the same funding: a duplicate
        funding("0.0002", "49970", ts=LATER + 1),  # that funding with another rate: conflicting
        funding("0.0001", "49970", ts=LATER),  # not after the last funding: stale
        busy[-1],  # the same as the last mark: a duplicate
        mark("49990", ts=LATER - 5 * MINUTE),  # older than the mark in force (ts LATER), not late: stale
        fund(ts=T0), instrument(tick="0.1", lot="0.001", ts=T0),  # definitions as they were: duplicates
        fill("ahead-1", "v", "sell", "0.001", "50000", ts=LATER + DAY),  # a day ahead
        transfer("ahead-2", "v", "1", ts=LATER + 3 * 365 * DAY),  # three years ahead
        fill("late-1", "w", "sell", "0.001", "50000", ts=LATER - MAX_LATENESS_MS - 2),  # late
        mark("50100", ts=LATER + 11 * HOUR),  # ahead within the bound: applied, and it bounds nothing yet
        mark("50010", ts=LATER + 2),  # not stale: the 11-hour mark is not reached
        fill("after-1", "v", "sell", "0.001", "50000", ts=LATER + 3),  # not late: one record cannot move the clock
        fund(ratio="0.5", ts=LATER + 2 * DAY),  # a definition is never ahead: how an operator moves time on
        fill("f-last", "w", "sell", "0.001", "50000", ts=LATER + 2 * DAY),
    ]


def write_journal(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(record) + b"\n" for record in records))
    return path


def dead_kinds(files: dict[str, bytes]) -> list[tuple[str, str]]:
    return [(letter["kind"], letter["reason"].split(":")[0])
            for letter in map(orjson.loads, files["dead-letter.jsonl"].splitlines())]


def test_every_admission_rule_decides_alike(tmp_path: Path) -> None:
    journal = write_journal(tmp_path / "journal.jsonl", admission_journal())
    reference = run(journal, tmp_path / "reference", "reference", snapshot_every=5)
    compiled = run(journal, tmp_path / "compiled", "compiled", snapshot_every=5)
    assert_same(reference, compiled)
    assert dead_kinds(reference) == [
        ("conflicting_duplicate", "conflicting_duplicate"), ("conflicting_duplicate", "conflicting_duplicate"),
        ("conflicting_duplicate", "conflicting_duplicate"), ("rejected", "stale funding"),
        ("rejected", "stale mark"), ("ahead", "ahead of the journal"), ("ahead", "ahead of the journal"),
        ("late", "late")]
    summary = orjson.loads(reference["summary.json"])
    assert (summary["duplicates"], summary["conflicting_duplicates"], summary["rejected"]) == (6, 3, 8)
    assert any(name.endswith(".ids") for name in reference)


@pytest.mark.parametrize("writer", ENGINES)
def test_a_snapshot_with_its_identities_resumes_in_either_engine(writer: EngineName, tmp_path: Path) -> None:
    journal = write_journal(tmp_path / "journal.jsonl", admission_journal())
    whole = run(journal, tmp_path / "whole", writer, snapshot_every=4)
    snapshots = sorted((tmp_path / "whole" / "snapshots").glob("*.json"))
    assert len(snapshots) >= 10
    for snapshot in snapshots[::3]:
        tails = []
        for reader in ENGINES:
            tail = run(journal, tmp_path / f"{snapshot.stem}-{reader}", reader, from_snapshot=snapshot)
            summary = orjson.loads(tail["summary.json"])
            assert summary.pop("from_snapshot")["seq"] == orjson.loads(snapshot.read_bytes())["engine"]["seq"]
            assert {**summary, "dead_letters": 0} == {**orjson.loads(whole["summary.json"]), "dead_letters": 0}
            assert tail["accounts.json"] == whole["accounts.json"]
            tails.append(tail)
        assert tails[0] == tails[1], snapshot.name


def _reseal(document: dict[str, Any]) -> bytes:
    body = {k: v for k, v in document.items() if k != "snapshot_hash"}
    return orjson.dumps({**body, "snapshot_hash": hashlib.sha256(canonical_json(body)).hexdigest()})


def _without_one_identity(ids: bytes) -> bytes:
    """The identity file with its last identity left out (still one run, sorted)."""
    count = int.from_bytes(ids[16:24], "little")
    columns = [ids[24 + 8 * count * c: 24 + 8 * count * (c + 1)][:-8] for c in range(4)]
    return ids[:16] + (count - 1).to_bytes(8, "little") + b"".join(columns)


@pytest.mark.parametrize("damage", ["one identity left out", "the file edited", "the file missing", "not one run"])
def test_a_damaged_identity_file_is_refused_alike(damage: str, tmp_path: Path) -> None:
    journal = write_journal(tmp_path / "journal.jsonl", admission_journal())
    run(journal, tmp_path / "whole", "reference", snapshot_every=10)
    snapshot = sorted((tmp_path / "whole" / "snapshots").glob("*.json"))[1]
    document = orjson.loads(snapshot.read_bytes())
    ids_path = snapshot.with_suffix(".ids")
    ids = ids_path.read_bytes()
    if damage == "one identity left out":  # a forger who named the new file in the snapshot and sealed it again
        ids = _without_one_identity(ids)
        ids_path.write_bytes(ids)
        document["ids"] = {**document["ids"], "sha256": hashlib.sha256(ids).hexdigest(),
                           "count": document["ids"]["count"] - 1}
        snapshot.write_bytes(_reseal(document))
    elif damage == "the file edited":
        ids_path.write_bytes(ids[:-1] + bytes([ids[-1] ^ 1]))
    elif damage == "the file missing":
        ids_path.unlink()
    else:
        ids = ids[:8] + (2).to_bytes(8, "little") + ids[16:]
        ids_path.write_bytes(ids)
        document["ids"] = {**document["ids"], "sha256": hashlib.sha256(ids).hexdigest()}
        snapshot.write_bytes(_reseal(document))
    messages = []
    for reader in ENGINES:
        with pytest.raises(ReplayError) as refused:
            run(journal, tmp_path / reader, reader, from_snapshot=snapshot)
        messages.append((str(refused.value), refused.value.exit_code))
    assert messages[0] == messages[1]
    expected = {"one identity left out": f"{ids_path.name} holds {document['ids']['count']} identities, the state "
                                         f"{document['ids']['count'] + 1}",
                "the file edited": f"{ids_path.name} is not the identity file it names (its SHA-256 differs)",
                "the file missing": f"cannot read {ids_path}",
                "not one run": f"{ids_path.name}: an identity file holds one run, not 2"}[damage]
    assert expected in messages[0][0] and messages[0][1] == 2


@given(journal=journals(), data=st.data())
def test_generated_journals_with_outliers_and_identities_sent_again_replay_alike(
        journal: list[dict[str, Any]], data: st.DataObject, tmp_path_factory: pytest.TempPathFactory) -> None:
    journal = data.draw(timed(journal, jitter=True))
    far = max(record["ts"] for record in journal) + MAX_AHEAD_MS + 1
    for number in range(data.draw(st.integers(0, 4))):  # outliers: far ahead, ahead within the bound, late
        at = data.draw(st.integers(0, len(journal)))
        base = journal[min(at, len(journal) - 1)]["ts"]
        ts = data.draw(st.sampled_from([far + number, base + MAX_LATENESS_MS + 1, base + 11 * HOUR,
                                        base - MAX_LATENESS_MS - 1]))
        journal.insert(at, outlier(data.draw(outlier_kinds), number, max(ts, 0), data.draw(st.sampled_from(
            sorted(SYMBOLS)))))
    for _ in range(data.draw(st.integers(0, 4))):  # identities sent again later, some with other content
        original = journal[data.draw(st.integers(0, len(journal) - 1))]
        again = dict(original)
        if data.draw(st.booleans()):
            for field in ("qty", "amount", "rate"):
                if field in again:
                    again[field] = "7" if again[field] != "7" else "8"
        journal.insert(data.draw(st.integers(journal.index(original) + 1, len(journal))), again)
    directory = tmp_path_factory.mktemp("journal")
    path = write_journal(directory / "journal.jsonl", journal)
    reference = run(path, directory / "reference", "reference", snapshot_every=9)
    compiled = run(path, directory / "compiled", "compiled", snapshot_every=9)
    assert_same(reference, compiled)
    snapshots = sorted(name for name in reference if name.endswith(".json") and name.startswith("snapshots/"))
    if snapshots:  # the other engine resumes from one of them
        snapshot = directory / "compiled" / data.draw(st.sampled_from(snapshots))
        tail = run(path, directory / "tail", "reference", from_snapshot=snapshot)
        assert_same(tail, run(path, directory / "tail-compiled", "compiled", from_snapshot=snapshot))
        summary = orjson.loads(tail["summary.json"])
        del summary["from_snapshot"]
        # `adl` sums the rounds of the replay that wrote the summary: the tail's own (design §11.4)
        assert {**summary, "dead_letters": 0, "adl": None} == {**orjson.loads(compiled["summary.json"]),
                                                                "dead_letters": 0, "adl": None}
        assert tail["accounts.json"] == compiled["accounts.json"]  # the snapshot carries the wallets at zero


def test_contract_version_2_fields_in_the_content_digest_alike(tmp_path: Path) -> None:
    """Hedge mode's position_side and an instrument's mark_tolerance count in the content when given (their
    defaults are left out, so a version-1 spelling is the same content), and a tier's omitted maint_amount is part
    of the tier (null): both engines decide alike."""
    ts = T0 + 2
    records = [
        fund(ts=T0), instrument(tick="0.1", lot="0.001", ts=T0), transfer("seed", "fund:MAIN", "100000", ts=T0),
        transfer("d-h", "h", "10000", ts=T0), transfer("d-v", "v", "10000", ts=T0),
        fill("h-long", "h", "buy", "0.01", "50000", position_side="long", ts=ts),
        fill("h-long", "h", "buy", "0.01", "50000", position_side="long", ts=ts),  # identical: a duplicate
        fill("h-long", "h", "buy", "0.01", "50000", position_side="short", ts=ts),  # the other side: conflicting
        fill("h-long", "h", "buy", "0.01", "50000", ts=ts),  # one-way spelling of it: conflicting too
        fill("v-one", "v", "sell", "0.01", "50000", ts=ts),
        fill("v-one", "v", "sell", "0.01", "50000", position_side="both", ts=ts),  # the default spelled: duplicate
        liquidation("liq-h", "h", "0.001", "49000", position_side="long", ts=ts + 1),
        liquidation("liq-h", "h", "0.001", "49000", position_side="short", ts=ts + 1),  # conflicting
        instrument("ETHUSDT", tick="0.01", lot="0.01", tiers=(("10000000", "0.01", None),), ts=ts + 2,
                   mark_tolerance="0.05"),
        instrument("ETHUSDT", tick="0.01", lot="0.01", tiers=(("10000000", "0.01", None),), ts=ts + 2,
                   mark_tolerance="0.050"),  # the same as the last of its subject: a duplicate
        instrument("ETHUSDT", tick="0.01", lot="0.01", tiers=(("10000000", "0.01", "0"),), ts=ts + 2,
                   mark_tolerance="0.05"),  # maint_amount given: other content, a redefinition
    ]
    journal = write_journal(tmp_path / "journal.jsonl", records)
    reference = run(journal, tmp_path / "reference", "reference", snapshot_every=3)
    compiled = run(journal, tmp_path / "compiled", "compiled", snapshot_every=3)
    assert_same(reference, compiled)
    assert [kind for kind, _ in dead_kinds(reference)][:3] == ["conflicting_duplicate"] * 3
    summary = orjson.loads(reference["summary.json"])
    assert (summary["duplicates"], summary["conflicting_duplicates"]) == (3, 3)

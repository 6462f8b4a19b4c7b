"""Forged snapshots: a real snapshot changed anywhere and sealed again (its state hash and snapshot hash recomputed,
as anyone can) is either resumed by both engines with the same outputs, or refused by both in one line (exit 2).
Nothing crashes, and no engine reads a state the other refuses (backstop.wire.snapshot_state)."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from backstop.core.hashing import canonical_json
from backstop.entrypoints.cli import main

ROOT = Path(__file__).resolve().parents[2]
# cross positions in two symbols, hedge mode, inverse contracts, a fund's inventory lots
EXAMPLES = ("03-cross-two-positions", "12-hedge-deleveraged-one-side", "13-inverse-isolated-liquidations",
            "05-funding-and-fund-inventory")
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.sampled_from(["0", "-0", "1", "-1", "0.5", "1e5", "NaN", "0.000000001", "9" * 30, "-" + "9" * 70, "",
                     "0.001", "-0.001", "100000", "12345.6789", "999999999999.99999999", "0.00000001", "1000",
                     "BTCUSDT", "NOPE", "u1", "fund:BTC", "long", "short", "both", "cross", "inverse", "a b", "00"]),
    st.just([]), st.just({}))


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The last snapshot of each example but one, with the journal it was taken on."""
    found = {}
    for name in EXAMPLES:
        out = tmp_path_factory.mktemp(name)
        journal = ROOT / "examples" / f"{name}.jsonl"
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["replay", str(journal), "--out", str(out / "w"), "--snapshot-every", "1"]) == 0
        found[name] = sorted((out / "w" / "snapshots").glob("*.json"))[-2]
    return found


def _nodes(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON document, the root's children first."""
    places: list[tuple[Any, ...]] = []
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        places.append((*path, key))
        places.extend(_nodes(child, (*path, key)))
    return places


def _forged(document: dict[str, Any], changes: list[tuple[tuple[Any, ...], str, Any]]) -> dict[str, Any]:
    """The document with each change made where its place still is, then sealed again as a forger would."""
    forged = json.loads(json.dumps(document))
    for place, how, value in changes:
        *parents, last = place
        container = forged["engine"]
        with contextlib.suppress(KeyError, IndexError, TypeError):  # an earlier change removed the place
            for key in parents:
                container = container[key]
            if isinstance(container, dict) != isinstance(last, str):
                continue
            _ = container[last]  # still there after the changes before
            if how == "delete":
                del container[last]
            elif how == "repeat" and isinstance(container, list):
                container.append(copy.deepcopy(container[last]))
            else:
                container[last] = copy.deepcopy(value)
    forged["state_hash"] = hashlib.sha256(canonical_json(forged["engine"])).hexdigest()
    body = {k: v for k, v in forged.items() if k != "snapshot_hash"}
    return {**body, "snapshot_hash": hashlib.sha256(canonical_json(body)).hexdigest()}


def _resume(journal: Path, snapshot: Path, out: Path, engine: str) -> tuple[int, str, dict[str, bytes]]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["replay", str(journal), "--out", str(out), "--from-snapshot", str(snapshot), "--engine", engine])
    files = {p.name: p.read_bytes() for p in sorted(out.glob("*"))} if code == 0 else {}
    return code, err.getvalue(), files


@settings(max_examples=int(os.environ.get("BACKSTOP_FORGERIES", "60")))
@given(data=st.data(), name=st.sampled_from(EXAMPLES))
def test_a_forged_snapshot_is_resumed_alike_or_refused_in_one_line_by_both_engines(
        snapshots: dict[str, Path], data: st.DataObject, name: str) -> None:
    source = snapshots[name]
    document = json.loads(source.read_text())
    change = st.tuples(st.sampled_from(_nodes(document["engine"])), st.sampled_from(["replace", "delete", "repeat"]),
                       VALUES)
    changes = data.draw(st.lists(change, min_size=1, max_size=3), label="changes")
    forged = _forged(document, changes)
    with tempfile.TemporaryDirectory() as scratch:
        snapshot = Path(scratch) / source.name
        snapshot.write_text(json.dumps(forged))
        for beside in (".ids", ".journal"):
            snapshot.with_suffix(beside).write_bytes(source.with_suffix(beside).read_bytes())
        journal = ROOT / "examples" / f"{name}.jsonl"
        reference, compiled = (_resume(journal, snapshot, Path(scratch) / engine, engine)
                               for engine in ("reference", "compiled"))
    event("resumed" if reference[0] == 0 else reference[1].partition("is corrupt: ")[2][:40])
    for code, err, _ in (reference, compiled):
        assert code in (0, 2), err
        assert code == 0 or (len(err.splitlines()) == 1 and "is corrupt: " in err), err
    assert reference[0] == compiled[0], (changes, reference[1], compiled[1])
    assert reference[2] == compiled[2], changes

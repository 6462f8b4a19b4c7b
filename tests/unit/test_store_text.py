"""What the store and the relay read of stored rows without parsing them: a journal record's key from its payload
(journal_key, beside input_key, which parses it), and a quantile block's records from the keys stored with it
(block_rows, beside the lines parsed for them)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from backstop.adapters.postgres.store import OUTBOX, block_keys, block_rows, journal_key
from backstop.core.errors import InvariantViolation
from backstop.core.hashing import canonical_json
from backstop.pipeline.topics import input_key

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.jsonl"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_the_key_read_from_a_payload_is_the_parsed_ones(path: Path) -> None:
    for line in path.read_bytes().splitlines():
        if line.strip():
            fields = orjson.loads(line)
            payload = canonical_json(fields).decode()  # as the journal stores it
            assert journal_key(fields["type"], payload) == input_key(fields["type"], fields)


def test_a_payload_whose_key_field_is_not_found_once_is_parsed() -> None:
    nested = canonical_json({"type": "fill", "account_id": "A2", "fills": [{"account_id": "B"}]}).decode()
    assert journal_key("fill", nested) == "A2"  # the name twice: parsed
    assert journal_key("fund", '{"fund_id":7,"type":"fund"}') == "7"  # not a string: parsed


BLOCK = b"".join(canonical_json(record) + b"\n" for record in (
    {"account_id": "A1", "id": "aq-5-0", "kind": "quantile", "quantile": 2, "symbol": "BTCUSDT"},
    {"capacity": "1", "id": "aq-5-1", "kind": "risk", "symbol": "ETHUSDT"},
    {"account_id": "A2", "id": "aq-6-0", "kind": "quantile", "quantile": None, "symbol": "BTCUSDT"}))


@pytest.mark.parametrize("after", [0, 10, 11, 12])
def test_a_block_read_from_its_keys_gives_what_its_lines_give(after: int) -> None:
    keys = block_keys(BLOCK).decode()
    assert keys == "A1\naq-5-0\nETHUSDT\naq-5-1\nA2\naq-6-0\n"
    from_keys = block_rows(12, 3, "t", BLOCK.decode(), after, keys)
    assert from_keys == block_rows(12, 3, "t", BLOCK.decode(), after, None)
    assert [(r.id, r.key, r.record_id, r.source) for r in from_keys] == [
        (place, key, record_id, OUTBOX) for place, key, record_id in
        ((10, "A1", "aq-5-0"), (11, "ETHUSDT", "aq-5-1"), (12, "A2", "aq-6-0")) if place > after]


def test_a_block_whose_keys_do_not_match_its_records_stops_the_relay() -> None:
    with pytest.raises(InvariantViolation, match="names 2 keys for its 3 records"):
        block_rows(12, 3, "t", BLOCK.decode(), 0, "A1\naq-5-0\nETHUSDT\naq-5-1\n")

"""Where a published record came from, read back from its headers when the relay starts (the last record of each
output partition): the relay's own records name their place; another producer's record names none."""

from __future__ import annotations

import pytest

from backstop.service.ports import (
    OUTBOX_HEADER,
    POSITION_HEADER,
    RECORD_ID_HEADER,
    Tail,
    place_in_headers,
    tail_in_headers,
)


@pytest.mark.parametrize("header", [OUTBOX_HEADER, POSITION_HEADER])
def test_a_record_of_the_relay_names_its_place(header: str) -> None:
    assert place_in_headers([(RECORD_ID_HEADER, b"r-1"), (header, b"1234")]) == (header, 1234)


@pytest.mark.parametrize("value", [b"", b"x1", b"-1", b" 12", b"1.5", "\u0661".encode(), None, b"9" * 5000,
                                   b"9" * 20])
def test_a_place_header_without_an_id_names_no_place(value: bytes | None) -> None:
    assert place_in_headers([(POSITION_HEADER, value)]) is None


def test_a_record_without_a_place_header_names_none() -> None:
    assert place_in_headers([(RECORD_ID_HEADER, b"r-1")]) is None
    assert place_in_headers(()) is None


def test_a_last_record_is_found_with_its_record_id_which_the_relay_looks_up_after_a_restore() -> None:
    assert tail_in_headers([(OUTBOX_HEADER, b"17"), (RECORD_ID_HEADER, b"q-9-A1")]) == Tail(OUTBOX_HEADER, 17, "q-9-A1")
    assert tail_in_headers([(OUTBOX_HEADER, b"17")]) == Tail(OUTBOX_HEADER, 17, None)  # no id: placed by its id
    assert tail_in_headers([(OUTBOX_HEADER, b"17"), (RECORD_ID_HEADER, b"\xff")]) == Tail(OUTBOX_HEADER, 17, None)
    assert tail_in_headers([(RECORD_ID_HEADER, b"q-9-A1")]) is None  # another producer's: no place

"""Coverage-guided fuzzing of the decoder and the engine with atheris (libFuzzer), issue #19 item 5.

Each input is either raw journal lines, applied after a small world (fund, instrument, deposits, two positions),
or the choices of tests/extremes.py's journal builder (every decimal at, inside or past its bounds, positions
pushed to the state bounds). Every record goes through decode_record and a conservation-checking Processor:
InvalidRecord and a Rejection are the only outcomes allowed besides applying; anything else raised is a crash
that libFuzzer reports with the input that caused it. After each journal the summary's ledger_sum must be "0".

    CI (scripts/test, through tests/fuzz/test_fuzz.py): a few seconds from a fixed seed
    long:  mkdir -p .local/fuzz && .venv/bin/python tests/fuzz/fuzz_engine.py .local/fuzz tests/fuzz/seeds \
               -max_total_time=3600
    replay a crash:  .venv/bin/python tests/fuzz/fuzz_engine.py crash-<sha1>
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: extremes, scenario

with atheris.instrument_imports(include=["backstop"]):
    import orjson

    from backstop.core.documents import summary
    from backstop.core.engine import Engine
    from backstop.core.processor import Processor
    from backstop.wire.decode import InvalidRecord, decode_record

from extremes import FINE, FUND_ID, build
from scenario import fill, fund, instrument, transfer

T = TypeVar("T")
WORLD = [orjson.dumps(record) for record in (
    fund(FUND_ID, ratio="1"), instrument(FINE, fund_id=FUND_ID, tick="0.00000001", lot="0.00000001"),
    transfer("seed", f"fund:{FUND_ID}", "1000000"), transfer("d0", "x0", "9999999999999999"),
    transfer("d1", "x1", "1000"), fill("o0", "x0", "buy", "2", "100", symbol=FINE, mode="isolated"),
    fill("o1", "x1", "sell", "2", "100", symbol=FINE))]


class _Bytes:
    """extremes.Chooser over the fuzzer's bytes (an exhausted input picks the first option)."""

    def __init__(self, provider: atheris.FuzzedDataProvider) -> None:
        self.provider = provider

    def pick(self, options: Sequence[T]) -> T:
        return options[self.provider.ConsumeIntInRange(0, len(options) - 1)]

    def integer(self, low: int, high: int) -> int:
        return int(self.provider.ConsumeIntInRange(low, high))


def apply(lines: Sequence[bytes]) -> Processor:
    processor = Processor(Engine(check_conservation=True))
    for raw in lines:
        try:
            record = decode_record(raw)
        except InvalidRecord:
            continue
        processor.process(record)  # Applied, Duplicate or Rejection; anything raised is a crash
    return processor


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    if provider.ConsumeIntInRange(0, 3) == 0:
        processor = apply([*WORLD, *provider.ConsumeBytes(provider.remaining_bytes()).split(b"\n")])
    else:  # the builder applies what it builds, through a conservation-checking processor
        processor = build(_Bytes(provider), provider.ConsumeIntInRange(1, 40))[1]
    total = summary(processor)["ledger_sum"]
    if total != "0":
        raise AssertionError(f"ledger_sum {total}")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

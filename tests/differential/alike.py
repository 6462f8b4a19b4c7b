"""Replays of one journal by both engines, and their output directories compared file by file; journal lines as
consumed Kafka records."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from backstop.engines import Consumed, EngineName
from backstop.entrypoints.replay import ReplayOptions, replay
from backstop.pipeline.topics import TopicNames

TOPICS = TopicNames("t.")


def outputs(directory: Path) -> dict[str, bytes]:
    return {str(path.relative_to(directory)): path.read_bytes() for path in sorted(directory.rglob("*"))
            if path.is_file()}


def run(journal: Path, out: Path, engine: EngineName, **options: object) -> dict[str, bytes]:
    replay(ReplayOptions(journal=journal, out=out, engine=engine, **options))  # type: ignore[arg-type]
    return outputs(out)


def assert_same(reference: dict[str, bytes], compiled: dict[str, bytes]) -> None:
    assert sorted(reference) == sorted(compiled)
    for name in reference:
        if compiled[name] != reference[name]:
            if name.endswith(".ids"):  # binary: the identity files of snapshots
                pytest.fail(f"{name}: {len(reference[name])} bytes by the reference, {len(compiled[name])} compiled")
            pairs = zip(reference[name].splitlines(), compiled[name].splitlines(), strict=False)
            number, (expected, got) = next(((n, pair) for n, pair in enumerate(pairs, 1) if pair[0] != pair[1]),
                                           (0, (b"(one is longer)", b"")))
            context = reference[name].splitlines()[max(0, number - 8):number]
            pytest.fail(f"{name} line {number}: reference {expected!r}, compiled {got!r}; before it: {context}")


def consumed(lines: list[bytes], *, keep_type: bool = False) -> list[Consumed]:
    """Each line on its type's topic, offsets counting up per topic."""
    offsets: dict[str, int] = {}
    batch: list[Consumed] = []
    for line in lines:
        document = orjson.loads(line)
        topic = TOPICS.input(document["type"])
        if not keep_type:
            del document["type"]
        offsets[topic] = offsets.get(topic, -1) + 1
        batch.append((topic, 0, offsets[topic], orjson.dumps(document)))
    return batch

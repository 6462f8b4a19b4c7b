"""Version-1 journals replay to the hashes they had before contract version 2 (docs/design.md §7): the head and
state hashes of every version-1 example, as the engine of commit 68b5582 (before issue 21) computed them, by both
engines."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from backstop.entrypoints.replay import ReplayOptions, replay

EXAMPLES = Path(__file__).parents[2] / "examples"
BEFORE_VERSION_2 = {  # example -> (head hash, state hash)
    "01-isolated-liquidation-surplus": ("eb87cac3f458c36ff4518f24d534197a5d8c9e6f8931be85d365942cc655e3fe",
                                        "5781e74534b7db236b9646637f56c6e6d9ddf82fadaa7c0f9c5588ec8fe83dbd"),
    "02-adl-walks-queue": ("fb4e2caafbb5589c50572885bc3d1a6e78e3fbf7ff6dcb1c62754d4679d3a492",
                           "9ae926542de135ac46ed900012c632f07fa21111fbcd204185c16cf5774a6c9e"),
    "03-cross-two-positions": ("1e8e992e51f7f95dad25e294b5b3af4886200025c8b035daf97b85399c3e5cec",
                               "b51db19284b85cf50d9b40e73a6ac71b5692b7be1b9a3938e3e69b6c203a28f4"),
    "04-surplus-trader": ("69e4038e6dd78e9ddf1fff3a36ad63df9b4dd7e7ad9871ddf78ec0aa19013ea4",
                          "7f87174e033b0fbc6965b519249d9eae3c81e076d5ee2aea7177746353917529"),
    "05-funding-and-fund-inventory": ("c7af858ada32c92dd7631c717a71dc14adf24282b99824a1a03b59722c1d0796",
                                      "c2369696099c5a19d04a18ce5d7b07974384f4fc6fb7cc12056550b4c7e2ec91"),
    "06-bad-debt": ("503f485b7ac61e57738aab63c4fcc83425a2ca5508630cbdd1db1cbf1e742712",
                    "31f4f33c9d98751fecd6cce06fe4eec13a60819247439402c803081cea0c673e"),
}


@pytest.mark.parametrize("engine", ["reference", "compiled"])
@pytest.mark.parametrize("example", sorted(BEFORE_VERSION_2))
def test_version_1_examples_keep_their_hashes(example: str, engine: str, tmp_path: Path) -> None:
    replay(ReplayOptions(journal=EXAMPLES / f"{example}.jsonl", out=tmp_path, engine=engine))  # type: ignore[arg-type]
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert (summary["head_hash"], summary["state_hash"]) == BEFORE_VERSION_2[example]

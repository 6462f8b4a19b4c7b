"""Version-1 journals replay to the hashes they had before contract version 2 (docs/design.md §7), by both engines:
the head hashes of every version-1 example as the engine of commit 68b5582 (before issue 21) computed them, and the
state hashes as state document version 3 (admission, docs/design.md §4.1: the clocks and the held identities in the
document) computed them before hedge mode was merged (branch h-admit at 99841e9)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from backstop.entrypoints.replay import ReplayOptions, replay

EXAMPLES = Path(__file__).parents[2] / "examples"
BEFORE_VERSION_2 = {  # example -> (head hash, state hash)
    "01-isolated-liquidation-surplus": ("eb87cac3f458c36ff4518f24d534197a5d8c9e6f8931be85d365942cc655e3fe",
                                        "3efa11ec8e024d6e7ea081fc26d7a4d7522e6091ec391d92750d93796552d134"),
    "02-adl-walks-queue": ("fb4e2caafbb5589c50572885bc3d1a6e78e3fbf7ff6dcb1c62754d4679d3a492",
                           "1894702034ca29807c08d85531e75f9516e4bdccda7d8b4e353e6643e10b986b"),
    "03-cross-two-positions": ("1e8e992e51f7f95dad25e294b5b3af4886200025c8b035daf97b85399c3e5cec",
                               "40b75e80d78fa4e93311da1919efdb2e5494a24050b362b16a4e25d358c6b2f8"),
    "04-surplus-trader": ("69e4038e6dd78e9ddf1fff3a36ad63df9b4dd7e7ad9871ddf78ec0aa19013ea4",
                          "9c6b52b08f4e04a749f4f18014cbd9788b6b214dba575f6c47f17da737977c67"),
    "05-funding-and-fund-inventory": ("c7af858ada32c92dd7631c717a71dc14adf24282b99824a1a03b59722c1d0796",
                                      "3ed37c179083c5c37a4415caa3270e0ba9bbfaf092128f4d6f13406825e15c10"),
    "06-bad-debt": ("503f485b7ac61e57738aab63c4fcc83425a2ca5508630cbdd1db1cbf1e742712",
                    "afcf592ab2900236ac0bf455b98ccf1a4040f8e5ac405608af67eeb3264c5531"),
}


@pytest.mark.parametrize("engine", ["reference", "compiled"])
@pytest.mark.parametrize("example", sorted(BEFORE_VERSION_2))
def test_version_1_examples_keep_their_hashes(example: str, engine: str, tmp_path: Path) -> None:
    replay(ReplayOptions(journal=EXAMPLES / f"{example}.jsonl", out=tmp_path, engine=engine))  # type: ignore[arg-type]
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert (summary["head_hash"], summary["state_hash"]) == BEFORE_VERSION_2[example]

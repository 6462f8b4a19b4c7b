"""Version-1 journals replay to pinned hashes (docs/design.md §7): the head and state hashes of every version-1
example, by both engines. They are those of commit 68b5582 (before issue 21) but for one move, when the whole ledger
was written (docs/design.md §9.7: a fund-ledger entry of a transfer names its transfer_id, and the state holds the
postings head and the ADL quantiles published); hedge mode and contract version 2 moved none of them."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from backstop.entrypoints.replay import ReplayOptions, replay

EXAMPLES = Path(__file__).parents[2] / "examples"
BEFORE_VERSION_2 = {  # example -> (head hash, state hash), quantile points off (replay's default)
    "01-isolated-liquidation-surplus": ("c304a3fed80dab56a1c62fbdae970cd678c530d3694fd0c4cc8fe7e2f9be6c29",
                                        "0b1ed18725586b3e281289d22ea05bbc60ca99e6f80cf296cb275346b833927e"),
    "02-adl-walks-queue": ("ccd6cffbe0ad0397dbaa3c2f7586f60b1327bee5397d910275d0ea551d650e67",
                           "2721f83d8090aa265847796e181219d97ad0aba19c646f13fc44392bba58b849"),
    "03-cross-two-positions": ("92094b70197371da4fc7728c9f81f97b8807e56452c9099a6d2edd59123bc6ce",
                               "30faed8aeb5a9304077f43120ff2404a36bcc7f21504b9018d9931dc675b9040"),
    "04-surplus-trader": ("b2d1efaf8329dedbc36d5e2cec8e239485fbe1e3e41be0843b09ae9571706176",
                          "ea6a3356e39ded036ae662da5785da4e6912e754e10d6e29e14ba24502606f96"),
    "05-funding-and-fund-inventory": ("2e7fd9f358bebec671fc933b91186fe32dec04d659a01b872c0effed2e7c14e4",
                                      "09436428f9f855fc6fd2a20c7af7228f1170c595781f9eb2df9eeff28739bc50"),
    "06-bad-debt": ("2ceaa823ebbf08790e7e6076be059d5b1851a60dd81d95ed90482c3a045f7c45",
                    "df06a0da96e2010b8080bf65165cbf005a058a8a6c9506743003e80292d3a17a"),
}


@pytest.mark.parametrize("engine", ["reference", "compiled"])
@pytest.mark.parametrize("example", sorted(BEFORE_VERSION_2))
def test_version_1_examples_keep_their_hashes(example: str, engine: str, tmp_path: Path) -> None:
    replay(ReplayOptions(journal=EXAMPLES / f"{example}.jsonl", out=tmp_path, engine=engine))  # type: ignore[arg-type]
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert (summary["head_hash"], summary["state_hash"]) == BEFORE_VERSION_2[example]

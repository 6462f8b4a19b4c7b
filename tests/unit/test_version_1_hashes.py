"""Version-1 journals replay to pinned hashes (docs/design.md §7), by both engines. The head hashes are those of
commit 68b5582 (before issue 21) but for one move when the whole ledger was written (docs/design.md §9.7: a
fund-ledger entry of a transfer names its transfer_id); the state hashes are those of state document version 4
(admission's clocks and held identities, docs/design.md §4.1; the postings head, the newest ts and the ADL quantiles
published, §10), with quantile points off. Hedge mode and contract version 2 moved none of them."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from backstop.entrypoints.replay import ReplayOptions, replay

EXAMPLES = Path(__file__).parents[2] / "examples"
BEFORE_VERSION_2 = {  # example -> (head hash, state hash), quantile points off (replay's default)
    "01-isolated-liquidation-surplus": ("c304a3fed80dab56a1c62fbdae970cd678c530d3694fd0c4cc8fe7e2f9be6c29",
                                        "9f88a158fad89fa827d400cc5cc9963baa6ef9d31b6b771c9a8dc1e9c5525b96"),
    "02-adl-walks-queue": ("ccd6cffbe0ad0397dbaa3c2f7586f60b1327bee5397d910275d0ea551d650e67",
                           "a1c93df3d52e1aceb1526e1a66e2c6cbad5d11afe934f4cf2c3b67c33e383c7f"),
    "03-cross-two-positions": ("92094b70197371da4fc7728c9f81f97b8807e56452c9099a6d2edd59123bc6ce",
                               "d3cde9b239ea58960053062d33999163ac689c83c0ea9d627fa4d536aa82a0a2"),
    "04-surplus-trader": ("b2d1efaf8329dedbc36d5e2cec8e239485fbe1e3e41be0843b09ae9571706176",
                          "e5f1ace8fd622fd9e5c81c8820627503dd432244b91811976cfbb2ae1705bcda"),
    "05-funding-and-fund-inventory": ("2e7fd9f358bebec671fc933b91186fe32dec04d659a01b872c0effed2e7c14e4",
                                      "dacb31be18cc4478aaaafec06f369f147f78de4f08d06bbe1a580730a2e92edf"),
    "06-bad-debt": ("2ceaa823ebbf08790e7e6076be059d5b1851a60dd81d95ed90482c3a045f7c45",
                    "ce792ce7f7c2cd9f496012d78fb48b35da6661371d84df98fa5a3c61320d574c"),
}


@pytest.mark.parametrize("engine", ["reference", "compiled"])
@pytest.mark.parametrize("example", sorted(BEFORE_VERSION_2))
def test_version_1_examples_keep_their_hashes(example: str, engine: str, tmp_path: Path) -> None:
    replay(ReplayOptions(journal=EXAMPLES / f"{example}.jsonl", out=tmp_path, engine=engine))  # type: ignore[arg-type]
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert (summary["head_hash"], summary["state_hash"]) == BEFORE_VERSION_2[example]

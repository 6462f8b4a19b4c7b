"""Options shared by the test directories."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", default=False,
                     help="long campaigns: the fault campaign runs 1,000 faults (BACKSTOP_FAULTS overrides), the "
                          "simulator 100,000 seeds (BACKSTOP_SIM_SEEDS overrides)")

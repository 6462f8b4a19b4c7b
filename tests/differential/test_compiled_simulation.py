"""Simulation mode and the scenario runs (`whatif`, `demo`) on both engines: every file of a run byte-identical
(its journal with the decided liquidations, the outputs, summary, accounts, scenario), so the head hash and the state
hash too, and the same metrics; and the large journals through `backstop replay` on both.

Scenarios: no simulation, simulation with and without slippage, partial liquidations on and off, a market that takes
part of each order, under every ADL policy; on every example, on hypothesis-generated journals, and on the demo's
cascade (the 10 Oct 2025 path), where the simulation decides hundreds of liquidations and the ADL rounds that follow.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backstop.adapters.journal_file import journal_bytes
from backstop.core.adl_policy import PRESETS
from backstop.demo_journal import journal as demo_journal
from backstop.engines import ENGINES, EngineName
from backstop.entrypoints.demo import DEMO_SCENARIO, run_demo
from backstop.scenarios import AdlSection, Scenario, SimulationSection, read_records, run_scenario
from backstop.wire.decode import InvalidRecord, decode_model
from backstop.wire.inputs import AnyRecord
from differential.alike import assert_same, outputs, run
from property.strategies import journals

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.jsonl"))
POLICIES = sorted(PRESETS)
SIMULATIONS = {
    "at-the-mark": SimulationSection(),
    "slippage": SimulationSection(slippage_bps="25"),
    "whole": SimulationSection(slippage_bps="10", partial=False),
    "market-fill": SimulationSection(slippage_bps="12.5", market_fill="0.7"),
    "extreme": SimulationSection(slippage_bps="9999.99", market_fill="0.00000001"),
}
# each ADL policy with one of the simulations, so every policy and every simulation is run
SCENARIOS = {"no-simulation": Scenario(), **{name: Scenario(simulation=simulation)
                                             for name, simulation in SIMULATIONS.items()},
             **{f"{policy}-{name}": Scenario(simulation=simulation, adl=AdlSection(policy=policy))  # type: ignore[arg-type]
                for policy, (name, simulation) in zip(POLICIES, [*SIMULATIONS.items()] * 2, strict=False)}}


def both(records: list[tuple[int, AnyRecord]], scenario: Scenario, tmp_path: Path) -> dict[str, bytes]:
    """The scenario run on each engine; every file and the metrics alike. The compiled run's files."""
    runs: dict[EngineName, tuple[dict[str, bytes], dict[str, Any]]] = {}
    for engine in ENGINES:
        metrics, _ = run_scenario(records, scenario, tmp_path / engine, engine=engine)
        runs[engine] = outputs(tmp_path / engine), metrics.as_json()
    assert_same(runs["reference"][0], runs["compiled"][0])
    assert runs["reference"][1] == runs["compiled"][1]
    return runs["compiled"][0]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=str)
@pytest.mark.parametrize("journal", EXAMPLES, ids=lambda path: path.stem)
def test_examples_run_alike(journal: Path, scenario: str, tmp_path: Path) -> None:
    both(read_records(journal), SCENARIOS[scenario], tmp_path)


def _records(lines: list[dict[str, object]]) -> list[tuple[int, AnyRecord]]:
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append((number, decode_model(orjson.dumps(line))))
        except InvalidRecord:
            continue
    return records


@settings(max_examples=60)
@given(lines=journals(max_events=80), scenario=st.sampled_from(sorted(SCENARIOS)))
def test_generated_journals_run_alike(lines: list[dict[str, object]], scenario: str, tmp_path_factory:
                                      pytest.TempPathFactory) -> None:
    both(_records(lines), SCENARIOS[scenario], tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def cascade(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[int, AnyRecord]]:
    path = tmp_path_factory.mktemp("demo") / "input.jsonl"
    path.write_bytes(journal_bytes(demo_journal(seed=11, accounts=400, fund_balance="150000")))
    return read_records(path)


@pytest.mark.parametrize("policy", POLICIES)
def test_the_demo_cascade_runs_alike_under_every_policy(cascade: list[tuple[int, AnyRecord]], policy: str,
                                                        tmp_path: Path) -> None:
    scenario = DEMO_SCENARIO.model_copy(update={"adl": AdlSection(policy=policy)})  # type: ignore[arg-type]
    files = both(cascade, scenario, tmp_path)
    summary = orjson.loads(files["summary.json"])
    assert files["journal.jsonl"].count(b'"liquidation_id":"sim-') > 100
    assert summary["adl_events"] > 0 or policy == "socialized"  # it takes from profits without closing positions


@pytest.mark.parametrize("name", ["whole", "market-fill"])
def test_the_demo_cascade_runs_alike_under_other_simulations(cascade: list[tuple[int, AnyRecord]], name: str,
                                                             tmp_path: Path) -> None:
    files = both(cascade, Scenario(simulation=SIMULATIONS[name]), tmp_path)
    assert files["journal.jsonl"].count(b'"liquidation_id":"sim-') > 100


def test_backstop_demo_runs_alike(tmp_path: Path) -> None:
    """`backstop demo` on each engine: every file of it (its input, run, journal, policies and their comparison) the
    same; the input and the run's journal replay alike too."""
    results = {}
    for engine in ENGINES:
        results[engine] = run_demo(tmp_path / engine, seed=5, accounts=300, report=False, progress=False,
                                   engine=engine)
    assert_same(outputs(tmp_path / "reference"), outputs(tmp_path / "compiled"))
    assert results["reference"]["metrics"] == results["compiled"]["metrics"]
    assert results["compiled"]["metrics"]["liquidations"] > 100
    for name in ("input.jsonl", "journal.jsonl"):
        journal = tmp_path / "compiled" / name
        assert_same(run(journal, tmp_path / f"{name}-reference", "reference"),
                    run(journal, tmp_path / f"{name}-compiled", "compiled"))


def test_a_large_generated_journal_replays_alike(tmp_path: Path) -> None:
    """The benchmark generator's journal (seed 42), 200,000 records: every output file, head and state hash."""
    sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
    from journal_gen import generate

    journal = tmp_path / "journal.jsonl"
    assert generate(journal, events=200_000, seed=42) == 200_000
    reference = run(journal, tmp_path / "reference", "reference")
    compiled = run(journal, tmp_path / "compiled", "compiled")
    assert_same(reference, compiled)
    summary = orjson.loads(compiled["summary.json"])
    assert summary["events_applied"] > 190_000 and summary["adl_events"] > 0

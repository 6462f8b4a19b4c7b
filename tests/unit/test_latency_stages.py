"""benchmarks/latency.py --trace joins the service's trace lines (backstop.service.trace) to its probes: the batch
that held a probe's liquidation (by input partition and offset), the first relay round whose ADL events reached the
probe's ADL event position; each stage is the difference of two stamps."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import orjson

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def latency_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("latency_benchmark", BENCHMARKS / "latency.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("latency_benchmark", module)
    spec.loader.exec_module(module)
    return module


def line(message: str, **fields: object) -> bytes:
    return orjson.dumps({"ts": "2026-12-05T00:00:00.000+00:00", "level": "INFO", "logger": "backstop.trace",
                         "message": message, **fields})


def test_a_probe_is_joined_to_its_batch_and_its_relay_round(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    log.write_bytes(b"\n".join([
        b'{"logger": "backstop.ledger", "message": "batch"}',
        line("batch stages", records=3, buffered=0, liquidations=[[1, 7, 10.002, 10.004]], closed=10.005,
             applied=10.006, projected=10.0065, first_seq=4, seq=6, commit_start=10.007, committed=10.010),
        line("relay stages", woken=10.010, read=10.0105, read_done=10.011, acked=10.013, marked=10.014, rows=2,
             up_to={"journal": 3}),
        line("relay stages", woken=10.010, read=10.0106, read_done=10.012, acked=10.015, marked=10.016, rows=9,
             up_to={"journal": 6, "adl_events": 2}),
    ]) + b"\n")
    probes = {"probe-liq-0": {"partition": 1, "offset": 7, "sent": 10.000, "position": 2, "received": 10.016},
              "probe-liq-1": {"partition": 0, "offset": 3, "sent": 10.000, "position": 3, "received": 10.020}}
    stages = latency_module().stages(probes, log)
    assert stages["probes_traced"] == 1  # the second probe is in no traced batch
    assert stages["batch_records"] == {"p50": 3, "p99": 3, "max": 3}
    spans = {name[:-3]: values["p50_ms"] for name, values in stages.items() if name.endswith("_ms")}
    assert spans == {"kafka_in": 2.0, "merge": 2.0, "gather": 1.0, "apply": 1.0, "project": 0.5, "commit_wait": 0.5,
                     "commit": 3.0, "relay_wait": 0.6, "relay_read": 1.4, "publish": 3.0, "kafka_out": 1.0}

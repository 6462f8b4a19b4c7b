"""No tracebacks: every command, on each corrupt input seen in issue 19 (and a BOM), prints one line that says what
is wrong and exits 2. (A database that does not exist and a server that is down: tests/integration/test_cli_stores.)"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from backstop.adapters.kafka.tools import route
from backstop.core.hashing import canonical_json, chain_hash
from backstop.entrypoints.cli import main

EXAMPLES = Path(__file__).parents[2] / "examples"
EXAMPLE = EXAMPLES / "05-funding-and-fund-inventory.jsonl"


def one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Runs the command; it must exit 2 with exactly one line on stderr (no traceback), which is returned."""
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _ledger(out: Path) -> list[dict[str, object]]:
    return [orjson.loads(x) for x in (out / "fund-ledger.jsonl").read_bytes().splitlines()]


def _write_ledger(out: Path, records: list[object]) -> None:
    (out / "fund-ledger.jsonl").write_bytes(b"".join(canonical_json(r) + b"\n" for r in records))


def _rechained(records: list[dict[str, object]]) -> list[dict[str, object]]:
    previous = "0" * 64
    for record in records:
        record["prev_hash"] = previous
        record["hash"] = previous = chain_hash({k: v for k, v in record.items() if k != "hash"})
    return records


def _list_line(out: Path) -> None:
    _write_ledger(out, [[1, 2], *_ledger(out)[1:]])


def _abc_amount(out: Path) -> None:
    records = _ledger(out)
    records[1]["amount"] = "abc"
    _write_ledger(out, _rechained(records))


def _no_fund_id(out: Path) -> None:
    records = _ledger(out)
    del records[0]["fund_id"]
    _write_ledger(out, _rechained(records))


def _summary_list(out: Path) -> None:
    (out / "summary.json").write_text("[]")


def _fund_without_balance(out: Path) -> None:
    summary = json.loads((out / "summary.json").read_text())
    del summary["funds"]["MAIN"]["balance"]
    (out / "summary.json").write_text(json.dumps(summary))


def _repeated_amount(out: Path) -> None:
    lines = (out / "fund-ledger.jsonl").read_bytes().split(b"\n")
    lines[0] = lines[0].replace(b'"amount":', b'"amount":"999","amount":', 1)  # the chain covers the later value
    (out / "fund-ledger.jsonl").write_bytes(b"\n".join(lines))


def _balance_past_the_bound(out: Path) -> None:
    summary = json.loads((out / "summary.json").read_text())
    summary["funds"]["MAIN"]["balance"] = "9" * 200
    (out / "summary.json").write_text(json.dumps(summary))


def _repeated_summary_key(out: Path) -> None:
    text = (out / "summary.json").read_text()
    (out / "summary.json").write_text(text.replace('"duplicates":', '"duplicates": 7, "duplicates":', 1))


CORRUPT_OUTPUTS: list[tuple[Callable[[Path], None], str]] = [
    (_repeated_amount, 'fund-ledger.jsonl line 1: key "amount" repeats in an object'),
    (_balance_past_the_bound, "summary.json: funds.MAIN.balance: not an amount as backstop writes one"),
    (_repeated_summary_key, 'summary.json: key "duplicates" repeats in an object'),
    (_list_line, "fund-ledger.jsonl line 1: not a JSON object"),
    (_abc_amount, "fund-ledger.jsonl line 2: amount: not an amount as backstop writes one (a plain decimal below "
                  "10^69 at 1e-8): 'abc'"),
    (_no_fund_id, "fund-ledger.jsonl line 1: fund_id: Field required"),
    (_summary_list, "summary.json: not a JSON object"),
    (_fund_without_balance, "summary.json: funds.MAIN.balance: Field required"),
]


@pytest.mark.parametrize("command", [["audit", "verify"], ["reconcile"], ["statement", "--fund", "MAIN"]],
                         ids=lambda c: c[0])
@pytest.mark.parametrize(("damage", "message"), CORRUPT_OUTPUTS, ids=lambda d: getattr(d, "__name__", ""))
def test_a_corrupt_output_directory_is_named_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: list[str],
        damage: Callable[[Path], None], message: str) -> None:
    out = tmp_path / "out"
    assert main(["replay", str(EXAMPLE), "--out", str(out)]) == 0
    damage(out)
    monkeypatch.chdir(tmp_path)
    assert message in one_line_error(capsys, [*command, str(out)])
    assert not list(tmp_path.glob("statement-*"))


@pytest.mark.parametrize("accounts", [b"{", b"[]", b'{"u1": {}, "u1": {}}'])
def test_a_corrupt_accounts_file_is_named_without_the_journal_too(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], accounts: bytes) -> None:
    out = tmp_path / "out"
    assert main(["replay", str(EXAMPLE), "--out", str(out)]) == 0
    (out / "accounts.json").write_bytes(accounts)
    assert f"{out / 'accounts.json'}" in one_line_error(capsys, ["audit", "verify", str(out)])


def test_a_missing_accounts_file_is_named_with_its_directory(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["replay", str(EXAMPLE), "--out", str(out)]) == 0
    (out / "accounts.json").unlink()
    line = one_line_error(capsys, ["audit", "verify", str(out), "--journal", str(EXAMPLE)])
    assert f"cannot read {out / 'accounts.json'}" in line, line


@pytest.fixture
def replayed(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    assert main(["replay", str(EXAMPLE), "--out", str(out)]) == 0
    return out


def test_a_statement_into_a_missing_directory(replayed: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(capsys, ["statement", str(replayed), "--fund", "MAIN", "--out",
                                   str(tmp_path / "nope" / "s.csv")])
    assert f"directory {tmp_path / 'nope'} does not exist" in line


def test_a_parquet_statement_onto_a_directory(replayed: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(capsys, ["statement", str(replayed), "--fund", "MAIN", "--format", "parquet", "--out",
                                   str(tmp_path)])
    assert f"output file {tmp_path} is a directory" in line


def test_a_fund_with_a_slash(replayed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert "no fund a/b in" in one_line_error(capsys, ["statement", str(replayed), "--fund", "a/b"])
    # a fund id may hold a slash: the default file name escapes it
    journal = tmp_path / "slash.jsonl"
    journal.write_text(EXAMPLE.read_text().replace('"MAIN"', '"a/b"').replace("fund:MAIN", "fund:a/b"))
    assert main(["replay", str(journal), "--out", str(tmp_path / "slash")]) == 0
    assert main(["statement", str(tmp_path / "slash"), "--fund", "a/b"]) == 0
    assert (tmp_path / "statement-a%2Fb.csv").read_text().startswith("id,seq,ts,fund_id")


def _whatif(tmp_path: Path, toml: str) -> list[str]:
    params = tmp_path / "params.toml"
    params.write_text(toml)
    return ["whatif", str(EXAMPLES / "02-adl-walks-queue.jsonl"), "--params", str(params), "--out",
            str(tmp_path / "w")]


@pytest.mark.parametrize(("toml", "message"), [
    ('[alternative.simulation]\nmarket_fill = "99999999999999999999"\n',
     "alternative.simulation.market_fill: must be at most 1"),
    ('[alternative.simulation]\nmarket_fill = "1.5"\n', "alternative.simulation.market_fill: must be at most 1"),
    ('[alternative.simulation]\npartial = "yes"\n', "alternative.simulation.partial: Input should be a valid boolean"),
    ("[alternative.adl]\nwindow_hours = true\n", "alternative.adl.window_hours: Input should be a valid integer"),
    ('[alternative.simulation]\nslippage_bps = "10000"\n', "alternative.simulation.slippage_bps: must be below 10000"),
    ('[alternative.funds.BNB]\nbalance_scale = 1e18\n', "alternative.funds.BNB.balance_scale: a decimal must be a "
                                                        "JSON string"),
    ('[alternative.funds.BNB]\nbalance_scale = "1000000000000000000"\n',
     "the alternative scenario's funds.BNB.balance_scale makes journal line 3 a record the wire contract refuses: "
     "transfer.amount: "),
    ("[alternative\n", "bad parameter file"),
    ('[alternative.adl]\nfloor = "0.000000001"\n', "the fund floor must have at most 8 decimals"),
    ('[alternative.funds.NOPE]\nsurplus = "trader"\n',
     "the alternative scenario changes fund NOPE, which no fund record of the journal has (its funds: BNB)"),
    ('[baseline.instruments.NOPE]\nliquidation_fee_rate = "0.01"\n',
     "the baseline scenario changes instrument NOPE, which no instrument record of the journal has"),
    ('[alternative.instruments.BNBUSDT]\ntiers = [{max_notional = "50000", mmr = "2", maint_amount = "0"}]\n',
     "the alternative scenario's instruments.BNBUSDT makes journal line 2 a record the engine refuses: mmr must be "
     "below 1"),
])
def test_whatif_parameters_that_cannot_make_a_replayable_run_are_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, message: str) -> None:
    assert message in one_line_error(capsys, _whatif(tmp_path, toml))
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("command", [
    ["replay", str(EXAMPLE), "--out", "{file}"],
    ["whatif", str(EXAMPLE), "--out", "{file}"],
    ["demo", "--accounts", "20", "--out", "{file}"],
], ids=lambda c: c[0])
def test_out_pointing_at_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    target = tmp_path / "taken"
    target.write_text("mine")
    line = one_line_error(capsys, [part.format(file=target) for part in command])
    assert f"output directory {target} is a file" in line
    assert target.read_text() == "mine"


@pytest.mark.parametrize("command", [
    ["replay", str(EXAMPLE), "--out", ""], ["whatif", str(EXAMPLE), "--out", " "], ["demo", "--out", ""],
    ["statement", "x", "--fund", "MAIN", "--out", ""], ["journal", "export", "--out", ""],
], ids=lambda c: c[0])
def test_an_empty_out_is_refused_rather_than_taken_for_the_working_directory(
        capsys: pytest.CaptureFixture[str], command: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(command)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert "argument --out: an empty path (see backstop " in err


@pytest.mark.parametrize(("content", "message"), [
    ("{}", "no snapshot_hash"),
    ("[]", "not a JSON object"),
    ("{", "not JSON"),
])
def test_a_snapshot_that_is_not_one(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str,
                                    message: str) -> None:
    snapshot = tmp_path / "snapshot.json"
    snapshot.write_text(content)
    line = one_line_error(capsys, ["replay", str(EXAMPLE), "--out", str(tmp_path / "o"), "--from-snapshot",
                                   str(snapshot)])
    assert f"snapshot {snapshot} is corrupt: {message}" in line


def test_db_migrate_with_a_dsn_of_another_database(capsys: pytest.CaptureFixture[str]) -> None:
    line = one_line_error(capsys, ["db", "migrate", "--dsn", "mysql://root@127.0.0.1/backstop"])
    assert "scheme is expected to be either" in line and "mysql" in line


def test_explain_and_audit_with_a_journal_that_is_a_directory(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert "is a directory" in one_line_error(capsys, ["explain", "liq-1", "--journal", str(tmp_path)])
    assert "is a directory" in one_line_error(capsys, ["audit", "verify", "--journal", str(tmp_path)])
    assert "is a directory" in one_line_error(capsys, ["whatif", str(tmp_path), "--out", str(tmp_path / "w")])


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.mark.parametrize("command", [["produce", str(EXAMPLE)], ["topics", "create"], ["tail", "journal"],
                                     ["replay", "--from-kafka", "{bootstrap}", "--out", "{tmp}/o"]],
                         ids=lambda c: "-".join(c[:2]) if c[0] == "topics" else c[0])
def test_kafka_that_is_down(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                            command: list[str]) -> None:
    bootstrap = f"127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("BACKSTOP_KAFKA_BOOTSTRAP", bootstrap)
    line = one_line_error(capsys, [part.format(bootstrap=bootstrap, tmp=tmp_path) for part in command])
    assert "Unable to bootstrap" in line and not (tmp_path / "o").exists()


@pytest.mark.parametrize(("raw", "reason"), [
    (b"{not json", "not JSON"),
    (b"[1]", "not a JSON object"),
    (b'{"ts": 1}', 'no known "type" to choose a topic by (got None)'),
    (b'{"type": "trade", "ts": 1}', "no known \"type\" to choose a topic by (got 'trade')"),
    (b'{"type": "mark", "ts": 1}', "no symbol to key a mark record by"),
    (b'{"type": "fund", "fund_id": null}', "no fund_id to key a fund record by"),
])
def test_produce_says_why_a_line_cannot_be_routed(raw: bytes, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        route(raw, keep_type=False)
    assert str(caught.value).startswith(reason)


def test_produce_routes_by_type_and_key() -> None:
    assert route(b'{"type": "fill", "account_id": "u1",\r"ts": 1}', keep_type=False) == (
        "fill", b"u1", b'{"account_id":"u1","ts":1}')
    assert route(b'{"type": "mark", "symbol": "BTC", "ts": 1}', keep_type=True)[1:] == (
        b"BTC", b'{"type":"mark","symbol":"BTC","ts":1}')


def test_produce_sends_a_line_with_a_repeated_key_as_it_is() -> None:
    """Re-encoded it would keep one of the key's values and be applied; sent as written, the service dead-letters
    it (duplicate key "ts"), as `backstop replay` does the line."""
    from backstop.pipeline.ingest import Consumed, decode_consumed
    from backstop.wire.decode import InvalidRecord

    raw = b'{"type": "mark", "ts": 1760126470000, "ts": 1760126471000, "symbol": "BTC", "mark_price": "640"}'
    record_type, key, value = route(raw, keep_type=False)
    assert (record_type, key, value) == ("mark", b"BTC", raw)
    with pytest.raises(InvalidRecord, match='duplicate key "ts"'):
        decode_consumed(Consumed("backstop.marks", 0, 7, key, value), "mark")



class _ClosedPipe:
    """stdout whose reader has gone: every write raises as on a closed pipe."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        return self.fd


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """`backstop explain ... | head -1`: the closed pipe ends the command with SIGPIPE's status, no traceback."""
    journal = Path(__file__).parents[2] / "examples" / "02-adl-walks-queue.jsonl"
    sink = os.open(tmp_path / "stdout", os.O_WRONLY | os.O_CREAT)
    monkeypatch.setattr(sys, "stdout", _ClosedPipe(sink))
    assert main(["explain", "liq-S", "--journal", str(journal)]) == 141
    assert capsys.readouterr().err == ""


def refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Runs the command; it must exit 2 without a traceback, its error (argparse's after its usage line, or the
    command's one line) the last line of stderr, which is returned."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse: the usage, then the error
        code = int(str(exit_.code))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, (code, err)
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize(("argv", "message"), [
    (["--snapshot-every", "-1"], "--snapshot-every: must be a whole number from 0 to"),
    (["--snapshot-every", "99999999999999999999999"], "--snapshot-every: must be a whole number from 0 to"),
    (["--adl-floor", "0.000000001"], "the fund floor must have at most 8 decimals"),
    (["--adl-floor", "1E+400"], "the fund floor must be >= 0 and below 1e16"),
    (["--adl-policy", "bybit", "--adl-drawdown", "0.0000000000000000000001"], "the ratios must have at most 8"),
    (["--adl-policy", "bybit", "--adl-window-hours", "99999999999999999999"], "--adl-window-hours: must be a whole"),
])
@pytest.mark.parametrize("engine", ["compiled", "reference"])
def test_option_values_out_of_bounds_are_refused_on_both_engines(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str, engine: str) -> None:
    """Both engines read the policy's amounts at 1e-8 and the counts as 64-bit integers: a value past either is
    refused before anything runs (it was a traceback on one engine and a run on the other)."""
    command = ["replay", str(EXAMPLE), "--out", str(tmp_path / "r"), "--engine", engine, *argv]
    assert message in refused(capsys, command)
    assert not (tmp_path / "r").exists()


def test_statement_and_demo_bounds(tmp_path: Path, replayed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "is after the latest event time" in refused(
        capsys, ["statement", str(replayed), "--fund", "MAIN", "--from", "99999999999999999999999999"])
    assert "not a time" in refused(capsys, ["statement", str(replayed), "--fund", "MAIN", "--to", "soon"])
    assert "not a time: '\u0661\u0667'" in refused(
        capsys, ["statement", str(replayed), "--fund", "MAIN", "--from", "\u0661\u0667"])  # Arabic-Indic digits
    assert "--from 5 is after --to 1" in refused(
        capsys, ["statement", str(replayed), "--fund", "MAIN", "--from", "5", "--to", "1"])
    assert "--accounts: must be a whole number from 1 to 50000" in refused(
        capsys, ["demo", "--accounts", "99999999999999999999", "--out", str(tmp_path / "d")])
    # random.seed(-7) is random.seed(7): a negative seed would name another seed's cascade
    assert "--seed: must be a whole number from 0 to" in refused(capsys, ["demo", "--seed=-7", "--out", str(tmp_path)])
    for bad, said in (("", "not a time: ''"), ("0001-01-01", "is outside the event times, 1970-01-01 to"),
                      ("2025-10-10T00:00:00.0005Z", "is finer than a millisecond")):
        assert said in refused(capsys, ["statement", str(replayed), "--fund", "MAIN", f"--from={bad}"])


def test_sigterm_ends_a_command_as_ctrl_c_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """SIGTERM mid-replay: the staged output is discarded, one line says so, the status is SIGINT's (130)."""
    import signal

    from backstop.entrypoints import replay as replay_module

    real = replay_module.OutputDir.write_batch

    def write_then_terminate(self: object, *args: object, **kwargs: object) -> None:
        real(self, *args, **kwargs)  # type: ignore[arg-type]
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(replay_module.OutputDir, "write_batch", write_then_terminate)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["replay", str(EXAMPLE), "--out", str(tmp_path / "r")]) == 130
    assert capsys.readouterr().err.strip() == "backstop replay: interrupted"
    assert list(tmp_path.iterdir()) == [], "no output directory, staged or not"
    assert signal.getsignal(signal.SIGTERM) == before, "the handler is the command's only"


def test_a_usage_error_is_one_line_naming_the_command_and_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["replay", "--snapshot-every", "x"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith("backstop replay: argument --snapshot-every:")
    assert err.endswith("(see backstop replay --help)\n")


def test_an_interrupt_that_c_code_turned_into_its_own_error_is_still_an_interrupt(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A signal that lands in a callback of C code (orjson's `default`, serializing a Decimal) comes out as that
    code's error, caused by the KeyboardInterrupt: it is reported as the interrupt it is."""
    from backstop.entrypoints import replay as replay_module

    def interrupted_in_orjson(self: object, *args: object, **kwargs: object) -> None:
        raise TypeError("Type is not JSON serializable: decimal.Decimal") from KeyboardInterrupt()

    monkeypatch.setattr(replay_module.OutputDir, "write_batch", interrupted_in_orjson)
    assert main(["replay", str(EXAMPLE), "--out", str(tmp_path / "r"), "--engine", "reference"]) == 130
    assert capsys.readouterr().err.strip() == "backstop replay: interrupted"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("variable", "value", "argv", "message"), [
    ("BACKSTOP_WEB_PORT", "x", ["db", "migrate"], "Input should be a valid integer"),
    ("BACKSTOP_INPUT_GAP", "maybe", ["serve"], "Input should be 'refuse' or 'skip'"),
    ("BACKSTOP_BATCH_MAX_RECORDS", "-5", ["serve"], "Input should be greater than or equal to 1"),
    ("BACKSTOP_ANCHOR_KEY_FILE", "", ["serve"], "Value error, is empty: unset it to run without an anchor key"),
    ("BACKSTOP_PG_DSN_FILE", "/nonexistent/dsn", ["serve"], "Value error, cannot read it: No such file"),
    ("BACKSTOP_PG_OWNER_DSN_FILE", "/nonexistent/dsn", ["db", "migrate"], "Value error, cannot read it: No such"),
    ("BACKSTOP_KAFKA_SASL_PASSWORD_FILE", "/nonexistent/pw", ["topics", "create"], "Value error, cannot read it"),
])
def test_a_setting_the_settings_refuse_is_one_line_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str,
        argv: list[str], message: str) -> None:
    monkeypatch.setenv(variable, value)
    line = one_line_error(capsys, argv)
    assert line.startswith(f"backstop {argv[0]}: bad setting {variable}={value!r}: {message}"), line


def test_a_journal_of_which_nothing_applied_is_said_on_stderr(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "other.jsonl").write_text('{"not": "a record"}\n')
    assert main(["replay", str(tmp_path / "empty.jsonl"), "--out", str(tmp_path / "a")]) == 0
    assert capsys.readouterr().err.endswith("no line of " + str(tmp_path / "empty.jsonl") + " was applied: it holds "
                                            "no record\n")
    assert main(["replay", str(tmp_path / "other.jsonl"), "--out", str(tmp_path / "b")]) == 0
    assert "(1 rejected: see dead-letter.jsonl)" in capsys.readouterr().err
    assert main(["replay", str(EXAMPLE), "--out", str(tmp_path / "c")]) == 0
    assert capsys.readouterr().err == ""

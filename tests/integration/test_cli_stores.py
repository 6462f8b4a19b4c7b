"""The tools against the real broker and database: `backstop produce` sends every line it can route and names the
others; `replay --from-postgres` carries what the service counted (duplicates, rejections, dead letters with their
reasons) and its output passes `audit verify`; a store that cannot be read is one line and exit 2."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import pytest
from service_harness import ServeProcess, free_port, in_process, settings_for, stored, wait_caught_up

from backstop.adapters.kafka.tools import ensure_topics
from backstop.entrypoints.cli import main as cli

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "01-isolated-liquidation-surplus.jsonl"


def _journal_with_bad_lines(tmp_path: Path) -> tuple[Path, list[int]]:
    """The example, lines the producer cannot route, lines the service dead-letters, and the example again."""
    good = EXAMPLE.read_bytes().splitlines()
    unroutable = [b"{not json", b'{"ts": 1, "fill_id": "x"}', b"[1, 2]", b'{"type": "fill", "ts": 1}']
    rejected = [b'{"type": "mark", "ts": 1760000000009, "symbol": "NOPE", "mark_price": "1"}',
                b'{"type": "fill", "ts": 1, "account_id": "u9", "fill_id": "bad"}']
    lines = [*good, *unroutable, *rejected, *good]
    journal = tmp_path / "mixed.jsonl"
    journal.write_bytes(b"\n".join(lines) + b"\n")
    first = len(good) + 1
    return journal, list(range(first, first + len(unroutable)))


async def test_produce_names_what_it_cannot_route_and_the_stored_counts_reach_the_replay(
        tmp_path: Path, kafka_bootstrap: str, topic_prefix: str, migrated_database: str,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    settings = settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}cli.")
    monkeypatch.setenv("BACKSTOP_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("BACKSTOP_TOPIC_PREFIX", settings.topic_prefix)
    monkeypatch.setenv("BACKSTOP_INPUT_PARTITIONS", str(settings.input_partitions))
    monkeypatch.setenv("BACKSTOP_OUTPUT_PARTITIONS", str(settings.output_partitions))
    journal, unroutable = _journal_with_bad_lines(tmp_path)
    # before the service ever ran: produce creates the topics as the service lays them out
    assert await asyncio.to_thread(cli, ["produce", str(journal)]) == 1  # some lines were not sent
    assert ensure_topics(settings) == []
    captured = capsys.readouterr()
    named = [line for line in captured.err.splitlines() if " not sent: " in line]
    assert [int(line.split(" line ")[1].split()[0]) for line in named] == unroutable, captured.err
    assert "not JSON" in named[0] and "no known \"type\"" in named[1] and "not a JSON object" in named[2]
    assert "no account_id to key a fill record by" in named[3]
    assert captured.out.strip() == ("produced 2 fund, 2 instrument, 6 transfer, 5 fill, 3 mark, 2 liquidation; "
                                    "4 line(s) not sent")
    async with in_process(settings):
        await wait_caught_up(migrated_database, applied=9)
        for _ in range(150):  # the duplicates and dead letters come after the last applied record
            have = await stored(migrated_database)
            if have["head"]["duplicates"] == 9 and len(have["dead_letter"]) == 2:
                break
            await asyncio.sleep(0.2)
    assert (have["head"]["duplicates"], have["head"]["rejected"], len(have["dead_letter"])) == (9, 2, 2)

    out = tmp_path / "pg"
    assert await asyncio.to_thread(cli, ["replay", "--from-postgres", migrated_database, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["events_applied"], summary["duplicates"], summary["rejected"], summary["dead_letters"]) == (
        9, 9, 2, 2)
    dead = [json.loads(x) for x in (out / "dead-letter.jsonl").read_text().splitlines()]
    assert sorted((d["source_topic"].rsplit(".", 1)[1], d["reason"].split(":")[0]) for d in dead) == [
        ("fills", "fill.symbol"), ("marks", "unknown symbol NOPE")], dead
    assert all(d["id"].startswith("dl-") and d["raw"] for d in dead)
    capsys.readouterr()
    assert await asyncio.to_thread(cli, ["audit", "verify", str(out)]) == 0
    assert "2 dead letters, as summary.json says" in capsys.readouterr().out
    assert await asyncio.to_thread(cli, ["audit", "verify", "--dsn", migrated_database, "--journal",
                                         str(journal)]) == 2
    assert capsys.readouterr().err == ("backstop audit verify: --journal does not go with --dsn (the database's own "
                                       "journal is replayed)\n")

    connection = await asyncpg.connect(migrated_database)  # a hole in the journal, as its owner could make one
    try:
        async with connection.transaction():
            await connection.execute("ALTER TABLE journal DISABLE TRIGGER USER")
            await connection.execute("DELETE FROM fund_ledger WHERE seq = 5")
            await connection.execute("DELETE FROM adl_events WHERE seq = 5")
            await connection.execute("DELETE FROM journal WHERE seq = 5")
            await connection.execute("ALTER TABLE journal ENABLE TRIGGER USER")
    finally:
        await connection.close()
    for argv in (["journal", "export", "--dsn", migrated_database, "--out", str(tmp_path / "gap.jsonl")],
                 ["replay", "--from-postgres", migrated_database, "--out", str(tmp_path / "gap")]):
        assert await asyncio.to_thread(cli, argv) == 2
        assert capsys.readouterr().err.endswith("cannot read the stored journal: InvariantViolation: the stored "
                                                "journal has a gap: seq 5 is missing\n")
    assert not (tmp_path / "gap.jsonl").exists() and not (tmp_path / "gap").exists()
    # the service will not rebuild past it: it stops (no retry), its relay stopped first, and its last line says why
    log = tmp_path / "serve.log"
    service = ServeProcess(settings, log)
    try:
        assert await asyncio.to_thread(service.wait_exit) == 1
    finally:
        service.stop()
    lines = log.read_text().splitlines()
    assert json.loads(lines[-1])["message"] == ("backstop serve: stopped: InvariantViolation: the stored journal has a "
                                                "gap: seq 5 is missing"), lines[-5:]
    assert not [line for line in lines if "relay failed" in line]


async def test_a_store_that_cannot_be_read_is_one_line_and_exit_2(
        tmp_path: Path, pg_server_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(pg_server_dsn)
    missing = urlunsplit((parts.scheme, parts.netloc, "/backstop_no_such_database", "", ""))
    down = f"postgresql://backstop@127.0.0.1:{free_port()}/backstop"
    for argv, message in (
            (["replay", "--from-postgres", missing, "--out", str(tmp_path / "o")], "does not exist"),
            (["journal", "export", "--dsn", missing, "--out", str(tmp_path / "j.jsonl")], "does not exist"),
            (["journal", "export", "--dsn", down, "--out", str(tmp_path / "j.jsonl")], "Connect call failed"),
            (["replay", "--from-postgres", down, "--out", str(tmp_path / "o")], "Connect call failed"),
            (["db", "migrate", "--dsn", missing], "does not exist"),
            (["db", "migrate", "--dsn", down], "Connect call failed")):
        assert await asyncio.to_thread(cli, argv) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "j.jsonl").exists()


async def test_exporting_a_journal_nothing_was_stored_in_yet_writes_an_empty_file_and_says_so(
        tmp_path: Path, migrated_database: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "empty.jsonl"
    assert await asyncio.to_thread(cli, ["journal", "export", "--dsn", migrated_database, "--out", str(out)]) == 0
    assert out.read_bytes() == b""
    assert capsys.readouterr().out == f"wrote an empty journal (nothing stored yet) to {out}\n"

"""`backstop serve` as an operator runs it: its HTTP endpoints listen only where the settings say (issue 19 item
15), and every line it writes is one JSON object, tracebacks included (item 16)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import asyncpg
import orjson
import pytest
from service_harness import ServeProcess, settings_for, wait_caught_up

from backstop.adapters.kafka.tools import produce_file

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "02-adl-walks-queue.jsonl"


def other_addresses() -> list[str]:
    """Addresses of this host other than 127.0.0.1: 127.0.0.2 (every 127/8 address is local on Linux, and a socket
    bound to 127.0.0.1 does not answer it) and, if there is one, the address of the default route's interface."""
    found = ["127.0.0.2"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
            address = probe.getsockname()[0]
        except OSError:
            address = None
    if address and not address.startswith("127."):
        found.append(address)
    return found


def listening(port: int) -> set[str]:
    """The local addresses of the sockets listening on `port` (from /proc/net/tcp, IPv4 as the kernel shows it)."""
    addresses = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        host, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            addresses.add(socket.inet_ntoa(bytes.fromhex(host)[::-1]))
    return addresses


async def test_the_http_endpoints_listen_only_where_the_settings_say(tmp_path: Path, kafka_bootstrap: str,
                                                                     topic_prefix: str,
                                                                     migrated_database: str) -> None:
    serve = ServeProcess(settings_for(kafka_bootstrap, migrated_database, f"{topic_prefix}bind."), tmp_path / "log")
    try:
        await asyncio.to_thread(serve.wait_healthy)
        assert json.loads(serve.get("/health"))["status"] == "ok"  # on 127.0.0.1, the default
        assert listening(serve.port) == {"127.0.0.1"}
        for address in other_addresses():
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((address, serve.port), timeout=5).close()
    finally:
        serve.stop()


async def test_every_line_serve_writes_is_one_json_object(tmp_path: Path, kafka_bootstrap: str, topic_prefix: str,
                                                          migrated_database: str) -> None:
    """A run with input to apply, and a spell in which every commit fails (the service's role loses a privilege it
    needs: the loop fails, logs a warning with the traceback as a field, and restarts until it is given back):
    every line of the log, ours and faust's and the Kafka clients', parses as a JSON object."""
    dsn = migrated_database
    settings = settings_for(kafka_bootstrap, dsn, f"{topic_prefix}logs.")
    log = tmp_path / "serve.log"
    serve = ServeProcess(settings, log)
    try:
        await asyncio.to_thread(serve.wait_healthy)
        await produce_file(settings, EXAMPLE)
        await wait_caught_up(dsn, applied=19)
        owner = await asyncpg.connect(dsn)
        try:
            await owner.execute("REVOKE UPDATE ON consumed_offsets FROM backstop_service")
            later = tmp_path / "later.jsonl"
            later.write_bytes(orjson.dumps({"type": "mark", "ts": 1760126461000, "symbol": "BNBUSDT",
                                            "mark_price": "645"}) + b"\n")
            await produce_file(settings, later)
            deadline = time.monotonic() + 60
            while "restarting in" not in log.read_text() and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
        finally:
            await owner.execute("GRANT UPDATE ON consumed_offsets TO backstop_service")
            await owner.close()
        await wait_caught_up(dsn, applied=20)
        serve.get("/metrics")
    finally:
        serve.stop()
    documents = [json.loads(line) for line in log.read_text().splitlines()]  # every line
    assert all(isinstance(d, dict) and {"ts", "level", "logger", "message"} <= set(d) for d in documents)
    loggers = {d["logger"].split(".")[0] for d in documents}
    assert {"backstop", "faust", "aiokafka"} <= loggers, loggers
    failed = [d for d in documents if "restarting in" in d["message"]]
    assert failed and "Traceback" in failed[0]["exception"] and "InsufficientPrivilege" in failed[0]["exception"]
    batches = [d for d in documents if d["message"] == "batch"]
    assert batches and batches[-1]["seq"] == 20 and {"applied", "apply", "project", "commit"} <= set(batches[-1])

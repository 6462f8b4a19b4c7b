"""Every shell and Python snippet of README.md and docs/ runs, so no example rots (markers: tests/docs/snippets.py).

A page's blocks run in order in one bash script, in a temporary directory holding a copy of `examples/` and a
`./backstop` that runs the installed package. Pages with a `run servers` block get the real servers of
scripts/test, a database of their own and a topic prefix of their own; in their text the local defaults the docs
show (the owner's and the service's DSN on 127.0.0.1:5432, Kafka on 127.0.0.1:9092, the web port 6066) are
replaced by the test's servers.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from snippets import REPO, Block, blocks, missing_output, outputs, pages, problems, script

PAGES = {str(page.relative_to(REPO)): blocks(page) for page in pages()}
# the local defaults the docs show: the tables' owner and the service's login role on deploy/local's PostgreSQL
DOCS_OWNER_DSN = "postgresql://backstop@127.0.0.1:5432/backstop"
DOCS_SERVICE_DSN = "postgresql://backstop_svc@127.0.0.1:5432/backstop"
SCRIPT_LIMIT_S = 300  # a hung snippet fails the test instead of hanging the suite


def test_every_runnable_block_is_marked() -> None:
    found = [problem for page_blocks in PAGES.values() for problem in problems(page_blocks)]
    assert found == [], "\n".join(found)


def test_the_docs_have_snippets_that_run() -> None:
    """A parser that stopped finding blocks would make every test here pass vacuously."""
    assert sum(block.runs for page_blocks in PAGES.values() for block in page_blocks) >= 10
    assert any(block.kind == "run servers" for block in PAGES["README.md"])


SKIPPED = [block for page_blocks in PAGES.values() for block in page_blocks if block.kind == "skip"]


@pytest.mark.parametrize("block", SKIPPED, ids=[block.where for block in SKIPPED])
def test_skipped_block(block: Block) -> None:
    pytest.skip(f"{block.where} is not run: {block.reason}")


def _shim(directory: Path) -> None:
    """`./backstop` in the temporary directory: the installed package's command, as the docs call it."""
    command = Path(sys.executable).with_name("backstop")
    shim = directory / "backstop"
    shim.write_text(f'#!/usr/bin/env bash\nexec "{command}" "$@"\n')
    shim.chmod(0o755)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Servers:
    """The test's servers, a database and a topic prefix of their own for one page."""

    def __init__(self) -> None:
        self.server_dsn = (os.environ.get("BACKSTOP_TEST_PG_DSN") or os.environ.get("BACKSTOP_PG_OWNER_DSN")
                           or DOCS_OWNER_DSN)
        self.bootstrap = os.environ.get("BACKSTOP_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
        token = secrets.token_hex(4)
        self.database = f"backstop_docs_{token}"
        parts = urlsplit(self.server_dsn)
        self.owner_dsn = urlunsplit((parts.scheme, parts.netloc, "/" + self.database, parts.query, parts.fragment))
        service_netloc = f"backstop_svc@{parts.hostname}:{parts.port or 5432}"
        self.service_dsn = urlunsplit((parts.scheme, service_netloc, "/" + self.database, parts.query, parts.fragment))
        self.prefix = f"bd_{token}."
        self.web_port = _free_port()

    def substitute(self, text: str) -> str:
        return (text.replace(DOCS_OWNER_DSN, self.owner_dsn).replace(DOCS_SERVICE_DSN, self.service_dsn)
                .replace("127.0.0.1:9092", self.bootstrap).replace("127.0.0.1:6066", f"127.0.0.1:{self.web_port}"))

    def environment(self) -> dict[str, str]:
        return {"BACKSTOP_PG_OWNER_DSN": self.owner_dsn, "BACKSTOP_PG_DSN": self.service_dsn,
                "BACKSTOP_KAFKA_BOOTSTRAP": self.bootstrap, "BACKSTOP_TOPIC_PREFIX": self.prefix,
                "BACKSTOP_WEB_PORT": str(self.web_port)}

    async def _sql(self, statement: str) -> None:
        connection = await asyncpg.connect(self.server_dsn, timeout=30)
        try:
            await connection.execute(statement, timeout=60)
        finally:
            await connection.close()

    def create(self) -> None:
        try:
            asyncio.run(self._sql(f'CREATE DATABASE "{self.database}"'))
        except OSError as error:
            pytest.fail(f"PostgreSQL not reachable at {self.server_dsn} ({error}): run the docs tests with "
                        f"scripts/test, which starts the servers", pytrace=False)

    def drop(self) -> None:
        asyncio.run(self._sql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id=f"{self.prefix}cleanup",
                                 request_timeout_ms=30_000)
        try:
            doomed = [topic for topic in admin.list_topics() if topic.startswith(self.prefix)]
            if doomed:
                admin.delete_topics(doomed, timeout_ms=30_000)
        finally:
            admin.close()


@pytest.fixture
def page_servers(request: pytest.FixtureRequest) -> Iterator[Servers | None]:
    needs = any(block.kind == "run servers" for block in PAGES[request.node.callspec.params["page"]])
    if not needs:
        yield None
        return
    servers = Servers()
    servers.create()
    try:
        yield servers
    finally:
        servers.drop()


RUNNING_PAGES = [page for page, page_blocks in PAGES.items() if any(block.runs for block in page_blocks)]


@pytest.mark.parametrize("page", RUNNING_PAGES)
def test_page_snippets_run(page: str, tmp_path: Path, page_servers: Servers | None) -> None:
    page_blocks = PAGES[page]
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    _shim(tmp_path)
    text = script(page_blocks, python=sys.executable)
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for name in ("BACKSTOP_MIGRATIONS_DIR", "BACKSTOP_PG_DSN_FILE", "BACKSTOP_PG_OWNER_DSN_FILE",
                 "BACKSTOP_ANCHOR_KEY_FILE", "BACKSTOP_ANCHOR_ADOPT"):
        environment.pop(name, None)
    if page_servers is not None:
        text = page_servers.substitute(text)
        environment.update(page_servers.environment())
    try:
        done = subprocess.run(["bash", "-c", text], cwd=tmp_path, env=environment, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=SCRIPT_LIMIT_S, check=False)
        stdout, failure = done.stdout, f"the block failed (exit {done.returncode})" if done.returncode else ""
    except subprocess.TimeoutExpired as hung:
        stdout = hung.stdout.decode(errors="replace") if isinstance(hung.stdout, bytes) else hung.stdout or ""
        failure = f"the page did not finish within {SCRIPT_LIMIT_S} s"
    printed = outputs(stdout)
    if failure:
        last = max(printed, default=0)
        logs = "".join(f"\n--- {log.relative_to(tmp_path)} ends:\n{log.read_text(errors='replace')[-2000:]}"
                       for log in sorted(tmp_path.rglob("*.log")))
        pytest.fail(f"{page_blocks[last].where}: {failure}:\n"
                    f"{page_blocks[last].code}\n--- it printed:\n{printed.get(last, '')}{logs}", pytrace=False)
    for number, block in enumerate(page_blocks):
        if block.kind == "output":
            missing = missing_output(block.code, printed.get(number - 1, ""))
            assert missing is None, (f"{block.where}: the block above did not print {missing!r}; it printed:\n"
                                     f"{printed.get(number - 1, '')}")


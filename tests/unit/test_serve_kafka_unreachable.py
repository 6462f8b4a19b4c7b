"""`backstop serve` with no broker at BACKSTOP_KAFKA_BOOTSTRAP is refused in one line (the CLI prints it, exit 2:
tests/integration/test_roles.py) once the topic check gives up, not a traceback in the JSON logs."""

from __future__ import annotations

import socket

import pytest

from backstop.service.app import ServeRefused, topics_ready
from backstop.settings import Settings


def _closed_port() -> int:
    with socket.socket() as probe:  # bound and closed: nothing listens there now
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_no_broker_is_refused_in_one_line_naming_the_setting() -> None:
    bootstrap = f"127.0.0.1:{_closed_port()}"
    settings = Settings(kafka_bootstrap=bootstrap)
    with pytest.raises(ServeRefused) as refused:
        topics_ready(settings, timeout_ms=2000)
    message = str(refused.value)
    assert message.startswith(f"cannot reach Kafka at {bootstrap} (BACKSTOP_KAFKA_BOOTSTRAP) within 2 s: "), message
    assert "\n" not in message

"""`backstop serve` refuses in one line what it cannot start with. With no broker at BACKSTOP_KAFKA_BOOTSTRAP it is
refused (ServeRefused, which the CLI prints as one
line, exit 2, as tests/integration/test_roles.py shows for the other refusals) once the topic check gives up, not a
traceback in the JSON logs; a bootstrap address that cannot be parsed is refused the same way; so is a web address
taken by another process."""

from __future__ import annotations

import socket

import pytest

from backstop.service.app import ServeRefused, topics_ready, web_address_free
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


def test_a_bootstrap_address_that_cannot_be_parsed_is_refused_in_one_line() -> None:
    with pytest.raises(ServeRefused) as refused:
        topics_ready(Settings(kafka_bootstrap="127.0.0.1:notaport"), timeout_ms=2000)
    assert str(refused.value).startswith("cannot create the topics on Kafka at 127.0.0.1:notaport "
                                         "(BACKSTOP_KAFKA_BOOTSTRAP): "), str(refused.value)


def test_a_web_port_another_process_listens_on_is_refused_before_anything_starts() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(ServeRefused) as refused:
            web_address_free(Settings(web_port=port))
    assert str(refused.value) == (f"cannot listen on 127.0.0.1:{port} (BACKSTOP_WEB_HOST, BACKSTOP_WEB_PORT) for "
                                  f"/health and /metrics: Address already in use")
    web_address_free(Settings(web_port=port))  # free again

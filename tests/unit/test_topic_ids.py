"""Input topic ids as kafka-python's admin client gives them: a broker before Kafka 2.8 answers with a metadata
version that has no topic_id at all, and one that has ids but none for a topic gives the zero id; both mean "no id"
(the service then does not compare ids: docs/operations.md, "Input deleted before it was read"). The real broker's
answer is tested against Kafka in tests/integration/test_contracts.py."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from backstop.adapters.kafka import admin


class _Answers:
    """Stands in for KafkaAdminClient where the broker this suite runs (Kafka 4) cannot answer as an old one does."""

    described: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, **_: Any) -> None:
        pass

    def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        return [topic for topic in self.described if topic["name"] in names]

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("described", "ids"), [
    ([{"name": "t.fills", "error_code": 0, "partitions": []}], {}),  # metadata v9 and before: no key
    ([{"name": "t.fills", "error_code": 0, "topic_id": admin.NO_TOPIC_ID}], {}),
    ([{"name": "t.fills", "error_code": 3, "topic_id": None}], {}),  # no such topic
    ([{"name": "t.fills", "error_code": 0, "topic_id": "4ca4e823-ce1a-40a3-b4b6-604d0f8080ed"}],
     {"t.fills": "4ca4e823-ce1a-40a3-b4b6-604d0f8080ed"}),
])
def test_only_real_ids_are_taken(monkeypatch: pytest.MonkeyPatch, described: list[dict[str, Any]],
                                 ids: dict[str, str]) -> None:
    monkeypatch.setattr(_Answers, "described", described)
    monkeypatch.setattr(admin, "KafkaAdminClient", _Answers)
    assert admin.topic_ids("127.0.0.1:9092", ["t.fills"]) == ids

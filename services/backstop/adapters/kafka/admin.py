"""Topic administration with kafka-python's admin client: create the contract's topics with settings per role."""

from __future__ import annotations

from dataclasses import dataclass

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from backstop.pipeline.topics import TopicNames

FOREVER = "-1"


@dataclass(frozen=True, slots=True)
class TopicPlan:
    name: str
    partitions: int
    config: dict[str, str]


def plan(topics: TopicNames, *, input_partitions: int, input_retention_ms: int, output_partitions: int,
         replication: int = 1) -> list[TopicPlan]:
    """Inputs keep data per configuration; the journal, the fund ledger and the postings keep data forever."""
    del replication  # part of the signature for callers; applied in create()
    inputs = [TopicPlan(name, input_partitions, {"retention.ms": str(input_retention_ms)}) for name in topics.inputs]
    outputs = [
        TopicPlan(topics.journal, output_partitions, {"retention.ms": FOREVER, "retention.bytes": FOREVER}),
        TopicPlan(topics.fund_ledger, output_partitions, {"retention.ms": FOREVER, "retention.bytes": FOREVER}),
        TopicPlan(topics.adl_events, output_partitions, {"retention.ms": str(30 * 24 * 3600 * 1000)}),
        TopicPlan(topics.dead_letter, 1, {"retention.ms": str(30 * 24 * 3600 * 1000)}),
        TopicPlan(topics.postings, output_partitions, {"retention.ms": FOREVER, "retention.bytes": FOREVER}),
        TopicPlan(topics.adl_quantiles, output_partitions, {"retention.ms": str(30 * 24 * 3600 * 1000)}),
    ]
    return inputs + outputs


def create(bootstrap: str, plans: list[TopicPlan], *, replication: int = 1, timeout_ms: int = 30_000,
           client_kwargs: dict[str, object] | None = None) -> tuple[list[str], list[str]]:
    """Create what is missing; returns (created, already there). Existing topics are left as they are. A broker
    that cannot be reached within timeout_ms raises kafka.errors.KafkaError."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="backstop-admin", request_timeout_ms=timeout_ms,
                             bootstrap_timeout_ms=timeout_ms, **(client_kwargs or {}))
    try:
        existing = set(admin.list_topics())
        missing = [p for p in plans if p.name not in existing]
        created: list[str] = []
        for topic in missing:
            try:
                admin.create_topics([NewTopic(topic.name, topic.partitions, replication, topic_configs=topic.config)],
                                    timeout_ms=timeout_ms)
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        return created, sorted(p.name for p in plans if p.name in existing)
    finally:
        admin.close()


NO_TOPIC_ID = "00000000-0000-0000-0000-000000000000"  # a broker before Kafka 2.8 gives topics no id


def topic_ids(bootstrap: str, names: list[str], *, timeout_ms: int = 30_000,
              client_kwargs: dict[str, object] | None = None) -> dict[str, str]:
    """The id Kafka gave each of these topics when it created it; a topic that does not exist, or has no id, is
    left out."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="backstop-admin", request_timeout_ms=timeout_ms,
                             bootstrap_timeout_ms=timeout_ms, **(client_kwargs or {}))
    try:
        described = admin.describe_topics(names) if names else []
    finally:
        admin.close()
    # a broker before 2.8 answers with an older metadata version, which has no topic_id at all
    return {topic["name"]: str(topic["topic_id"]) for topic in described
            if topic["error_code"] == 0 and topic.get("topic_id") and str(topic["topic_id"]) != NO_TOPIC_ID}


def delete(bootstrap: str, names: list[str], *, timeout_ms: int = 30_000) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="backstop-admin", request_timeout_ms=timeout_ms)
    try:
        existing = set(admin.list_topics())
        doomed = [n for n in names if n in existing]
        if doomed:
            admin.delete_topics(doomed, timeout_ms=timeout_ms)
    finally:
        admin.close()

"""Real round trips against the services started by `make up`: Kafka, Redis, the loop's topics."""

from __future__ import annotations

import gc
import json
import uuid

import pytest
import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from schemas.settings import Settings
from streams.services import librdkafka_logger

pytestmark = pytest.mark.integration


def test_kafka_produce_consume_round_trip(kafka_config: dict[str, str], fresh_topic: str) -> None:
    event = {"event_id": str(uuid.uuid4()), "query": "running shoes", "items": ["a", "b"], "score": 0.5}
    value = json.dumps(event, separators=(",", ":"), sort_keys=True).encode()
    key = b"session-42"
    delivered: list[str] = []

    # A producer outliving its topic logs PARTCNT to stderr at its next periodic metadata refresh
    # (5 min on), into whichever later test captures stderr: no periodic refresh, and dropped below.
    producer = Producer(
        {
            **kafka_config,
            "acks": "all",
            "enable.idempotence": True,
            "logger": librdkafka_logger(),
            "topic.metadata.refresh.interval.ms": -1,
        }
    )
    producer.produce(
        fresh_topic, value=value, key=key, on_delivery=lambda err, _msg: delivered.append(str(err))
    )
    assert producer.flush(15) == 0
    assert delivered == ["None"]
    del producer
    gc.collect()  # destroyed now, before the fixture deletes its topic (it would log PARTCNT later)

    consumer = Consumer(
        {
            **kafka_config,
            "group.id": f"evalloop-test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.subscribe([fresh_topic])
        message = None
        for _ in range(60):
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                break
        assert message is not None and message.error() is None, "no message consumed within 30 s"
        assert message.value() == value
        assert message.key() == key
        assert json.loads(message.value()) == event
    finally:
        consumer.close()


def test_redis_round_trip(redis_client: redis.Redis, settings: Settings) -> None:
    key = f"{settings.redis.key_prefix}:test:{uuid.uuid4().hex}"
    try:
        assert redis_client.ping() is True
        assert redis_client.set(f"{key}:s", "héllo", ex=60) is True
        assert redis_client.get(f"{key}:s") == "héllo".encode()
        assert redis_client.hincrby(f"{key}:h", "n", 2) == 2
        assert redis_client.hincrby(f"{key}:h", "n", 3) == 5
        assert redis_client.hgetall(f"{key}:h") == {b"n": b"5"}
    finally:
        redis_client.delete(f"{key}:s", f"{key}:h")


def test_loop_topics_exist_with_settings(kafka_admin: AdminClient, settings: Settings) -> None:
    specs = settings.topics.all()
    metadata = kafka_admin.list_topics(timeout=10)
    for spec in specs:
        assert spec.name in metadata.topics, f"topic {spec.name} missing: run `make up`"
        assert len(metadata.topics[spec.name].partitions) == spec.partitions, spec.name
    resources = [ConfigResource("topic", spec.name) for spec in specs]
    configs = {
        res.name: future.result(timeout=10) for res, future in kafka_admin.describe_configs(resources).items()
    }
    for spec in specs:
        assert configs[spec.name]["retention.ms"].value == str(spec.retention_ms), spec.name

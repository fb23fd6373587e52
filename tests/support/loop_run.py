"""One isolated live loop for integration tests: its own topics, consumer group and Redis prefix
(``make_run``), and reading a topic from the start (``consume``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer

from schemas.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "data" / "wands" / "events.jsonl"
STAGES = ("events", "samples", "judgments", "alerts", "dead_letters")
PARTITIONS = {"events": 2, "samples": 2, "judgments": 2, "alerts": 1, "dead_letters": 1}


@dataclass
class Run:
    """One isolated loop: its topic names, Redis prefix, settings and env for the worker."""

    settings: Settings
    env: dict[str, str]
    topics: dict[str, str]
    prefix: str


def make_run(base: Settings, policy_path: Path, teacher_url: str, tag: str) -> Run:
    """A loop of its own for ``tag``: topics, Redis prefix and group, and the worker's env."""
    run_id = f"{tag}-{uuid.uuid4().hex[:8]}"
    topics = {stage: f"evalloop.it.{run_id}.{stage}" for stage in STAGES}
    prefix = f"evalloop-it:{run_id}"
    env = {
        "EVALLOOP_POLICY_FILE": str(policy_path),
        "EVALLOOP_REDIS__KEY_PREFIX": prefix,
        "EVALLOOP_STREAM_APP_ID": f"evalloop-it-{run_id}",
        "EVALLOOP_STREAM_TEACHER_URL": teacher_url,
        "EVALLOOP_STREAM_ALLOWED_LATENESS_S": "60",
        "EVALLOOP_STREAM_AGGREGATE_WITHIN_S": "0.2",
        "EVALLOOP_STREAM_LOG_INTERVAL_S": "5",
    }
    for stage, name in topics.items():
        env[f"EVALLOOP_TOPICS__{stage.upper()}__NAME"] = name
        env[f"EVALLOOP_TOPICS__{stage.upper()}__PARTITIONS"] = str(PARTITIONS[stage])
    specs = {s: {"name": topics[s], "partitions": PARTITIONS[s]} for s in STAGES}
    settings = base.model_copy(
        update={
            "topics": base.topics.model_validate(specs),
            "redis": base.redis.model_copy(update={"key_prefix": prefix}),
            "policy_file": policy_path,
        }
    )
    return Run(settings, env, topics, prefix)


def consume(
    settings: Settings, topic: str, done: Callable[[list[bytes]], bool], timeout: float
) -> list[bytes]:
    config: dict[str, Any] = dict(settings.kafka.confluent_config())
    config.update({"group.id": f"it-reader-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "earliest"})
    consumer = Consumer(config)
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not done(values):
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                values.append(message.value())
    finally:
        consumer.close()
    return values

"""The loop's services as a command sees them: quiet Kafka clients and one-line reachability checks.

librdkafka logs every failed connection attempt to stderr by itself; every confluent-kafka client
evalloop makes routes them through the ``evalloop.librdkafka`` logger instead, which is silent
unless ``EVALLOOP_KAFKA_LOG=1``. A command that needs Kafka or Redis checks first
(``require_kafka`` / ``require_redis``) and fails with ``ServiceUnavailable``: one line naming the
service, its address and what to do, instead of minutes of retries and a traceback.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import redis

from schemas.settings import Settings

LIBRDKAFKA_LOGGER = "evalloop.librdkafka"


class ServiceUnavailable(Exception):
    """A service a command needs does not answer; ``str()`` is the one line to print."""

    def __init__(self, service: str, address: str, detail: str, hint: str) -> None:
        super().__init__(f"{service} is not reachable at {address} ({detail}); {hint}")
        self.service = service
        self.address = address


def librdkafka_logger() -> logging.Logger:
    """The logger confluent-kafka clients log through: silent unless ``EVALLOOP_KAFKA_LOG=1``."""
    logger = logging.getLogger(LIBRDKAFKA_LOGGER)
    if os.environ.get("EVALLOOP_KAFKA_LOG") != "1":
        logger.setLevel(logging.CRITICAL + 1)
        logger.propagate = False
    return logger


def kafka_client_config(settings: Settings, *, producer: bool = False) -> dict[str, Any]:
    """confluent-kafka options for the configured cluster, logging through ``librdkafka_logger``."""
    base = settings.kafka.producer_config() if producer else settings.kafka.confluent_config()
    return {**base, "logger": librdkafka_logger()}


def require_kafka(settings: Settings, timeout_s: float = 5.0, topics: tuple[str, ...] = ()) -> None:
    """Raise ServiceUnavailable unless a broker answers (and each of ``topics`` exists)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    address = settings.kafka.bootstrap_servers
    try:
        metadata = AdminClient(kafka_client_config(settings)).list_topics(timeout=timeout_s)
    except KafkaException as error:
        hint = "start it with `make up` or set EVALLOOP_KAFKA__BOOTSTRAP_SERVERS"
        raise ServiceUnavailable("Kafka", address, _kafka_reason(error), hint) from None
    missing = [topic for topic in topics if topic not in metadata.topics]
    if missing:
        hint = "create the topics with `python -m infra.local topics` (or set EVALLOOP_TOPICS__*__NAME)"
        raise ServiceUnavailable("Kafka", address, f"no topic {', '.join(missing)}", hint)


def _kafka_reason(error: Any) -> str:
    inner = error.args[0] if error.args else error
    text = inner.str() if hasattr(inner, "str") else str(inner)
    return str(text)[:200]


def require_redis(settings: Settings, client: redis.Redis | None = None) -> None:
    """Raise ServiceUnavailable unless Redis answers PING with the configured credentials."""
    from streams.status import redis_from_settings

    probe = client or redis_from_settings(settings, connect_timeout_s=3.0, timeout_s=3.0)
    try:
        probe.ping()
    except redis.AuthenticationError as error:
        hint = "check EVALLOOP_REDIS__USERNAME and EVALLOOP_REDIS__PASSWORD"
        raise ServiceUnavailable("Redis", settings.redis.url, str(error), hint) from None
    except (redis.RedisError, OSError) as error:
        hint = "start it with `make up` or set EVALLOOP_REDIS__URL"
        raise ServiceUnavailable("Redis", settings.redis.url, str(error)[:200], hint) from None
    finally:
        if client is None:
            probe.close()

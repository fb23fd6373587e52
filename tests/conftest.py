"""Shared fixtures: settings and clients of the real services started by `make up`.

Integration fixtures never skip: if Kafka or Redis is unreachable they FAIL with a message saying to
run `make up`, so CI cannot silently pass without exercising the services.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from schemas.settings import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]

UP_HINT = "start the local services with `make up` (or point EVALLOOP_* settings at your own clusters)"


@pytest.fixture(scope="session")
def settings() -> Settings:
    """The settings every test runs with (env vars / .env, else the local loopback defaults)."""
    return load_settings()


@pytest.fixture(scope="session")
def kafka_bootstrap(settings: Settings) -> str:
    """The bootstrap servers, after checking that a broker answers a metadata request."""
    admin = AdminClient(dict(settings.kafka.confluent_config()))
    try:
        metadata = admin.list_topics(timeout=10)
    except KafkaException as exc:
        pytest.fail(f"Kafka not reachable at {settings.kafka.bootstrap_servers}: {exc}; {UP_HINT}")
    if not metadata.brokers:
        pytest.fail(f"Kafka at {settings.kafka.bootstrap_servers} reports no brokers; {UP_HINT}")
    return settings.kafka.bootstrap_servers


@pytest.fixture(scope="session")
def kafka_config(settings: Settings, kafka_bootstrap: str) -> dict[str, str]:
    """confluent-kafka client options for the reachable cluster (copy before adding options)."""
    return dict(settings.kafka.confluent_config())


@pytest.fixture(scope="session")
def kafka_admin(kafka_config: dict[str, str]) -> AdminClient:
    """An AdminClient connected to the reachable cluster."""
    return AdminClient(dict(kafka_config))


@pytest.fixture(scope="session")
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    """A redis-py client (bytes replies) that answered PING."""
    password = settings.redis.password.get_secret_value() if settings.redis.password else None
    tls = {"ssl_ca_certs": str(settings.redis.ssl_ca_certs)} if settings.redis.ssl_ca_certs else {}
    client = redis.Redis.from_url(
        settings.redis.url,
        username=settings.redis.username,
        password=password,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        **tls,
    )
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        client.close()
        pytest.fail(f"Redis not reachable at {settings.redis.url}: {exc}; {UP_HINT}")
    yield client
    client.close()


def _wait_for_topic(admin: AdminClient, name: str, present: bool, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        topic = admin.list_topics(topic=name, timeout=5).topics.get(name)
        exists = topic is not None and topic.error is None and bool(topic.partitions)
        if exists == present:
            return
        time.sleep(0.1)
    raise AssertionError(f"topic {name} still {'absent' if present else 'present'} after {timeout}s")


@pytest.fixture
def fresh_topic(kafka_admin: AdminClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A unique throwaway topic (1 partition) for one test; deleted afterwards.

    Parametrize partitions indirectly with ``@pytest.mark.parametrize("fresh_topic", [3], indirect=True)``.
    """
    partitions = int(getattr(request, "param", 1))
    name = f"evalloop.test.{request.node.name[:60].strip('[]').replace('[', '-')}.{uuid.uuid4().hex[:8]}"
    name = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in name)
    futures = kafka_admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    futures[name].result(timeout=30)
    _wait_for_topic(kafka_admin, name, present=True)
    yield name
    kafka_admin.delete_topics([name], operation_timeout=30)[name].result(timeout=30)


# --------------------------------------------------------------------------- figures in the summary

_FIGURES: list[tuple[str, dict[str, object]]] = []


@pytest.fixture
def report_figures() -> object:
    """Record figures a test measured (counts, rates); pytest prints them in its final summary,
    so reliability and fuzzing runs show what they tried even when everything passes."""

    def record(name: str, figures: dict[str, object]) -> None:
        _FIGURES.append((name, dict(figures)))

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print every recorded figure set under one heading."""
    if not _FIGURES:
        return
    terminalreporter.section("evalloop figures")
    for name, figures in _FIGURES:
        cells = ", ".join(f"{key}={value}" for key, value in figures.items())
        terminalreporter.write_line(f"{name}: {cells}")

"""A Kafka broker and a Redis of one check only (own ports and state dir), restartable.

``reliability.restarts`` takes them away on purpose; the shared services of ``make up`` are never
touched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reliability.live import log
from schemas.settings import Settings

OWN_KAFKA = "127.0.0.1:29092"
OWN_REDIS = "redis://127.0.0.1:26379/0"
OWN_STATE = Path(".evalloop/reliability")


def own_settings(base: Settings, state_dir: Path = OWN_STATE) -> Settings:
    """``base`` pointed at this check's own Kafka (29092/29093) and Redis (26379)."""
    return base.model_copy(
        update={
            "state_dir": state_dir,
            "kafka": base.kafka.model_copy(update={"bootstrap_servers": OWN_KAFKA}),
            "redis": base.redis.model_copy(update={"url": OWN_REDIS}),
        }
    )


def _share_jars(paths: Any) -> None:
    """Reuse the jars `make up` resolved (a symlink) instead of a second Maven resolution."""
    from infra.processes import Paths

    shared = Paths(Path(".evalloop")).kafka_libs.resolve()
    target: Path = paths.kafka_libs
    if shared.is_dir() and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(shared, target_is_directory=True)


class OwnServices:
    """A Kafka broker and a Redis of this check only (own ports and state dir), restartable."""

    def __init__(self, settings: Settings) -> None:
        from infra.processes import Paths

        self.settings = settings
        self.paths = Paths(settings.state_dir)

    def start(self) -> None:
        """Start both (idempotent)."""
        self.start_kafka()
        self.start_redis()

    def start_kafka(self) -> None:
        """Start the broker and wait until it answers."""
        from infra.kafka_server import start_kafka

        _share_jars(self.paths)
        for line in start_kafka(self.settings, self.paths):
            log(line)

    def start_redis(self) -> None:
        """Start Redis (no persistence) and wait for PING."""
        from infra.redis_server import start_redis

        for line in start_redis(self.settings, self.paths):
            log(line)

    def stop_kafka(self) -> None:
        """SIGTERM the broker (controlled shutdown) and wait until it is gone."""
        self._stop("kafka", "kafka.Kafka")

    def stop_redis(self) -> None:
        """SIGTERM Redis; without persistence its data is gone."""
        self._stop("redis", "redis-server")

    def _stop(self, service: str, marker: str) -> None:
        from infra.processes import owned_pid, stop_pid

        pid = owned_pid(self.paths, service, marker)
        if pid is not None and not stop_pid(pid):
            raise RuntimeError(f"{service} pid {pid} survived SIGKILL")
        self.paths.pid_file(service).unlink(missing_ok=True)

    def stop(self) -> list[int]:
        """Stop both; returns pids of ours still alive (should be empty)."""
        from infra.kafka_server import kafka_strays
        from infra.processes import stop_pid
        from infra.redis_server import redis_strays

        self.stop_kafka()
        self.stop_redis()
        for pid in kafka_strays(self.paths) + redis_strays(self.paths):
            stop_pid(pid, timeout=10)
        return kafka_strays(self.paths) + redis_strays(self.paths)


@contextlib.contextmanager
def own_services(settings: Settings) -> Iterator[OwnServices]:
    """Start own Kafka + Redis; always stop them, and fail if any of their processes is left."""
    services = OwnServices(settings)
    services.start()
    try:
        yield services
    finally:
        left = services.stop()
        if left:
            raise RuntimeError(f"own services left running: {left}")
        log("own Kafka and Redis stopped; no process left")

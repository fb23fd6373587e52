"""Settings and metrics of the streaming worker, and the Faust app's broker configuration.

``StreamSettings`` holds the worker's knobs (``EVALLOOP_STREAM_*``); ``faust_config`` maps
``Settings`` onto Faust's App keyword arguments. The counters are ``streams.metrics``.
"""

from __future__ import annotations

from typing import Any

import faust
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.events import UnknownFields
from schemas.settings import KafkaSettings, Settings


class StreamSettings(BaseSettings):
    """Knobs of the streaming worker (``EVALLOOP_STREAM_*``); everything else is in ``Settings``."""

    model_config = SettingsConfigDict(
        env_prefix="EVALLOOP_STREAM_", env_file=".env", extra="ignore", frozen=True, env_parse_none_str="null"
    )

    app_id: str = Field(default="evalloop", pattern=r"^[A-Za-z0-9._-]+$")
    #: Fields an event carries that the schema does not know: ``ignore`` (counted) or ``reject``.
    unknown_fields: UnknownFields = "ignore"
    #: Attempts at a record that fails for its own reason before it is dead-lettered
    #: (``processing_error``); a dependency being away is retried until it is back.
    record_attempts: int = Field(default=3, ge=1, le=100)
    #: Event-time lateness the watermark allows; windows are evaluated at max event time − this.
    allowed_lateness_s: float = Field(default=600.0, ge=0.0)
    #: Older than watermark − retention → dead letter "late"; None: the policy's longest window.
    retention_s: float | None = Field(default=None, gt=0.0)
    bucket_seconds: int = Field(default=300, ge=1)
    #: Events dated further ahead of the wall clock than this are dead-lettered ("future").
    max_future_s: float = Field(default=3600.0, gt=0.0)
    window_ttl_s: int = Field(default=2 * 86400, ge=60)
    #: Stage 1 takes up to this many events at once (waiting at most ``ingest_within_s``) and
    #: waits once for the acknowledgements of everything the batch published.
    ingest_batch: int = Field(default=200, ge=1, le=10_000)
    ingest_within_s: float = Field(default=0.2, gt=0.0)
    #: The judge stage takes up to this many samples at once: one teacher round, one wait for acks.
    judge_batch: int = Field(default=64, ge=1, le=1000)
    judge_within_s: float = Field(default=0.2, gt=0.0)
    #: Judge actors. 1 keeps each sample partition's judgments in event-time order, which the
    #: aggregate stage's watermark relies on; more actors reorder them, so under a backlog rules
    #: can run before all of a boundary's judgments are in (``judgments_after_evaluation``).
    #: Parallel teacher calls come from ``teacher_max_batch`` instead.
    judge_concurrency: int = Field(default=1, ge=1, le=256)
    teacher_url: str | None = None
    #: At start-up, how long (wall seconds) to wait for the teacher to answer its info.
    teacher_startup_wait_s: float = Field(default=60.0, ge=0.0)
    #: Accept a teacher serving another version of the same policy (same name, scale, taxonomy).
    allow_policy_version_bump: bool = False
    teacher_timeout_s: float = Field(default=30.0, gt=0.0)
    teacher_retries: int = Field(default=3, ge=0, le=20)
    teacher_max_concurrency: int = Field(default=8, ge=1, le=1024)
    #: Requests per teacher call (a judge batch is split into calls of this size, sent concurrently;
    #: keep it within the Serve deployment's ``max_requests_per_call``).
    teacher_max_batch: int = Field(default=80, ge=1, le=100_000)
    breaker_failures: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=10.0, gt=0.0)
    aggregate_batch: int = Field(default=500, ge=1)
    aggregate_within_s: float = Field(default=0.5, gt=0.0)
    #: JSON or YAML list of ``streams.notify.WebhookTarget`` objects.
    webhooks_file: str | None = None
    log_interval_s: float = Field(default=30.0, gt=0.0)
    #: Prometheus ``/metrics`` (docs/metrics.md): loopback by default; port 0 takes a free port,
    #: None (``EVALLOOP_STREAM_METRICS_PORT=null``) serves nothing. OTLP push: ``OTEL_EXPORTER_OTLP_*``.
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=9464, ge=0, le=65535)
    #: How often (wall seconds) the status gauges (shares, alert states, canaries, lag) refresh.
    metrics_refresh_s: float = Field(default=15.0, gt=0.0)
    #: A partition silent this long (wall seconds) stops holding the event-time watermark back.
    partition_idle_s: float = Field(default=10.0, gt=0.0)
    #: No judgment for this long (wall seconds): the input is caught up, the watermark closes out
    #: the last bucket and the rules run to the end (docs/alerts.md, "Quiet hours").
    idle_close_s: float = Field(default=15.0, gt=0.0)
    #: How often (wall seconds) the aggregate stage checks for idleness while no judgment arrives.
    idle_check_s: float = Field(default=1.0, gt=0.0)
    broker_session_timeout_s: float = 10.0
    broker_heartbeat_interval_s: float = 1.0
    broker_rebalance_timeout_s: float = 10.0
    broker_request_timeout_s: float = 20.0
    commit_interval_s: float = 1.0


def broker_urls(bootstrap_servers: str) -> list[str]:
    """``"h1:9092,h2:9092"`` → ``["kafka://h1:9092", "kafka://h2:9092"]`` (Faust's aiokafka transport)."""
    hosts = [part.strip() for part in bootstrap_servers.split(",") if part.strip()]
    return [host if "://" in host else f"kafka://{host}" for host in hosts]


def broker_credentials(kafka: KafkaSettings) -> Any:
    """Map the Kafka security settings onto Faust credentials (None for PLAINTEXT)."""
    protocol = kafka.security_protocol
    if protocol == "PLAINTEXT":
        return None
    import ssl

    context = None
    if protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None)
        if kafka.ssl_certfile:
            password = kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None
            keyfile = str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None
            context.load_cert_chain(str(kafka.ssl_certfile), keyfile=keyfile, password=password)
    if protocol.startswith("SASL_"):
        return faust.SASLCredentials(
            username=kafka.sasl_username,
            password=kafka.sasl_password.get_secret_value() if kafka.sasl_password else None,
            ssl_context=context,
            mechanism=kafka.sasl_mechanism,
        )
    return faust.SSLCredentials(context)


def faust_config(settings: Settings, stream: StreamSettings) -> dict[str, Any]:
    """Faust App keyword arguments from the settings (see docs/streaming.md for the why of each)."""
    config: dict[str, Any] = {
        "broker": broker_urls(settings.kafka.bootstrap_servers),
        "store": "memory://",
        "topic_partitions": settings.topics.events.partitions,
        "topic_allow_declare": False,
        "topic_disable_leader": True,
        "web_enabled": False,
        "autodiscover": False,
        "consumer_auto_offset_reset": "earliest",
        "broker_client_id": settings.kafka.client_id,
        # Short timeouts: first message in ~4 s instead of ~30 s (see /work/shared/notes/stack.md).
        "broker_session_timeout": stream.broker_session_timeout_s,
        "broker_heartbeat_interval": stream.broker_heartbeat_interval_s,
        "broker_rebalance_timeout": stream.broker_rebalance_timeout_s,
        "broker_request_timeout": stream.broker_request_timeout_s,
        "broker_commit_interval": stream.commit_interval_s,
        "producer_acks": -1,
        "producer_compression_type": None
        if settings.kafka.compression_type == "none"
        else settings.kafka.compression_type,
        "logging_config": None,
    }
    credentials = broker_credentials(settings.kafka)
    if credentials is not None:
        config["broker_credentials"] = credentials
    return config

"""Runtime settings: one frozen model, read once at start-up from ``EVALLOOP_*`` env vars or ``.env``.

The same code runs against the local loopback services (`make up`) and a user's own clusters:
only these settings change. Secrets are ``SecretStr`` so they never print.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
CompressionType = Literal["none", "gzip", "snappy", "lz4", "zstd"]


class TopicSpec(BaseModel):
    """One Kafka topic the loop uses: its name, partition count and retention."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    partitions: int = Field(default=4, ge=1, le=1024)
    replication_factor: int = Field(default=1, ge=1, le=16)
    retention_ms: int = Field(default=7 * 24 * 3600 * 1000, ge=-1)


class TopicSettings(BaseModel):
    """The loop's topics. Events and dead letters keep 7 days; judgments are training data (30 days)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    events: TopicSpec = TopicSpec(name="evalloop.events")
    samples: TopicSpec = TopicSpec(name="evalloop.samples")
    judgments: TopicSpec = TopicSpec(name="evalloop.judgments", retention_ms=30 * 24 * 3600 * 1000)
    alerts: TopicSpec = TopicSpec(name="evalloop.alerts", partitions=1, retention_ms=30 * 24 * 3600 * 1000)
    dead_letters: TopicSpec = TopicSpec(name="evalloop.dead-letters")

    def all(self) -> list[TopicSpec]:
        """Every topic, in a stable order."""
        return [self.events, self.samples, self.judgments, self.alerts, self.dead_letters]


class KafkaSettings(BaseModel):
    """Where the brokers are and how to authenticate to them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = "127.0.0.1:19092"
    security_protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None
    client_id: str = "evalloop"
    #: Codec of the batches evalloop's own producers write (the worker reads all of them anyway).
    compression_type: CompressionType = "none"

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                "kafka.security_protocol is SASL_*: set sasl_mechanism, sasl_username and sasl_password"
            )
        return self

    def confluent_config(self) -> dict[str, str]:
        """librdkafka (confluent-kafka) client options, secrets revealed only here."""
        config = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
            "client.id": self.client_id,
        }
        optional = {
            "sasl.mechanism": self.sasl_mechanism,
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password.get_secret_value() if self.sasl_password else None,
            "ssl.ca.location": str(self.ssl_cafile) if self.ssl_cafile else None,
            "ssl.certificate.location": str(self.ssl_certfile) if self.ssl_certfile else None,
            "ssl.key.location": str(self.ssl_keyfile) if self.ssl_keyfile else None,
            "ssl.key.password": self.ssl_key_password.get_secret_value() if self.ssl_key_password else None,
        }
        config.update({key: value for key, value in optional.items() if value is not None})
        return config

    def producer_config(self) -> dict[str, str]:
        """``confluent_config`` plus the producer-only options (compression)."""
        return {**self.confluent_config(), "compression.type": self.compression_type}


class RedisSettings(BaseModel):
    """Redis connection: URL (redis:// or rediss:// for TLS), optional ACL user and password."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str = "redis://127.0.0.1:16379/0"
    username: str | None = None
    password: SecretStr | None = None
    ssl_ca_certs: Path | None = None
    key_prefix: str = Field(default="evalloop", pattern=r"^[A-Za-z0-9:_.-]+$")

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, url: str) -> str:
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis.url must start with redis://, rediss:// (TLS) or unix://")
        if "@" in url:
            raise ValueError("put Redis credentials in redis.username / redis.password, not in redis.url")
        return url


class RaySettings(BaseModel):
    """Ray: ``address`` None starts a local head; ``auto`` or ``ray://host:port`` joins a cluster."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1)
    serve_host: str = "127.0.0.1"
    serve_port: int = Field(default=18000, ge=1, le=65535)
    app_name: str = "evalloop-teacher"
    namespace: str = "evalloop"


class AutoscalingSettings(BaseModel):
    """Replica autoscaling of the teacher deployment; ``min_replicas == max_replicas`` pins the count."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_replicas: int = Field(default=1, ge=0, le=1024)
    max_replicas: int = Field(default=2, ge=1, le=1024)
    target_ongoing_requests: float = Field(default=16, gt=0)
    upscale_delay_s: float = Field(default=5.0, ge=0.0)
    downscale_delay_s: float = Field(default=60.0, ge=0.0)
    #: Seconds of ongoing-request history each scaling decision averages (Serve's default 30).
    look_back_period_s: float = Field(default=30.0, gt=0.0)
    #: How often replicas report their ongoing requests (Serve's default 10; keep it under the look-back).
    metrics_interval_s: float = Field(default=10.0, gt=0.0)

    @model_validator(mode="after")
    def _bounds_ordered(self) -> AutoscalingSettings:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"serve.autoscaling.min_replicas {self.min_replicas} exceeds max_replicas {self.max_replicas}"
            )
        if self.look_back_period_s <= self.metrics_interval_s:
            raise ValueError(
                f"serve.autoscaling.look_back_period_s {self.look_back_period_s} must exceed "
                f"metrics_interval_s {self.metrics_interval_s}"
            )
        return self


class ServeSettings(BaseModel):
    """The Ray Serve teacher deployment: backend, dynamic batching, concurrency, replicas, resources.

    ``backend`` None uses the policy's ``teacher.backend``. Set ``num_gpus`` to 1 for GPU backends.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    backend: str | None = Field(default=None, min_length=1, max_length=64)
    max_batch_size: int = Field(default=32, ge=1, le=4096)
    batch_wait_timeout_s: float = Field(default=0.01, ge=0.0, le=10.0)
    max_ongoing_requests: int = Field(default=64, ge=1, le=100_000)
    #: Largest number of JudgeRequests in one call (HTTP answers 413 above it).
    max_requests_per_call: int = Field(default=1024, ge=1, le=100_000)
    autoscaling: AutoscalingSettings = AutoscalingSettings()
    num_cpus: float = Field(default=1.0, ge=0.0)
    num_gpus: float = Field(default=0.0, ge=0.0)
    #: Bytes of memory reserved per replica for scheduling; None reserves none.
    memory: int | None = Field(default=None, ge=0)
    #: End-to-end timeout of one HTTP request at the proxy; None waits forever.
    request_timeout_s: float | None = Field(default=None, gt=0.0)


class Settings(BaseSettings):
    """All runtime settings of evalloop, validated once at start-up.

    Nested fields use ``__``: ``EVALLOOP_KAFKA__BOOTSTRAP_SERVERS``, ``EVALLOOP_REDIS__PASSWORD``,
    ``EVALLOOP_TOPICS__EVENTS__PARTITIONS``.
    """

    model_config = SettingsConfigDict(
        env_prefix="EVALLOOP_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    state_dir: Path = Path(".evalloop")
    policy_file: Path = Path("policies/product-search.yaml")
    #: Teacher calibration records (``evalloop gate2`` writes them; the worker, status and the
    #: backtest read the one matching the teacher version). See docs/calibration.md.
    calibration_dir: Path = Path("artifacts/calibration")
    #: Base URL of ``evalloop dashboard`` as on-call reaches it; alerts link to the category's view
    #: there (``EVALLOOP_DASHBOARD_URL``). None: alerts carry no dashboard link.
    dashboard_url: Annotated[str, Field(pattern=r"^https?://\S+$", max_length=1000)] | None = None
    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    ray: RaySettings = RaySettings()
    serve: ServeSettings = ServeSettings()
    topics: TopicSettings = TopicSettings()


def load_settings() -> Settings:
    """Read and validate the settings from the environment and ``.env``."""
    return Settings()


#: The repository root: relative data and artifact paths resolve here when not found from the
#: working directory (a worker or Ray replica may run elsewhere).
REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_path(path: Path) -> Path:
    """``path`` as given if absolute or found from here, else relative to the repository root."""
    return path if path.is_absolute() or path.exists() else REPO_ROOT / path

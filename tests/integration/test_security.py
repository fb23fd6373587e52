"""Security checks against real processes on loopback: Redis ACL auth, Kafka security settings,
signed webhooks verified by a real HTTP receiver, secrets kept out of every output, and the local
services bound to loopback only.

Everything started here (a throwaway ``redis-server``, an HTTP receiver thread) listens on
127.0.0.1 and is stopped at the end; no test targets a non-loopback address.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr, ValidationError

from infra.processes import free_port
from judges.base import JudgeRequest, ok_judgment
from schemas.alerts import Alert
from schemas.events import Item
from schemas.judgments import Judgment
from schemas.policy import Policy, load_policy
from schemas.settings import KafkaSettings, RedisSettings, Settings
from streams.config import broker_credentials
from streams.notify import (
    SIGNATURE_HEADER,
    HttpxWebhookSender,
    RetryPolicy,
    SendResponse,
    WebhookTarget,
    deliver,
    generic_payload,
    pagerduty_payload,
    render,
    slack_payload,
    verify,
)
from streams.status import redis_from_settings
from streams.window_store import AlertStateStore, WindowStore

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ACL_USER, ACL_PASSWORD, ADMIN_PASSWORD = "evalloop", "acl-pw-SENTINEL-7f3a", "admin-pw-SENTINEL-91c2"
KAFKA_PASSWORD = "kafka-pw-SENTINEL-4d1e"
KEY_PASSWORD = "tls-key-pw-SENTINEL-0b6c"
HOOK_SECRET = "hook-secret-SENTINEL-5e8f"
ROUTING_KEY = "pd-routing-SENTINEL-2a9d"
SLACK_TOKEN = "slack-path-SENTINEL-c47b"
SECRETS = (ACL_PASSWORD, ADMIN_PASSWORD, KAFKA_PASSWORD, KEY_PASSWORD, HOOK_SECRET, ROUTING_KEY, SLACK_TOKEN)
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TOLERANCE_S = 300.0


def assert_no_secret(text: str, where: str, allowed: tuple[str, ...] = ()) -> None:
    """Fail naming ``where`` if any test secret (other than ``allowed``) occurs in ``text``."""
    leaked = [secret for secret in SECRETS if secret in text and secret not in allowed]
    assert not leaked, f"{where} contains secret(s) {leaked}"


# --------------------------------------------------------------------------- a throwaway Redis with ACLs


@dataclass
class AclRedis:
    """A redis-server on 127.0.0.1 with a default-user password and a restricted ACL user."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def settings(self, username: str | None = ACL_USER, password: str | None = ACL_PASSWORD) -> Settings:
        """Settings pointing at this server with the given credentials."""
        secret = SecretStr(password) if password is not None else None
        return Settings(redis=RedisSettings(url=self.url, username=username, password=secret))


def _redis_conf(port: int, workdir: Path) -> str:
    return "\n".join(
        [
            "bind 127.0.0.1",
            f"port {port}",
            'save ""',
            "appendonly no",
            f"dir {workdir}",
            "protected-mode yes",
            f"requirepass {ADMIN_PASSWORD}",
            # Only keys under the loop's prefix, and none of the dangerous commands (KEYS, FLUSHALL,
            # CONFIG, DEBUG, ...). Scripting (EVALSHA) stays allowed: the window store needs it.
            f"user {ACL_USER} on >{ACL_PASSWORD} ~evalloop:* +@all -@dangerous",
            "",
        ]
    )


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclRedis]:
    """Start the throwaway server; stop it (and check it is gone) at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server not on PATH (`make setup` installs it)")
    workdir = tmp_path_factory.mktemp("acl-redis")
    port = free_port()
    conf = workdir / "redis.conf"
    conf.write_text(_redis_conf(port, workdir))
    conf.chmod(0o600)
    log = workdir / "redis.log"
    with log.open("wb") as out:
        process = subprocess.Popen([binary, str(conf)], stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    server = AclRedis(port, process, log)
    try:
        _wait_ready(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    assert process.poll() is not None, "throwaway redis-server still running"


def _wait_ready(server: AclRedis, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"redis-server exited: {server.log.read_text()[-2000:]}")
        with contextlib.suppress(redis.RedisError, OSError):
            client = redis_from_settings(server.settings())
            try:
                if client.ping():
                    return
            finally:
                client.close()
        time.sleep(0.1)
    pytest.fail(f"redis-server not ready after {timeout}s: {server.log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(REPO / "policies/product-search.yaml")


def judgments(policy: Policy, n: int = 6) -> list[Judgment]:
    """``n`` ok judgments of one category, grades cycling over the scale."""
    out = []
    for i in range(n):
        request = JudgeRequest(
            event_id=f"sec-{i}",
            category="Security Test",
            event_time=T0,
            query="oak table",
            item=Item(item_id=f"item-{i}", title="oak dining table", rank=1),
        )
        grade = policy.grades[i % len(policy.grades)]
        out.append(ok_judgment(request, policy, "test-teacher", grade, [], "test verdict"))
    return out


def test_acl_user_runs_the_window_store_end_to_end(acl_redis: AclRedis, policy: Policy) -> None:
    settings = acl_redis.settings()
    client = redis_from_settings(settings)  # the factory the worker and `evalloop status` use
    try:
        assert client.acl_whoami() in (ACL_USER, ACL_USER.encode())
        store = WindowStore(client, settings.redis.key_prefix)
        batch = judgments(policy)
        assert store.apply(batch) == len(batch)
        assert store.apply(batch) == 0  # idempotent under the ACL too
        stats = store.read("Security Test", 3600, T0.timestamp() + 60)
        assert stats.samples == len(batch)
        assert store.categories() == {"Security Test"}
        states = AlertStateStore(client, settings.redis.key_prefix)
        assert states.get("rule", "Security Test").version == 0
    finally:
        client.close()


def test_wrong_or_missing_password_is_an_auth_error(acl_redis: AclRedis) -> None:
    for username, password in ((ACL_USER, "wrong-password"), (None, "wrong-password"), (None, None)):
        client = redis_from_settings(acl_redis.settings(username=username, password=password))
        try:
            with pytest.raises(redis.AuthenticationError) as caught:
                client.ping()
        finally:
            client.close()
        assert_no_secret(f"{caught.value!s} {caught.value!r}", "auth error message")
        assert password is None or password not in str(caught.value)


def test_acl_denies_keys_outside_the_prefix_and_dangerous_commands(
    acl_redis: AclRedis, policy: Policy
) -> None:
    client = redis_from_settings(acl_redis.settings())
    try:
        client.set("evalloop:probe", "1")  # inside the pattern: allowed
        with pytest.raises(redis.exceptions.NoPermissionError, match="no permissions"):
            client.set("other:probe", "1")
        with pytest.raises(redis.exceptions.NoPermissionError, match="no permissions"):
            client.keys("*")  # @dangerous
        with pytest.raises(redis.exceptions.NoPermissionError, match="no permissions"):
            client.flushall()  # @dangerous
        # A store under another prefix is refused inside its Lua script, before any write.
        with pytest.raises(redis.exceptions.NoPermissionError, match="no permissions"):
            WindowStore(client, "other").apply(judgments(policy, 1))
    finally:
        client.close()


# --------------------------------------------------------------------------- Kafka security settings


def test_sasl_without_credentials_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    for protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        with pytest.raises(ValidationError, match="sasl_mechanism, sasl_username and sasl_password"):
            KafkaSettings(security_protocol=protocol, sasl_mechanism="PLAIN", sasl_username="u")
        with pytest.raises(ValidationError, match="sasl_password"):
            KafkaSettings(security_protocol=protocol)
    monkeypatch.setenv("EVALLOOP_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("EVALLOOP_KAFKA__SASL_USERNAME", "evalloop")
    with pytest.raises(ValidationError):
        Settings()
    with pytest.raises(ValidationError):
        KafkaSettings(security_protocol="SASL_XYZ")  # type: ignore[arg-type]


def _sasl(protocol: str, **extra: Any) -> KafkaSettings:
    return KafkaSettings(
        bootstrap_servers="127.0.0.1:29092",
        security_protocol=protocol,  # type: ignore[arg-type]
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="evalloop",
        sasl_password=SecretStr(KAFKA_PASSWORD),
        **extra,
    )


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A self-signed CA/cert and an encrypted key (openssl), for the SSL context mapping."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl not on PATH")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-days", "1", "-subj", "/CN=127.0.0.1"]
    subprocess.run(
        [*command, "-keyout", str(key), "-out", str(cert), "-passout", f"pass:{KEY_PASSWORD}"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, cert, key


def test_confluent_config_maps_sasl_ssl(tls_files: tuple[Path, Path, Path]) -> None:
    ca, cert, key = tls_files
    kafka = _sasl(
        "SASL_SSL",
        ssl_cafile=ca,
        ssl_certfile=cert,
        ssl_keyfile=key,
        ssl_key_password=SecretStr(KEY_PASSWORD),
    )
    assert kafka.confluent_config() == {
        "bootstrap.servers": "127.0.0.1:29092",
        "security.protocol": "SASL_SSL",
        "client.id": "evalloop",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "evalloop",
        "sasl.password": KAFKA_PASSWORD,
        "ssl.ca.location": str(ca),
        "ssl.certificate.location": str(cert),
        "ssl.key.location": str(key),
        "ssl.key.password": KEY_PASSWORD,
    }
    plain = _sasl("SASL_PLAINTEXT").confluent_config()
    assert plain["security.protocol"] == "SASL_PLAINTEXT" and "ssl.ca.location" not in plain
    assert set(KafkaSettings().confluent_config()) == {"bootstrap.servers", "security.protocol", "client.id"}


def test_faust_credentials_map_sasl_and_ssl(tls_files: tuple[Path, Path, Path]) -> None:
    import faust

    ca, cert, key = tls_files
    sasl_ssl = broker_credentials(
        _sasl(
            "SASL_SSL",
            ssl_cafile=ca,
            ssl_certfile=cert,
            ssl_keyfile=key,
            ssl_key_password=SecretStr(KEY_PASSWORD),
        )
    )
    assert isinstance(sasl_ssl, faust.SASLCredentials)
    assert (sasl_ssl.username, sasl_ssl.password, sasl_ssl.mechanism.value) == (
        "evalloop",
        KAFKA_PASSWORD,
        "SCRAM-SHA-512",
    )
    assert sasl_ssl.ssl_context is not None and sasl_ssl.ssl_context.get_ca_certs()
    sasl_plain = broker_credentials(_sasl("SASL_PLAINTEXT"))
    assert isinstance(sasl_plain, faust.SASLCredentials) and sasl_plain.ssl_context is None
    ssl_only = broker_credentials(KafkaSettings(security_protocol="SSL", ssl_cafile=ca))
    assert isinstance(ssl_only, faust.SSLCredentials)
    assert broker_credentials(KafkaSettings()) is None
    for credentials in (sasl_ssl, sasl_plain, ssl_only):
        assert_no_secret(f"{credentials!r} {credentials!s}", "faust credentials repr")


SASL_BROKER_PROPERTIES = """process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
controller.listener.names=CONTROLLER
inter.broker.listener.name=SASL_PLAINTEXT
listeners=SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{port}
listener.security.protocol.map=CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms=PLAIN
sasl.mechanism.inter.broker.protocol=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule \
  required username="admin" password="{admin}" user_admin="{admin}" user_evalloop="{password}";
log.dirs={data}
auto.create.topics.enable=true
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
num.network.threads=1
num.io.threads=1
background.threads=1
"""


def _java_command(libs: Path, logs: Path, *args: str) -> list[str]:
    java = shutil.which("java")
    if java is None:
        pytest.fail("java not on PATH (`make setup` installs a JDK)")
    log4j = REPO / "infra/kafka/log4j2.properties"
    jvm = [java, "-Xmx384m", f"-Dlog4j2.configurationFile={log4j}", f"-Dkafka.logs.dir={logs}"]
    return [*jvm, "-cp", f"{libs}/*", *args]


@pytest.fixture(scope="module")
def sasl_kafka(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second single-node KRaft Kafka with a SASL_PLAINTEXT (PLAIN) listener on 127.0.0.1, from
    the jars `make up` installed; yields its bootstrap address and stops it at the end."""
    libs = (settings.state_dir / "kafka" / "libs").resolve()
    if not any(libs.glob("kafka_*.jar")):
        pytest.fail(f"no Kafka jars in {libs}; run `make up`")
    home = tmp_path_factory.mktemp("sasl-kafka")
    port, controller = free_port(), free_port()
    props = home / "server.properties"
    props.write_text(
        SASL_BROKER_PROPERTIES.format(
            port=port,
            controller=controller,
            admin=ADMIN_PASSWORD,
            password=KAFKA_PASSWORD,
            data=home / "data",
        )
    )
    fmt = ["kafka.tools.StorageTool", "format", "-t", "c2FzbC10ZXN0LWNsdXN0ZX", "-c", str(props)]
    subprocess.run(_java_command(libs, home, *fmt), check=True, capture_output=True, timeout=120)
    with (home / "broker.log").open("wb") as out:
        broker = subprocess.Popen(
            _java_command(libs, home, "kafka.Kafka", str(props)), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        _wait_for_port(port, broker, home / "broker.log", timeout=120)
        yield f"127.0.0.1:{port}"
    finally:
        broker.terminate()
        try:
            broker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait(timeout=10)
    assert broker.poll() is not None, "SASL Kafka still running"


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"SASL Kafka exited: {log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.5)
    pytest.fail(f"SASL Kafka not listening after {timeout}s: {log.read_text()[-3000:]}")


def _sasl_plain(bootstrap: str, password: str) -> dict[str, Any]:
    kafka = KafkaSettings(
        bootstrap_servers=bootstrap,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="evalloop",
        sasl_password=SecretStr(password),
    )
    return dict(kafka.confluent_config())


def test_sasl_plaintext_round_trip_with_confluent_kafka(sasl_kafka: str) -> None:
    from confluent_kafka import Consumer, KafkaError, Producer

    topic = f"evalloop.sasl-test.{int(time.time())}"
    delivered: list[Any] = []
    producer = Producer(_sasl_plain(sasl_kafka, KAFKA_PASSWORD))
    producer.produce(topic, b"signed-in", on_delivery=lambda error, _msg: delivered.append(error))
    assert producer.flush(60) == 0 and delivered == [None], delivered
    consumer = Consumer(
        {**_sasl_plain(sasl_kafka, KAFKA_PASSWORD), "group.id": topic, "auto.offset.reset": "earliest"}
    )
    try:
        consumer.subscribe([topic])
        received = None
        deadline = time.monotonic() + 60
        while received is None and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is not None and message.error() is None:
                received = message.value()
        assert received == b"signed-in"
    finally:
        consumer.close()
    # Wrong password: the broker refuses authentication; nothing is delivered.
    errors: list[Any] = []
    bad = Producer({**_sasl_plain(sasl_kafka, "wrong-password"), "error_cb": errors.append, "log_level": 0})
    bad.produce(topic, b"x")
    deadline = time.monotonic() + 30
    while not any(e.code() == KafkaError._AUTHENTICATION for e in errors) and time.monotonic() < deadline:
        bad.poll(0.5)
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    assert_no_secret(" ".join(str(e) for e in errors), "Kafka auth errors")


# --------------------------------------------------------------------------- webhook HMAC, real receiver


@dataclass
class Receiver:
    """An HTTP endpoint that accepts only bodies signed with ``secret`` within the tolerance."""

    port: int
    secret: bytes
    clock_offset_s: float = 0.0
    received: list[tuple[bytes, dict[str, str], int]] = field(default_factory=list)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def check(self, body: bytes, headers: Mapping[str, str]) -> int:
        signature = headers.get(SIGNATURE_HEADER, "")
        now = time.time() + self.clock_offset_s
        return 200 if verify(body, signature, self.secret, TOLERANCE_S, now) else 401


def _handler(receiver: Receiver) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            status = receiver.check(body, self.headers)
            receiver.received.append((body, dict(self.headers.items()), status))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            return

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A verifying receiver on 127.0.0.1 (ephemeral port) in a thread, shut down after the test."""
    state = Receiver(port=0, secret=HOOK_SECRET.encode())
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def an_alert() -> Alert:
    return Alert.model_validate(
        {
            "alert_id": "alert-sec-0001",
            "dedup_key": "filtered-share-burn/Security Test",
            "category": "Security Test",
            "rule": "filtered-share-burn",
            "severity": "page",
            "state": "firing",
            "signal": "filtered_share",
            "threshold": 0.35,
            "windows": [
                {
                    "window": "2h",
                    "seconds": 7200,
                    "samples": 120,
                    "weighted_samples": 240.0,
                    "bad": 60,
                    "rate": 0.5,
                    "lower": 0.41,
                    "upper": 0.59,
                    "threshold": 0.35,
                }
            ],
            "policy_version": "product-search-2026.11.1",
            "started_at": T0,
            "fired_at": T0,
            "updated_at": T0,
        },
        strict=False,
    )


def generic_target(url: str, secret: str = HOOK_SECRET) -> WebhookTarget:
    return WebhookTarget(name="receiver", kind="generic", url=url, secret=SecretStr(secret))


ONCE = RetryPolicy(max_attempts=1)


def test_signed_delivery_is_accepted_by_a_verifying_receiver(receiver: Receiver) -> None:
    alert = an_alert()
    with httpx.Client() as client:
        [result] = deliver(alert, [generic_target(receiver.url())], HttpxWebhookSender(client), ONCE)
    assert (result.ok, result.status, result.attempts) == (True, 200, 1)
    body, headers, status = receiver.received[-1]
    assert status == 200 and body == generic_payload(alert)
    assert json.loads(body)["alert"]["alert_id"] == alert.alert_id
    assert_no_secret(body.decode() + json.dumps(headers), "generic webhook request")


def test_wrong_secret_is_rejected_and_reported(receiver: Receiver) -> None:
    with httpx.Client() as client:
        [result] = deliver(
            an_alert(), [generic_target(receiver.url(), "not-the-secret")], HttpxWebhookSender(client), ONCE
        )
    assert (result.ok, result.status, result.error) == (False, 401, "HTTP 401")
    assert receiver.received[-1][2] == 401


class TamperingSender(HttpxWebhookSender):
    """A man in the middle: changes one byte of the body after it was signed."""

    def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> SendResponse:
        tampered = body.replace(b'"threshold":0.35', b'"threshold":0.95', 1)
        assert tampered != body
        return super().post(url, tampered, headers, timeout_s)


def test_tampered_body_is_rejected_and_reported(receiver: Receiver) -> None:
    with httpx.Client() as client:
        [result] = deliver(an_alert(), [generic_target(receiver.url())], TamperingSender(client), ONCE)
    assert (result.ok, result.status) == (False, 401)


def test_replayed_old_delivery_is_rejected(receiver: Receiver) -> None:
    alert = an_alert()
    with httpx.Client() as client:
        [fresh] = deliver(alert, [generic_target(receiver.url())], HttpxWebhookSender(client), ONCE)
        assert fresh.ok
        body, headers, _ = receiver.received[-1]
        # The same captured request, replayed after the tolerance window: rejected.
        receiver.clock_offset_s = TOLERANCE_S + 60
        replay = client.post(
            receiver.url(), content=body, headers={SIGNATURE_HEADER: headers[SIGNATURE_HEADER]}
        )
        assert replay.status_code == 401
        receiver.clock_offset_s = 0.0
        # A delivery signed an hour ago (a stored old request) is rejected as well.
        stale = RetryPolicy(max_attempts=1, now=lambda: time.time() - 3600)
        [old] = deliver(alert, [generic_target(receiver.url())], HttpxWebhookSender(client), stale)
    assert (old.ok, old.status) == (False, 401)


# --------------------------------------------------------------------------- secrets never appear


def secret_settings() -> Settings:
    return Settings(
        kafka=_sasl("SASL_PLAINTEXT"),
        redis=RedisSettings(url="redis://127.0.0.1:1/0", username=ACL_USER, password=SecretStr(ACL_PASSWORD)),
    )


def secret_targets(receiver: Receiver) -> list[WebhookTarget]:
    return [
        generic_target(receiver.url()),
        WebhookTarget(name="slack", kind="slack", url=receiver.url(f"/services/T0/B0/{SLACK_TOKEN}")),
        WebhookTarget(
            name="pd", kind="pagerduty", url=receiver.url("/v2/enqueue"), routing_key=SecretStr(ROUTING_KEY)
        ),
    ]


def test_settings_never_print_secrets() -> None:
    settings = secret_settings()
    for text, where in (
        (repr(settings), "repr(settings)"),
        (str(settings), "str(settings)"),
        (settings.model_dump_json(), "settings.model_dump_json()"),
        (json.dumps(settings.model_dump(mode="json")), "settings.model_dump(mode='json')"),
        (repr(settings.kafka) + repr(settings.redis), "repr of nested settings"),
    ):
        assert_no_secret(text, where)
    # ... while the clients still receive them.
    assert settings.kafka.confluent_config()["sasl.password"] == KAFKA_PASSWORD


def test_targets_and_payloads_never_carry_the_wrong_secret(receiver: Receiver) -> None:
    alert = an_alert()
    for target in secret_targets(receiver):
        # repr/str hide the URL (a Slack URL is a secret); model_dump would not: targets are read
        # from the webhooks file and never dumped.
        assert_no_secret(repr(target) + str(target), f"target {target.name}")
        body, headers = render(alert, target, time.time())
        allowed = (ROUTING_KEY,) if target.kind == "pagerduty" else ()
        assert_no_secret(body.decode() + json.dumps(headers), f"{target.kind} request", allowed)
    assert_no_secret(generic_payload(alert).decode(), "generic payload")
    assert_no_secret(json.dumps(slack_payload(alert)), "slack payload")
    assert ROUTING_KEY in json.dumps(pagerduty_payload(alert, ROUTING_KEY))  # where it must be


def test_debug_logs_and_errors_never_carry_secrets(
    acl_redis: AclRedis, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    from confluent_kafka import Producer

    caplog.set_level(logging.DEBUG)
    errors: list[str] = []
    # Building clients: Redis with good and bad credentials, a SASL producer (librdkafka's own
    # debug log routed into Python logging), Faust credentials.
    good = redis_from_settings(acl_redis.settings())
    good.ping()
    good.close()
    bad = redis_from_settings(acl_redis.settings(password=ADMIN_PASSWORD))
    with pytest.raises(redis.AuthenticationError) as caught:
        bad.ping()
    bad.close()
    errors.append(f"{caught.value!s} {caught.value!r}")
    kafka = _sasl("SASL_PLAINTEXT").model_copy(update={"bootstrap_servers": f"127.0.0.1:{free_port()}"})
    config: dict[str, Any] = {
        **kafka.confluent_config(),
        "debug": "conf,security,broker",
        "logger": logging.getLogger("test.librdkafka"),
    }
    producer = Producer(config)
    producer.poll(0.5)
    producer.flush(0.5)
    del producer
    logging.getLogger("test.config").debug("credentials %r", broker_credentials(kafka))
    # Delivering webhooks, successes and failures.
    with httpx.Client() as client:
        targets = list(secret_targets(receiver))
        results = deliver(an_alert(), targets, HttpxWebhookSender(client), ONCE)
        results += deliver(
            an_alert(), [generic_target("http://127.0.0.1:1/hook")], HttpxWebhookSender(client), ONCE
        )
    errors += [repr(result) for result in results]
    assert results[-1].error == "transport: ConnectError"
    assert any(r.name == "test.librdkafka" for r in caplog.records), "librdkafka debug log not captured"
    assert_no_secret("\n".join(r.getMessage() for r in caplog.records), "DEBUG logs")
    assert_no_secret("\n".join(errors), "errors and delivery results")


def test_httpx_info_log_does_not_leak_slack_urls(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    slack = WebhookTarget(name="slack", kind="slack", url=receiver.url(f"/services/T0/B0/{SLACK_TOKEN}"))
    with httpx.Client() as client:
        deliver(an_alert(), [slack], HttpxWebhookSender(client), ONCE)
    assert_no_secret("\n".join(r.getMessage() for r in caplog.records), "httpx logs")


# --------------------------------------------------------------------------- loopback binding

LOOPBACK_V4 = {"0100007F"}  # 127.0.0.1 as /proc/net/tcp writes it (little-endian)
LOOPBACK_V6 = {"00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}


def listening_sockets() -> dict[int, list[tuple[str, int]]]:
    """Socket inode → [(hex address, port)] of every TCP socket in LISTEN state."""
    out: dict[int, list[tuple[str, int]]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            address, port = fields[1].split(":")
            out.setdefault(int(fields[9]), []).append((address, int(port, 16)))
    return out


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets ``pid`` has open."""
    inodes: set[int] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = fd.readlink().as_posix()
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(hex address, port) of every socket ``pid`` listens on."""
    table = listening_sockets()
    return [entry for inode in socket_inodes(pid) for entry in table.get(inode, [])]


def _service_pids(settings: Settings) -> dict[str, int]:
    from infra.processes import Paths, owned_pid

    paths = Paths(settings.state_dir)
    found = {
        "kafka": owned_pid(paths, "kafka", "kafka.Kafka"),
        "redis": owned_pid(paths, "redis", "redis-server"),
    }
    missing = [name for name, pid in found.items() if pid is None]
    if missing:
        pytest.fail(f"local services {missing} not running from {paths.state}; run `make up`")
    return {name: pid for name, pid in found.items() if pid is not None}


def non_loopback(addresses: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The entries of ``addresses`` that are not a loopback address."""
    return [(a, p) for a, p in addresses if a not in LOOPBACK_V4 | LOOPBACK_V6]


def test_local_services_listen_on_loopback_only(settings: Settings, acl_redis: AclRedis) -> None:
    pids = {**_service_pids(settings), "throwaway redis": acl_redis.process.pid}
    for name, pid in pids.items():
        addresses = listening_addresses(pid)
        assert addresses, f"{name} (pid {pid}) listens on nothing"
        assert not non_loopback(addresses), f"{name} (pid {pid}) listens beyond loopback: {addresses}"
    kafka_ports = {port for _, port in listening_addresses(pids["kafka"])}
    assert int(settings.kafka.bootstrap_servers.rsplit(":", 1)[1]) in kafka_ports


def test_loopback_check_can_fail() -> None:
    """All-interfaces and routable addresses are flagged (pure: nothing is bound beyond loopback)."""
    wildcard_v4, wildcard_v6, lan = "00000000", "0" * 32, "0A00A8C0"  # 0.0.0.0, ::, 192.168.0.10
    addresses = [
        ("0100007F", 19092),
        (wildcard_v4, 1),
        (wildcard_v6, 2),
        (lan, 3),
        ("0000000000000000FFFF00000100007F", 4),
    ]
    assert non_loopback(addresses) == [(wildcard_v4, 1), (wildcard_v6, 2), (lan, 3)]

"""The local single-node KRaft Kafka: install (Maven), configure, format, start, health, topics.

The Kafka version is pinned in ``infra/kafka/pom.xml``; the broker's properties are rendered from
``infra/kafka/server.properties.template`` into the state dir. ``infra.local`` re-exports these names.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import string
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from infra.processes import (
    LOOPBACK_HOSTS,
    REPO_ROOT,
    Paths,
    ServiceError,
    cmdline,
    failure,
    find_pids,
    owned_pid,
    port_open,
    process_alive,
    spawn,
    stop_pid,
    wait_for,
)
from schemas.settings import Settings, TopicSpec

KAFKA_INFRA = REPO_ROOT / "infra" / "kafka"
POM = KAFKA_INFRA / "pom.xml"
LOG4J_CONFIG = KAFKA_INFRA / "log4j2.properties"
PROPERTIES_TEMPLATE = KAFKA_INFRA / "server.properties.template"
DEFAULT_KAFKA_HEAP = "-Xms256m -Xmx512m"
START_TIMEOUT_S = 90.0


# --------------------------------------------------------------------------- pure helpers


def loopback_endpoint(address: str) -> tuple[str, int] | None:
    """``(host, port)`` if ``address`` is one ``host:port`` on loopback, else None (external cluster)."""
    address = address.strip()
    if "," in address or "://" in address:
        return None
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or host not in LOOPBACK_HOSTS or not port.isdigit():
        return None
    return ("127.0.0.1" if host == "localhost" else host), int(port)


def render_server_properties(template: str, host: str, broker_port: int, data_dir: Path) -> str:
    """Fill the KRaft properties template; the controller listens on ``broker_port + 1``."""
    return string.Template(template).substitute(
        host=host, broker_port=broker_port, controller_port=broker_port + 1, data_dir=data_dir
    )


def pinned_kafka_version(pom_text: str) -> str:
    """The ``kafka.version`` property pinned in infra/kafka/pom.xml."""
    match = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", pom_text)
    if match is None:
        raise ServiceError(f"no <kafka.version> in {POM}")
    return match.group(1)


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (as Kafka's Uuid)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def is_cluster_id(text: str) -> bool:
    """Whether ``text`` looks like a KRaft cluster id (22 URL-safe base64 characters)."""
    return re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", text) is not None


def plan_topics(
    specs: Sequence[TopicSpec], existing: dict[str, int]
) -> tuple[list[TopicSpec], list[tuple[str, int, int]]]:
    """Topics to create, and ``(name, have, want)`` for existing topics with fewer partitions."""
    missing = [spec for spec in specs if spec.name not in existing]
    too_few = [
        (spec.name, existing[spec.name], spec.partitions)
        for spec in specs
        if spec.name in existing and existing[spec.name] < spec.partitions
    ]
    return missing, too_few


# --------------------------------------------------------------------------- install and run


def kafka_version() -> str:
    """The Kafka version pinned in infra/kafka/pom.xml."""
    return pinned_kafka_version(POM.read_text())


def _pom_stamp() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def install_kafka(paths: Paths) -> str:
    """Resolve the pinned Kafka jars into ``<state>/kafka/libs`` with Maven; skip if already there."""
    version, stamp = kafka_version(), paths.kafka_libs / ".pom-sha256"
    jar = paths.kafka_libs / f"kafka_2.13-{version}.jar"
    if jar.is_file() and stamp.is_file() and stamp.read_text().strip() == _pom_stamp():
        return f"kafka: jars for {version} already in {paths.kafka_libs}"
    mvn = shutil.which("mvn")
    if mvn is None:
        raise ServiceError("kafka: `mvn` not found on PATH; run `make setup` (installs maven)")
    shutil.rmtree(paths.kafka_libs, ignore_errors=True)
    cmd = [
        mvn,
        "-B",
        "-q",
        "--no-transfer-progress",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={paths.kafka_libs.resolve()}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not jar.is_file():
        raise ServiceError(f"kafka: resolving jars with Maven failed:\n{done.stdout}{done.stderr}")
    stamp.write_text(_pom_stamp() + "\n")
    return f"kafka: resolved Kafka {version} jars into {paths.kafka_libs}"


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise ServiceError("kafka: `java` not found on PATH; install a JDK 17 (`make setup`)")
    return java


def write_kafka_properties(paths: Paths, host: str, port: int) -> None:
    """Render infra/kafka/server.properties.template into the state dir."""
    text = render_server_properties(PROPERTIES_TEMPLATE.read_text(), host, port, paths.kafka_data.resolve())
    paths.kafka.mkdir(parents=True, exist_ok=True)
    paths.kafka_props.write_text(text)


def cluster_id(paths: Paths) -> str:
    """The stored KRaft cluster id, generated and stored on first use."""
    if paths.kafka_cluster_id.is_file():
        stored = paths.kafka_cluster_id.read_text().strip()
        if is_cluster_id(stored):
            return stored
    new = new_cluster_id()
    paths.kafka_cluster_id.write_text(new + "\n")
    return new


def format_kafka_storage(paths: Paths) -> str:
    """Format the KRaft storage once (skipped when meta.properties exists)."""
    if (paths.kafka_data / "meta.properties").is_file():
        return "kafka: storage already formatted"
    cmd = [
        _java(),
        "-Xmx256m",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={paths.logs.resolve()}",
        "-cp",
        f"{paths.kafka_libs.resolve()}/*",
        "kafka.tools.StorageTool",
        "format",
        "-t",
        cluster_id(paths),
        "-c",
        str(paths.kafka_props),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    log = paths.log_file("kafka-format")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise failure("kafka", "formatting KRaft storage failed", log)
    return f"kafka: formatted storage in {paths.kafka_data}"


def admin_client(settings: Settings) -> AdminClient:
    """A confluent-kafka AdminClient for the configured cluster."""
    config: dict[str, str | int | float | bool] = dict(settings.kafka.confluent_config())
    return AdminClient(config)


def kafka_healthy(settings: Settings, timeout: float = 3.0) -> bool:
    """Whether the brokers answer a metadata request (port checked first, to keep librdkafka quiet)."""
    endpoint = loopback_endpoint(settings.kafka.bootstrap_servers)
    if endpoint is not None and not port_open(*endpoint):
        return False
    try:
        metadata = admin_client(settings).list_topics(timeout=timeout)
    except Exception:
        return False
    return bool(metadata.brokers)


def kafka_command(paths: Paths) -> list[str]:
    """The JVM command line of the broker (heap from KAFKA_HEAP_OPTS, default 256-512 MiB)."""
    heap = os.environ.get("KAFKA_HEAP_OPTS", DEFAULT_KAFKA_HEAP).split()
    return [
        _java(),
        *heap,
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={paths.logs.resolve()}",
        "-cp",
        f"{paths.kafka_libs.resolve()}/*",
        "kafka.Kafka",
        str(paths.kafka_props.resolve()),
    ]


#: Kafka's operator tools (the kafka-tools jar beside the broker's) by the name `make kafka-tool` takes.
KAFKA_TOOLS = {
    "console-producer": "org.apache.kafka.tools.ConsoleProducer",
    "console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "topics": "org.apache.kafka.tools.TopicCommand",
    "get-offsets": "org.apache.kafka.tools.GetOffsetShell",
}
TOOLS_LOG4J_CONFIG = KAFKA_INFRA / "tools-log4j2.properties"


def kafka_tool_command(paths: Paths, tool: str, args: Sequence[str], bootstrap: str) -> list[str]:
    """The JVM command line of one of Kafka's tools against ``bootstrap`` (added unless given)."""
    if tool not in KAFKA_TOOLS:
        raise ServiceError(f"unknown Kafka tool {tool!r}; one of: {', '.join(sorted(KAFKA_TOOLS))}")
    if not (paths.kafka_libs / f"kafka-tools-{kafka_version()}.jar").is_file():
        raise ServiceError(f"the kafka-tools jar is not in {paths.kafka_libs}: run `make setup`")
    server = [] if "--bootstrap-server" in args else ["--bootstrap-server", bootstrap]
    return [
        _java(),
        "-Xmx256m",
        f"-Dlog4j2.configurationFile={TOOLS_LOG4J_CONFIG}",
        "-cp",
        f"{paths.kafka_libs.resolve()}/*",
        KAFKA_TOOLS[tool],
        *server,
        *args,
    ]


def start_kafka(settings: Settings, paths: Paths) -> list[str]:
    """Start the local KRaft broker unless it is up; return what was done."""
    endpoint = loopback_endpoint(settings.kafka.bootstrap_servers)
    if endpoint is None:
        return [f"kafka: {settings.kafka.bootstrap_servers} is not local; not starting a broker"]
    pid = owned_pid(paths, "kafka", "kafka.Kafka")
    if pid is None and port_open(*endpoint):
        if kafka_healthy(settings):
            return [f"kafka: already up at {settings.kafka.bootstrap_servers} (not started by infra.local)"]
        raise ServiceError(
            f"kafka: port {endpoint[1]} is in use by another process; free it or change "
            "EVALLOOP_KAFKA__BOOTSTRAP_SERVERS"
        )
    if pid is not None:  # ours: up, or still starting (another `up` may have just started it)
        if wait_for(
            lambda: kafka_healthy(settings, timeout=2.0), lambda: process_alive(pid), START_TIMEOUT_S
        ):
            return [f"kafka: already up (pid {pid}, {settings.kafka.bootstrap_servers})"]
        raise failure(
            "kafka", f"pid {pid} runs but does not answer; run `make down`", paths.log_file("kafka")
        )
    messages = [install_kafka(paths)]
    write_kafka_properties(paths, *endpoint)
    messages.append(format_kafka_storage(paths))
    started = time.monotonic()
    proc = spawn(kafka_command(paths), paths.log_file("kafka"), paths.pid_file("kafka"), paths.kafka)
    if not wait_for(
        lambda: kafka_healthy(settings, timeout=2.0), lambda: proc.poll() is None, START_TIMEOUT_S
    ):
        stop_pid(proc.pid, timeout=10.0)
        paths.pid_file("kafka").unlink(missing_ok=True)
        code = proc.poll()
        why = f"exited with code {code}" if code is not None else f"did not answer in {START_TIMEOUT_S:.0f}s"
        raise failure("kafka", f"broker {why} ({settings.kafka.bootstrap_servers})", paths.log_file("kafka"))
    took = time.monotonic() - started
    messages.append(
        f"kafka: started Kafka {kafka_version()} (pid {proc.pid}, "
        f"{settings.kafka.bootstrap_servers}) in {took:.1f}s; logs in {paths.logs}"
    )
    return messages


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create the loop's missing topics with their partitions and retention.ms; report mismatches."""
    admin = admin_client(settings)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise ServiceError(f"kafka: cannot list topics at {settings.kafka.bootstrap_servers}: {exc}") from exc
    existing = {name: len(meta.partitions) for name, meta in metadata.topics.items()}
    missing, too_few = plan_topics(settings.topics.all(), existing)
    messages = [
        f"kafka: topic {name} has {have} partitions, settings want {want} "
        "(partitions are never reduced; add them with kafka-topics --alter or recreate)"
        for name, have, want in too_few
    ]
    new = [
        NewTopic(
            spec.name,
            num_partitions=spec.partitions,
            replication_factor=spec.replication_factor,
            config={"retention.ms": str(spec.retention_ms)},
        )
        for spec in missing
    ]
    for name, future in (admin.create_topics(new, operation_timeout=timeout) if new else {}).items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise ServiceError(f"kafka: creating topic {name} failed: {exc}") from exc
        messages.append(f"kafka: created topic {name}")
    present = len(settings.topics.all()) - len(missing)
    messages.append(f"kafka: topics ready ({len(missing)} created, {present} already there)")
    return messages


def kafka_strays(paths: Paths) -> list[int]:
    """Live brokers started with this state dir's properties file (pid file lost or not)."""
    props = str(paths.kafka_props.resolve())
    return find_pids(lambda pid: "kafka.Kafka" in cmdline(pid) and props in cmdline(pid))

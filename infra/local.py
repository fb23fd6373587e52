"""Local loopback services for evalloop: a single-node KRaft Kafka and a Redis, for dev and CI.

Run from the repository root::

    python -m infra.local up        # install Kafka jars if needed, start Kafka + Redis, create topics
    python -m infra.local status    # print each service up/down
    python -m infra.local topics    # create the loop's topics on the configured cluster
    python -m infra.local down      # stop what `up` started (and a Ray left under the state dir)
    python -m infra.local install   # resolve the pinned Kafka jars from Maven Central only

Everything lives under ``settings.state_dir`` (default ``.evalloop``): jars, data, pid files, logs.
Ray is not started here; the code that needs Ray starts a local head with ``<state>/ray`` as its
temp dir, and ``down`` stops such a Ray if one is still running.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from schemas.settings import Settings, TopicSpec, load_settings
from streams.status import redis_from_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
KAFKA_INFRA = REPO_ROOT / "infra" / "kafka"
POM = KAFKA_INFRA / "pom.xml"
LOG4J_CONFIG = KAFKA_INFRA / "log4j2.properties"
PROPERTIES_TEMPLATE = KAFKA_INFRA / "server.properties.template"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
DEFAULT_KAFKA_HEAP = "-Xms256m -Xmx512m"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0


class ServiceError(RuntimeError):
    """A service could not be installed, started or reached; the message says which and why."""


# --------------------------------------------------------------------------- pure helpers


@dataclass(frozen=True)
class Paths:
    """Where everything of the local services lives under the state dir."""

    state: Path

    @property
    def logs(self) -> Path:
        """Log files of all services."""
        return self.state / "logs"

    @property
    def run(self) -> Path:
        """Pid files."""
        return self.state / "run"

    @property
    def kafka(self) -> Path:
        """Kafka's home: libs, data, rendered properties, cluster id."""
        return self.state / "kafka"

    @property
    def kafka_libs(self) -> Path:
        """The jars resolved from Maven Central."""
        return self.kafka / "libs"

    @property
    def kafka_data(self) -> Path:
        """KRaft metadata and topic data (log.dirs)."""
        return self.kafka / "data"

    @property
    def kafka_props(self) -> Path:
        """The rendered server.properties."""
        return self.kafka / "server.properties"

    @property
    def kafka_cluster_id(self) -> Path:
        """The KRaft cluster id, generated once."""
        return self.kafka / "cluster-id"

    @property
    def redis(self) -> Path:
        """Redis working dir (and its rendered config)."""
        return self.state / "redis"

    @property
    def ray(self) -> Path:
        """Ray's temp dir (used by the code that starts Ray, not here)."""
        return self.state / "ray"

    def pid_file(self, service: str) -> Path:
        """The pid file of ``service``."""
        return self.run / f"{service}.pid"

    def log_file(self, service: str) -> Path:
        """The stdout/stderr log of ``service``."""
        return self.logs / f"{service}.log"


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


def redis_loopback_endpoint(url: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``redis://`` URL on loopback, else None (TLS, unix socket or remote)."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or parts.hostname not in LOOPBACK_HOSTS:
        return None
    host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
    return host, parts.port or 6379


def render_server_properties(template: str, host: str, broker_port: int, data_dir: Path) -> str:
    """Fill the KRaft properties template; the controller listens on ``broker_port + 1``."""
    return string.Template(template).substitute(
        host=host, broker_port=broker_port, controller_port=broker_port + 1, data_dir=data_dir
    )


def _redis_quote(value: str) -> str:
    """Quote a value for redis.conf (double quotes, backslash escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_redis_conf(
    host: str, port: int, workdir: Path, password: str | None = None, username: str | None = None
) -> str:
    """A redis.conf: loopback only, no persistence, logs to stdout, optional password / ACL user."""
    lines = [
        f"bind {host}",
        f"port {port}",
        "protected-mode yes",
        'save ""',
        "appendonly no",
        f"dir {_redis_quote(str(workdir))}",
        "daemonize no",
        'logfile ""',
    ]
    if password:
        lines.append(f"requirepass {_redis_quote(password)}")
        if username and username != "default":
            lines.append(f"user {username} on {_redis_quote('>' + password)} ~* &* +@all")
    return "\n".join(lines) + "\n"


def parse_pid(text: str) -> int | None:
    """The pid in a pid file's text, or None if it holds no positive integer."""
    text = text.strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


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


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a text file ('' if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- processes


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (non-zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def cmdline(pid: int) -> str:
    """The command line of ``pid`` with spaces between arguments ('' if gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def find_pids(match: Callable[[int], bool]) -> list[int]:
    """Live pids (not this process) for which ``match(pid)`` is true."""
    pids = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]
    return [pid for pid in pids if pid != os.getpid() and process_alive(pid) and match(pid)]


def owned_pid(paths: Paths, service: str, marker: str) -> int | None:
    """The pid from ``service``'s pid file if that process is alive and its cmdline has ``marker``."""
    try:
        pid = parse_pid(paths.pid_file(service).read_text())
    except OSError:
        return None
    if pid is None or not process_alive(pid) or marker not in cmdline(pid):
        return None
    return pid


def spawn(cmd: Sequence[str], log_path: Path, pid_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` detached (own session) with output appended to ``log_path``; write its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_path.write_text(f"{proc.pid}\n")
    return proc


def wait_for(check: Callable[[], bool], alive: Callable[[], bool], timeout: float) -> bool:
    """Poll ``check`` until true; False if ``alive()`` turns false or ``timeout`` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        if not alive():
            return False
        time.sleep(0.25)
    return False


def stop_pid(pid: int, timeout: float = STOP_TIMEOUT_S) -> bool:
    """SIGTERM ``pid``'s process group (or just ``pid``), wait, SIGKILL after ``timeout``; True if gone."""
    try:
        group = os.getpgid(pid)
    except ProcessLookupError:
        return True
    kill: Callable[[int], None] = (
        (lambda sig: os.killpg(group, sig)) if group == pid else (lambda sig: os.kill(pid, sig))
    )
    for sig, wait_s in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            kill(sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not process_alive(pid):
                _wait_reaped(pid)
                return True
            time.sleep(0.2)
    return not process_alive(pid)


def _wait_reaped(pid: int, timeout: float = 5.0) -> None:
    """Give init a moment to reap the dead ``pid``, so no <defunct> entry is left for pgrep to show."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def failure(service: str, what: str, log_path: Path) -> ServiceError:
    """A ServiceError naming the log file and quoting its tail."""
    return ServiceError(f"{service}: {what}; log: {log_path}\n--- tail of {log_path} ---\n{tail(log_path)}")


# --------------------------------------------------------------------------- kafka


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


# --------------------------------------------------------------------------- redis


def redis_client(settings: Settings) -> redis.Redis:
    """A redis-py client for the configured URL and credentials (short timeouts: health checks)."""
    return redis_from_settings(settings, connect_timeout_s=1.0, timeout_s=2.0)


def redis_healthy(settings: Settings) -> bool:
    """Whether Redis answers PING with the configured credentials."""
    endpoint = redis_loopback_endpoint(settings.redis.url)
    if endpoint is not None and not port_open(*endpoint):
        return False
    client = redis_client(settings)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def start_redis(settings: Settings, paths: Paths) -> list[str]:
    """Start the local Redis unless it is up; return what was done."""
    endpoint = redis_loopback_endpoint(settings.redis.url)
    if endpoint is None:
        return [f"redis: {settings.redis.url} is not a local redis:// URL; not starting Redis"]
    pid = owned_pid(paths, "redis", "redis-server")
    if pid is not None:  # ours: up, or still starting
        if wait_for(lambda: redis_healthy(settings), lambda: process_alive(pid), 30.0):
            return [f"redis: already up (pid {pid}, {settings.redis.url})"]
        raise failure(
            "redis", f"pid {pid} runs but does not answer PING; run `make down`", paths.log_file("redis")
        )
    if port_open(*endpoint):
        if redis_healthy(settings):
            return [f"redis: already up at {settings.redis.url} (not started by infra.local)"]
        raise ServiceError(
            f"redis: port {endpoint[1]} is in use by another process; free it or change EVALLOOP_REDIS__URL"
        )
    server = shutil.which("redis-server")
    if server is None:
        raise ServiceError(
            "redis: `redis-server` not found on PATH; run `make setup` (installs Debian's "
            "redis-server package, /usr/bin/redis-server; the package does not start it)"
        )
    paths.redis.mkdir(parents=True, exist_ok=True)
    conf = paths.redis / "redis.conf"
    password = settings.redis.password.get_secret_value() if settings.redis.password else None
    conf.touch(mode=0o600)
    conf.chmod(0o600)
    conf.write_text(render_redis_conf(*endpoint, paths.redis.resolve(), password, settings.redis.username))
    proc = spawn([server, str(conf.resolve())], paths.log_file("redis"), paths.pid_file("redis"), paths.redis)
    if not wait_for(lambda: redis_healthy(settings), lambda: proc.poll() is None, 30.0):
        stop_pid(proc.pid, timeout=5.0)
        paths.pid_file("redis").unlink(missing_ok=True)
        code = proc.poll()
        why = f"exited with code {code}" if code is not None else "did not answer PING in 30s"
        raise failure("redis", f"redis-server {why} ({settings.redis.url})", paths.log_file("redis"))
    return [f"redis: started (pid {proc.pid}, {settings.redis.url}); log {paths.log_file('redis')}"]


# --------------------------------------------------------------------------- down / status


def _stop_service(paths: Paths, service: str, marker: str, strays: Iterable[int]) -> str:
    pids = set(strays)
    pid = owned_pid(paths, service, marker)
    if pid is not None:
        pids.add(pid)
    for each in sorted(pids):
        if not stop_pid(each):
            raise ServiceError(f"{service}: pid {each} survived SIGKILL")
    paths.pid_file(service).unlink(missing_ok=True)
    return (
        f"{service}: stopped (pid {', '.join(map(str, sorted(pids)))})" if pids else f"{service}: not running"
    )


def _same_path(link: str, target: Path) -> bool:
    try:
        return Path(os.readlink(link)) == target.resolve()
    except OSError:
        return False


def kafka_strays(paths: Paths) -> list[int]:
    """Live brokers started with this state dir's properties file (pid file lost or not)."""
    props = str(paths.kafka_props.resolve())
    return find_pids(lambda pid: "kafka.Kafka" in cmdline(pid) and props in cmdline(pid))


def redis_strays(paths: Paths) -> list[int]:
    """Live redis-servers whose working dir is this state dir's redis dir."""
    return find_pids(
        lambda pid: "redis-server" in cmdline(pid) and _same_path(f"/proc/{pid}/cwd", paths.redis)
    )


def ray_pids(paths: Paths) -> list[int]:
    """Live Ray components (run from the ray package) whose command line mentions ``<state>/ray``."""
    ray_dir = str(paths.ray.resolve())
    return find_pids(lambda pid: ray_dir in cmdline(pid) and "site-packages/ray/" in cmdline(pid))


def parent_pids() -> dict[int, int]:
    """``{pid: parent pid}`` of every process."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if stat:
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    return parents


def with_descendants(roots: Iterable[int], parents: dict[int, int]) -> set[int]:
    """``roots`` and every process below them in the ``parents`` tree."""
    found = set(roots)
    while True:
        more = {pid for pid, parent in parents.items() if parent in found} - found
        if not more:
            return found
        found |= more


def stop_ray(paths: Paths) -> str:
    """Stop a Ray started with ``<state>/ray`` as temp dir: its processes and their workers only.

    Not ``ray stop --force``: that kills every Ray on the machine, other sessions' included.
    """
    roots = ray_pids(paths) if paths.ray.is_dir() else []
    if not roots:
        return "ray: not running"
    pids = with_descendants(roots, parent_pids()) - {os.getpid()}
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while any(process_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.2)
    left = [pid for pid in pids if process_alive(pid)]
    if left:
        raise ServiceError(f"ray: processes {left} survived SIGKILL")
    return f"ray: stopped ({len(pids)} processes under {paths.ray})"


def down(paths: Paths) -> list[str]:
    """Stop Ray (if ours), Kafka and Redis; remove pid files; verify nothing of ours is left."""
    messages = [
        stop_ray(paths),
        _stop_service(paths, "kafka", "kafka.Kafka", kafka_strays(paths)),
        _stop_service(paths, "redis", "redis-server", redis_strays(paths)),
    ]
    left = kafka_strays(paths) + redis_strays(paths)
    if left:
        raise ServiceError(f"processes still running after down: {left}")
    return messages


def status(settings: Settings, paths: Paths) -> list[str]:
    """One line per service: up/down, pid and address."""
    kafka_pid = owned_pid(paths, "kafka", "kafka.Kafka")
    redis_pid = owned_pid(paths, "redis", "redis-server")
    kafka_up, redis_up = kafka_healthy(settings), redis_healthy(settings)
    ray_count = len(ray_pids(paths)) if paths.ray.is_dir() else 0
    return [
        f"kafka: {'up' if kafka_up else 'down'} ({settings.kafka.bootstrap_servers}, "
        f"{f'pid {kafka_pid}' if kafka_pid else 'not started by infra.local'}, pinned {kafka_version()})",
        f"redis: {'up' if redis_up else 'down'} ({settings.redis.url}, "
        f"{f'pid {redis_pid}' if redis_pid else 'not started by infra.local'})",
        f"ray:   {f'{ray_count} processes under {paths.ray}' if ray_count else 'not running'} "
        "(started by the code that needs it)",
    ]


# --------------------------------------------------------------------------- CLI


def up(settings: Settings, paths: Paths, emit: Callable[[str], None] = print) -> bool:
    """Start Kafka and Redis (idempotent) and create the loop's topics; True if all were already up."""
    kafka, redis_ = start_kafka(settings, paths), []
    for line in kafka:
        emit(line)
    redis_ = start_redis(settings, paths)
    for line in redis_:
        emit(line)
    if loopback_endpoint(settings.kafka.bootstrap_servers):
        for line in ensure_topics(settings):
            emit(line)
    already = "already up" in kafka[-1] and "already up" in redis_[-1]
    emit("all services already up" if already else "all services up")
    return already


@contextlib.contextmanager
def state_lock(paths: Paths) -> Iterator[None]:
    """Serialize `up`/`down` runs on one state dir (concurrent `make up`s must not start two brokers)."""
    paths.run.mkdir(parents=True, exist_ok=True)
    with (paths.run / "infra-local.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _emit("waiting for another `python -m infra.local` run on this state dir ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _emit(line: str) -> None:
    print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m infra.local up|down|status|topics|install``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m infra.local", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "topics", "install"])
    args = parser.parse_args(argv)
    settings = load_settings()
    paths = Paths(settings.state_dir)
    actions: dict[str, Callable[[], list[str]]] = {
        "down": lambda: down(paths),
        "status": lambda: status(settings, paths),
        "topics": lambda: ensure_topics(settings),
        "install": lambda: [install_kafka(paths)],
    }
    # up/down/install change the state dir: one at a time (two concurrent `make up`s, one broker).
    serialize = state_lock(paths) if args.command in ("up", "down", "install") else contextlib.nullcontext()
    try:
        with serialize:
            if args.command == "up":
                up(settings, paths, _emit)
            else:
                for line in actions[args.command]():
                    _emit(line)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

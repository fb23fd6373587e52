"""Process, pid-file and state-dir helpers shared by the local Kafka and Redis services.

Everything here is service-agnostic: where files live under the state dir (``Paths``), starting a
detached process with a pid file, finding and stopping processes (by pid, by process group, with
their descendants) and probing a TCP port. ``infra.local`` re-exports these names.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
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


def parse_pid(text: str) -> int | None:
    """The pid in a pid file's text, or None if it holds no positive integer."""
    text = text.strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


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


#: Listening ports for test and benchmark servers come from below Linux's ephemeral range
#: (32768-60999): a port the kernel handed out by ``bind(0)`` can be taken by any outgoing
#: connection (Kafka, Redis, Ray clients) before the server binds it, which made Ray Serve's
#: proxy fail to start now and then ("Failed to bind to address").
LISTEN_PORTS = (20000, 32000)


def free_port(host: str = "127.0.0.1", ports: tuple[int, int] = LISTEN_PORTS) -> int:
    """A port in ``ports`` nothing listens on now (tried in a random order)."""
    import random

    candidates = list(range(*ports))
    random.shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise ServiceError(f"no free port in {ports[0]}-{ports[1]} on {host}")


def failure(service: str, what: str, log_path: Path) -> ServiceError:
    """A ServiceError naming the log file and quoting its tail."""
    return ServiceError(f"{service}: {what}; log: {log_path}\n--- tail of {log_path} ---\n{tail(log_path)}")


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

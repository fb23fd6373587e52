"""The local Redis: config rendering, start, health check and finding strays.

``redis-server`` comes from the system (Debian's package); it runs loopback-only without
persistence, with the configured password / ACL user. ``infra.local`` re-exports these names.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import redis

from infra.processes import (
    LOOPBACK_HOSTS,
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
from schemas.settings import Settings
from streams.status import redis_from_settings


def redis_loopback_endpoint(url: str) -> tuple[str, int] | None:
    """``(host, port)`` of a ``redis://`` URL on loopback, else None (TLS, unix socket or remote)."""
    parts = urlsplit(url)
    if parts.scheme != "redis" or parts.hostname not in LOOPBACK_HOSTS:
        return None
    host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname
    return host, parts.port or 6379


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


def _same_path(link: str, target: Path) -> bool:
    try:
        return Path(os.readlink(link)) == target.resolve()
    except OSError:
        return False


def redis_strays(paths: Paths) -> list[int]:
    """Live redis-servers whose working dir is this state dir's redis dir."""
    return find_pids(
        lambda pid: "redis-server" in cmdline(pid) and _same_path(f"/proc/{pid}/cwd", paths.redis)
    )

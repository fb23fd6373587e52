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
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from infra.kafka_server import (
    KAFKA_TOOLS,
    ensure_topics,
    install_kafka,
    kafka_healthy,
    kafka_strays,
    kafka_tool_command,
    kafka_version,
    loopback_endpoint,
    start_kafka,
)
from infra.processes import (
    Paths,
    ServiceError,
    cmdline,
    find_pids,
    owned_pid,
    parent_pids,
    process_alive,
    stop_pid,
    with_descendants,
)
from infra.redis_server import (
    redis_healthy,
    redis_strays,
    start_redis,
)
from schemas.settings import Settings, load_settings

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


def ray_pids(paths: Paths) -> list[int]:
    """Live Ray components (run from the ray package) whose command line mentions ``<state>/ray``."""
    ray_dir = str(paths.ray.resolve())
    return find_pids(lambda pid: ray_dir in cmdline(pid) and "site-packages/ray/" in cmdline(pid))


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


def reset(paths: Paths) -> list[str]:
    """Stop everything, then delete the topics' data, Redis', Ray's and the logs; keep the jars.

    The next `make up` formats a fresh KRaft cluster and creates the topics again, without
    re-resolving the Kafka jars from Maven Central.
    """
    messages = down(paths)
    keep = {paths.kafka_libs.resolve(), paths.run.resolve()}
    removed: list[str] = []
    for parent in (paths.state, paths.kafka):
        for entry in sorted(parent.iterdir()) if parent.is_dir() else []:
            if entry.resolve() in keep or entry.resolve() == paths.kafka.resolve():
                continue
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
            removed.append(str(entry))
    return [*messages, f"reset: removed {len(removed)} entries, kept the jars in {paths.kafka_libs}"]


def run_tool(settings: Settings, paths: Paths, rest: Sequence[str]) -> int:
    """Run one of Kafka's tools (``KAFKA_TOOLS``) against the configured brokers; its exit code."""
    if not rest:
        raise ServiceError(f"name a tool: one of {', '.join(sorted(KAFKA_TOOLS))}")
    command = kafka_tool_command(paths, rest[0], list(rest[1:]), settings.kafka.bootstrap_servers)
    return subprocess.run(command, check=False).returncode


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
    parser.add_argument("command", choices=["up", "down", "status", "topics", "install", "reset", "tool"])
    parser.add_argument("rest", nargs=argparse.REMAINDER, help="tool: NAME and its arguments")
    args = parser.parse_args(argv)
    settings = load_settings()
    paths = Paths(settings.state_dir)
    if args.command == "tool":
        try:
            return run_tool(settings, paths, args.rest)
        except ServiceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    actions: dict[str, Callable[[], list[str]]] = {
        "down": lambda: down(paths),
        "status": lambda: status(settings, paths),
        "topics": lambda: ensure_topics(settings),
        "install": lambda: [install_kafka(paths)],
        "reset": lambda: reset(paths),
    }
    # up/down/install/reset change the state dir: one at a time (two concurrent `make up`s, one broker).
    changes_state = args.command in ("up", "down", "install", "reset")
    serialize = state_lock(paths) if changes_state else contextlib.nullcontext()
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

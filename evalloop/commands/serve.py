"""`evalloop serve`: run the teacher on Ray Serve and print where it answers.

Without ``--detach`` it starts (or joins) Ray, deploys, prints the URL and teacher version, and
blocks until Ctrl-C / SIGTERM, then removes the app (and stops Serve and Ray if it started them).
``--detach`` deploys and exits, leaving the app running; it needs a Ray cluster that outlives
this process, so it is refused unless ``EVALLOOP_RAY__ADDRESS`` points at one (e.g. ``auto``
after ``ray start --head``). See docs/serving.md.

Exit codes: 0 after a clean stop or detach, 1 if the deployment fails, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from schemas.policy import PolicyError, load_policy
from schemas.settings import Settings, load_settings


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand to the top-level ``evalloop`` parser."""
    p = subparsers.add_parser(
        "serve",
        help="deploy the teacher on Ray Serve (local head, or EVALLOOP_RAY__ADDRESS) and serve it",
        description="Start (or join) Ray, deploy the teacher under /teacher and print its URL.",
    )
    p.add_argument("--policy", type=Path, default=None, metavar="P", help="policy YAML (default: settings)")
    p.add_argument("--backend", default=None, metavar="NAME", help="teacher backend (default: the policy's)")
    p.add_argument("--replicas", type=_positive_int, default=None, metavar="N", help="fixed replica count")
    p.add_argument(
        "--option",
        action="append",
        default=[],
        type=_option,
        metavar="KEY=VALUE",
        help="backend option, repeatable: e.g. base_url=http://127.0.0.1:8088/v1 model=smollm2-135m "
        "timeout_s=60 max_retries=2 concurrency=4 for --backend openai (numbers are parsed; default: "
        "the policy's teacher.openai)",
    )
    p.add_argument(
        "--detach",
        action="store_true",
        help="deploy and exit; needs an existing cluster (EVALLOOP_RAY__ADDRESS)",
    )
    p.set_defaults(func=run)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _option(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    for convert in (int, float):
        try:
            return key.strip(), convert(value)
        except ValueError:
            pass
    return key.strip(), value


def _option_problem(backend: str, options: dict[str, Any]) -> str | None:
    from judges.registry import backend_names, unknown_options

    if backend not in backend_names():
        return f"unknown teacher backend {backend!r}; known backends: {', '.join(backend_names())}"
    unknown = unknown_options(backend, options)
    return f"the {backend} backend takes no option(s) {', '.join(unknown)}" if unknown else None


def _settings_for(args: argparse.Namespace) -> Settings:
    from workers.config import with_replicas

    settings = load_settings()
    if args.replicas is not None:
        settings = settings.model_copy(update={"serve": with_replicas(settings.serve, args.replicas)})
    return settings


def run(args: argparse.Namespace) -> int:
    """Deploy, print the endpoint, then block (or detach)."""
    settings = _settings_for(args)
    policy_path: Path = args.policy or settings.policy_file
    if args.detach and not settings.ray.address:
        print(
            "evalloop serve: --detach needs a Ray cluster that outlives this process: run `ray start --head` "
            "and set EVALLOOP_RAY__ADDRESS=auto (or your cluster's address)",
            file=sys.stderr,
        )
        return 2
    try:
        policy = load_policy(policy_path)
    except PolicyError as error:
        print(f"evalloop serve: bad policy {policy_path}: {error}", file=sys.stderr)
        return 2
    problem = _option_problem(
        args.backend or settings.serve.backend or policy.teacher.backend, dict(args.option)
    )
    if problem:
        print(f"evalloop serve: {problem}", file=sys.stderr)
        return 2
    return _deploy_and_wait(settings, policy_path, args.backend, dict(args.option), detach=args.detach)


def _deploy_and_wait(
    settings: Settings, policy_path: Path, backend: str | None, options: dict[str, Any], *, detach: bool
) -> int:
    from ray import serve

    from workers.config import http_url
    from workers.deployment import deploy
    from workers.runtime import shutdown

    try:
        handle = deploy(settings, policy_path, backend=backend, options=options)
        info = handle.info.remote().result(timeout_s=120)
    except Exception as error:
        print(f"evalloop serve: deployment failed: {error}", file=sys.stderr)
        if not settings.ray.address:
            shutdown()  # we started this local head: leave nothing behind
        return 1
    print(f"teacher {info['teacher_version']} (policy {info['policy_version']}, backend {info['backend']})")
    print(f"serving at {http_url(settings)}  (app {settings.ray.app_name!r})", flush=True)
    if detach:
        return 0
    _wait_for_stop_signal()
    print("stopping...", flush=True)
    if settings.ray.address:
        serve.delete(settings.ray.app_name)  # leave the shared cluster's other apps alone
    else:
        shutdown()
    return 0


def _wait_for_stop_signal() -> None:
    stop = threading.Event()

    def _on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

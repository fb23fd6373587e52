"""`evalloop worker`: run the Faust worker (all three agents) against the configured services."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import yaml


def register(subparsers: Any) -> None:
    """Add the `worker` subcommand."""
    parser = subparsers.add_parser(
        "worker",
        help="run the streaming worker: validate/sample, judge (via Ray Serve), aggregate/alert",
        description="Runs the Faust worker. Stream knobs: EVALLOOP_STREAM_* (see docs/operations.md).",
    )
    parser.add_argument(
        "--policy", type=Path, default=None, help="policy YAML (default: settings.policy_file)"
    )
    parser.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(func=run)


def load_webhooks(path: str | None) -> list[Any]:
    """Webhook targets from a JSON/YAML list file (none when ``path`` is None)."""
    from streams.notify import WebhookTarget

    if not path:
        return []
    text = Path(path).read_text(encoding="utf-8")
    data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    return [WebhookTarget.model_validate(item) for item in data or []]


def build(policy_path: Path | None = None) -> Any:
    """The EvalloopApp wired to the real Redis, the Serve teacher and webhooks."""
    import httpx

    from schemas.policy import load_policy
    from schemas.settings import load_settings
    from streams.app import Components, StreamSettings, create_app
    from streams.notify import HttpxWebhookSender
    from streams.status import LoopStateStore, redis_from_settings
    from streams.teacher_client import CircuitBreaker, ServeTeacherClient, serve_url
    from streams.window_store import AlertStateStore, WindowStore

    settings = load_settings()
    stream = StreamSettings()
    policy = load_policy(policy_path or settings.policy_file)
    client = redis_from_settings(settings)
    prefix = settings.redis.key_prefix
    breaker = CircuitBreaker(stream.breaker_failures, stream.breaker_cooldown_s)
    teacher = ServeTeacherClient(
        stream.teacher_url or serve_url(settings.ray.serve_host, settings.ray.serve_port),
        policy.version,
        max_concurrency=stream.teacher_max_concurrency,
        timeout_s=stream.teacher_timeout_s,
        retries=stream.teacher_retries,
        max_batch=stream.teacher_max_batch,
        breaker=breaker,
        policy=policy,
    )
    webhooks = load_webhooks(stream.webhooks_file)
    components = Components(
        settings=settings,
        stream=stream,
        policy=policy,
        teacher=teacher,
        windows=WindowStore(client, prefix, stream.bucket_seconds, stream.window_ttl_s),
        alert_states=AlertStateStore(client, prefix),
        breaker=breaker,
        webhooks=webhooks,
        webhook_sender=HttpxWebhookSender(httpx.Client()) if webhooks else None,
        loop_state=LoopStateStore(client, prefix),
    )
    return create_app(components)


def run(args: argparse.Namespace) -> int:
    """Build the app and run the worker until interrupted (SIGINT/SIGTERM)."""
    import faust

    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loop = build(args.policy)
    worker = faust.Worker(loop.app, loglevel=args.loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0

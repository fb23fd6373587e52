"""`evalloop worker`: run the Faust worker (all three agents) against the configured services."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from streams.correction import WindowCorrector

log = logging.getLogger("evalloop.worker")


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
    parser.add_argument(
        "--allow-policy-version-bump",
        action="store_true",
        help="accept a teacher serving another version of the same policy (same name, scale and "
        "failure modes); default: refuse (EVALLOOP_STREAM_ALLOW_POLICY_VERSION_BUMP)",
    )
    parser.set_defaults(func=run)


def load_webhooks(path: str | None) -> list[Any]:
    """Webhook targets from a JSON/YAML list file (none when ``path`` is None)."""
    from streams.notify import WebhookTarget

    if not path:
        return []
    text = Path(path).read_text(encoding="utf-8")
    data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    return [WebhookTarget.model_validate(item) for item in data or []]


def build(policy_path: Path | None = None, allow_policy_version_bump: bool = False) -> Any:
    """The EvalloopApp wired to the real Redis, the Serve teacher and webhooks, after checking
    that Kafka (with the loop's topics), Redis and a teacher of the same policy answer."""
    import httpx

    from schemas.golden import load_canaries
    from schemas.policy import load_policy
    from schemas.settings import load_settings
    from streams.app import create_app
    from streams.config import StreamSettings
    from streams.engine import CachedStates, EngineWindows
    from streams.notify import HttpxWebhookSender
    from streams.services import require_kafka, require_redis
    from streams.stages import Components
    from streams.status import LoopStateStore, redis_from_settings
    from streams.teacher_client import CircuitBreaker, ServeTeacherClient, check_teacher, serve_url
    from streams.telemetry import start_telemetry
    from streams.window_store import AlertStateStore, WindowStore

    settings = load_settings()
    stream = StreamSettings()
    policy = load_policy(policy_path or settings.policy_file)
    webhooks = load_webhooks(stream.webhooks_file)
    require_kafka(settings, topics=tuple(spec.name for spec in settings.topics.all()))
    client = redis_from_settings(settings)
    require_redis(settings, client)
    url = stream.teacher_url or serve_url(settings.ray.serve_host, settings.ray.serve_port)
    allow_bump = allow_policy_version_bump or stream.allow_policy_version_bump
    info = check_teacher(url, policy, allow_version_bump=allow_bump, wait_s=stream.teacher_startup_wait_s)
    log.info(
        "teacher %s at %s grades for policy %s", info.get("teacher_version"), url, info.get("policy_version")
    )
    prefix = settings.redis.key_prefix
    corrector = calibration_for(settings.calibration_dir, str(info.get("teacher_version")), policy.version)
    canaries = load_canaries(policy)
    if policy.canaries is not None:
        log.info(
            "golden canaries: %d items of the canary split, after %.0f%% of sampled events",
            len(canaries),
            100 * policy.canaries.rate,
        )
    telemetry = start_telemetry(stream.metrics_host, stream.metrics_port)
    breaker = CircuitBreaker(stream.breaker_failures, stream.breaker_cooldown_s)
    teacher = ServeTeacherClient(
        url,
        policy.version,
        max_concurrency=stream.teacher_max_concurrency,
        timeout_s=stream.teacher_timeout_s,
        retries=stream.teacher_retries,
        max_batch=stream.teacher_max_batch,
        breaker=breaker,
        policy=policy,
        metrics=telemetry.metrics,
    )
    loop_state = LoopStateStore(client, prefix)
    loop_state.set_teacher_version(str(info.get("teacher_version")))
    components = Components(
        settings=settings,
        stream=stream,
        policy=policy,
        teacher=teacher,
        windows=EngineWindows.for_policy(
            WindowStore(client, prefix, stream.bucket_seconds, stream.window_ttl_s),
            policy,
            horizon=loop_state.latest_event_time,
        ),
        alert_states=CachedStates(AlertStateStore(client, prefix)),
        breaker=breaker,
        webhooks=webhooks,
        webhook_sender=HttpxWebhookSender(httpx.Client()) if webhooks else None,
        loop_state=loop_state,
        corrector=corrector,
        canaries=canaries,
        metrics=telemetry.metrics,
        tracing=telemetry.tracing,
        refresh_gauges=gauge_refresher(settings, policy, client, stream, telemetry.metrics),
    )
    return create_app(components)


def gauge_refresher(settings: Any, policy: Any, client: Any, stream: Any, metrics: Any) -> Callable[[], None]:
    """Reads what ``evalloop status`` shows (its default: the longest rule window) and the
    consumer group's lag, and sets the gauges from them."""
    from streams.offsets import group_lag
    from streams.status import collect, known_windows
    from streams.telemetry import status_gauges

    windows = known_windows(policy)
    window_s = windows[-1] if windows else 3600
    topics = [settings.topics.events.name, settings.topics.samples.name, settings.topics.judgments.name]

    def refresh() -> None:
        report = collect(settings, policy, client, window_s, stream.bucket_seconds)
        status_gauges(metrics, report, group_lag(settings, stream.app_id, topics))

    return refresh


def calibration_for(directory: Path, teacher_version: str, policy_version: str) -> WindowCorrector | None:
    """The teacher's calibration as a corrector, saying at start-up which one (or warning: none)."""
    from streams.correction import find_corrector

    corrector, message = find_corrector(directory, teacher_version, policy_version)
    (log.info if corrector is not None else log.warning)("%s", message)
    return corrector


def run(args: argparse.Namespace) -> int:
    """Build the app and run the worker until interrupted (SIGINT/SIGTERM)."""
    import faust

    from streams.offsets import undecodable_batch

    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    loop = build(args.policy, args.allow_policy_version_bump)
    worker = faust.Worker(loop.app, loglevel=args.loglevel, quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as stop:  # mode exits through sys.exit; the crash is its context
        batch = undecodable_batch(stop.__context__)
        if batch is None:
            raise
        print(unreadable_batch_line(batch, stop.__context__), file=sys.stderr)
        return EXIT_UNREADABLE_BATCH
    return 0


#: Exit code when the Kafka client cannot read a record batch (a restart would fail the same way).
EXIT_UNREADABLE_BATCH = 3


def unreadable_batch_line(batch: Any, error: BaseException | None) -> str:
    """The one line an operator needs: which records, why, and the command that skips them."""
    last = batch.next_offset - 1
    where = f"{batch.topic}[{batch.partition}] offsets {batch.first}..{last}"
    return (
        f"evalloop worker: cannot read the record batch at {where} ({error}); install the codec "
        f"(`make setup`) or skip it, dead-lettered: evalloop offsets skip --topic {batch.topic} "
        f"--partition {batch.partition} --to {batch.next_offset}"
    )

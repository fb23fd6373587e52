"""The Ray Serve teacher deployment: any ``Teacher`` backend behind a handle and an HTTP route.

Each replica loads the policy from ``policy_path`` and builds its backend once, in ``__init__``
(the embedding teacher loads a model). ``judge`` fans every request of a call through the
``@serve.batch``-decorated ``judge_one``, so many small concurrent calls become one backend batch;
the backend runs in a worker thread so health checks and the info route answer meanwhile.

HTTP (mounted at ``/teacher``): ``POST`` ``{"requests": [JudgeRequest...]}`` answers
``{"judgments": [Judgment...]}`` (400 naming the bad field, 413 for too many requests);
``GET`` answers the replica's info (503 if unhealthy). See docs/serving.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from ray.serve import Application, Deployment
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from judges.base import JudgeRequest, error_judgment
from judges.registry import backend_names, build_teacher, unknown_options
from schemas.base import describe_validation_error
from schemas.judgments import Judgment
from schemas.policy import load_policy
from schemas.settings import ServeSettings, Settings, load_settings
from workers.config import ROUTE_PREFIX, SERVE_LOGGING_CONFIG, deployment_options
from workers.metrics import LazyReplicaMetrics
from workers.runtime import start_local_ray, start_serve

DEPLOYMENT_NAME = "TeacherDeployment"
#: Consecutive backend exceptions after which ``check_health`` fails and Serve replaces the replica.
MAX_CONSECUTIVE_FAILURES = 3
#: Request bodies above this many bytes per allowed request are refused with 413 unparsed.
BODY_BYTES_PER_REQUEST = 16_384


class _JudgeBody(BaseModel):
    """The HTTP request body."""

    model_config = ConfigDict(extra="forbid")

    requests: list[JudgeRequest] = Field(default_factory=list)


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


class TeacherReplica:
    """One replica: a policy, a backend built once, dynamic batching in front of it.

    Plain class; ``TeacherDeployment`` is its Serve deployment. ``judge`` needs a replica context
    (``@serve.batch``); the HTTP validation paths and ``_judge_batch`` work on a bare instance.
    """

    def __init__(
        self,
        policy_path: str,
        backend: str | None = None,
        options: dict[str, Any] | None = None,
        workdir: str | None = None,
    ) -> None:
        if workdir:
            os.chdir(workdir)  # relative artifact paths in the policy resolve like in the driver
        self._policy = load_policy(policy_path)
        self._backend = backend or self._policy.teacher.backend
        self._teacher = build_teacher(self._policy, backend, **(options or {}))
        defaults = ServeSettings()
        self._max_requests = defaults.max_requests_per_call
        self._max_batch_size = defaults.max_batch_size
        self._batch_wait_timeout_s = defaults.batch_wait_timeout_s
        self._failures = 0
        self._last_error: str | None = None
        self._batches = 0
        self._judged = 0
        self._largest_batch = 0
        self._metrics = LazyReplicaMetrics()

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Apply ``user_config``: ``max_batch_size``, ``batch_wait_timeout_s``, ``max_requests_per_call``."""
        self._max_batch_size = int(config.get("max_batch_size", self._max_batch_size))
        self._batch_wait_timeout_s = float(config.get("batch_wait_timeout_s", self._batch_wait_timeout_s))
        self._max_requests = int(config.get("max_requests_per_call", self._max_requests))
        batcher: Any = self.judge_one  # serve.batch's wrapper carries the setters
        batcher.set_max_batch_size(self._max_batch_size)
        batcher.set_batch_wait_timeout_s(self._batch_wait_timeout_s)

    async def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgment]:
        """One judgment per request, in order; each request joins the replica's dynamic batches."""
        if len(requests) > self._max_requests:
            raise ValueError(f"{len(requests)} requests in one call; the limit is {self._max_requests}")
        if not requests:
            return []
        results = await asyncio.gather(*(self.judge_one(request) for request in requests))
        return list(results)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def judge_one(self, requests: list[JudgeRequest]) -> list[Judgment]:
        """Batched: Serve collects concurrent single requests into ``requests``."""
        return await asyncio.to_thread(self._judge_batch, requests)

    def _judge_batch(self, requests: list[JudgeRequest]) -> list[Judgment]:
        started = time.perf_counter()
        try:
            judgments = self._teacher.judge(requests)
            if len(judgments) != len(requests):
                raise RuntimeError(
                    f"backend returned {len(judgments)} judgments for {len(requests)} requests"
                )
        except Exception as error:  # a backend must not raise; if it does, no guessed grades
            self._failures += 1
            self._last_error = f"{type(error).__name__}: {error}"
            latency_ms = (time.perf_counter() - started) * 1000
            reason = f"teacher backend failed: {self._last_error}"
            self._metrics.record(len(requests), len(requests), latency_ms / 1000)
            return [
                error_judgment(r, self._policy, self.teacher_version, reason, latency_ms) for r in requests
            ]
        self._failures = 0
        self._batches += 1
        self._judged += len(requests)
        self._largest_batch = max(self._largest_batch, len(requests))
        errors = sum(1 for judgment in judgments if judgment.status == "error")
        self._metrics.record(len(requests), errors, time.perf_counter() - started)
        return judgments

    @property
    def teacher_version(self) -> str:
        """The backend's version string."""
        return self._teacher.teacher_version

    def info(self) -> dict[str, Any]:
        """Versions, backend, batching figures and which replica (id, pid) answered."""
        context = serve.get_replica_context()
        return {
            "teacher_version": self.teacher_version,
            **self._policy.identity(),
            "backend": self._backend,
            "replica_id": context.replica_id.unique_id,
            "pid": os.getpid(),
            "max_batch_size": self._max_batch_size,
            "batch_wait_timeout_s": self._batch_wait_timeout_s,
            "max_requests_per_call": self._max_requests,
            "batches": self._batches,
            "judged": self._judged,
            "largest_batch": self._largest_batch,
            "consecutive_failures": self._failures,
            "last_error": self._last_error,
            "teacher_stats": self._teacher_stats(),
        }

    def _teacher_stats(self) -> dict[str, Any] | None:
        """An LLM backend's token and outcome counters (cached prompt tokens too), if it keeps them."""
        stats = getattr(self._teacher, "stats", None)
        snapshot = getattr(stats, "snapshot", None)
        taken = snapshot() if callable(snapshot) else None
        return (
            dataclasses.asdict(taken)
            if dataclasses.is_dataclass(taken) and not isinstance(taken, type)
            else None
        )

    def check_health(self) -> None:
        """Raise if the backend is unusable: repeated backend exceptions or its own health check."""
        if self._failures >= MAX_CONSECUTIVE_FAILURES:
            raise RuntimeError(
                f"teacher backend failed {self._failures} batches in a row: {self._last_error}"
            )
        backend_check = getattr(self._teacher, "check_health", None)
        if callable(backend_check):
            backend_check()

    async def __call__(self, request: Request) -> Response:
        """HTTP ingress: GET → info (503 if unhealthy); POST → judge."""
        if request.method == "GET":
            return self._http_info()
        if request.method != "POST":
            return _error(405, f"method {request.method} not allowed; use POST to judge, GET for info")
        return await self._http_judge(request)

    def _http_info(self) -> JSONResponse:
        try:
            self.check_health()
        except Exception as error:
            return JSONResponse({**self.info(), "healthy": False, "reason": str(error)}, status_code=503)
        return JSONResponse({**self.info(), "healthy": True})

    async def _http_judge(self, request: Request) -> Response:
        body = await request.body()
        if len(body) > self._max_requests * BODY_BYTES_PER_REQUEST:
            return _error(413, f"body of {len(body)} bytes is too large")
        try:
            payload = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            return _error(400, f"body is not valid JSON: {error}")
        if not isinstance(payload, dict) or not isinstance(payload.get("requests"), list):
            return _error(400, 'body must be a JSON object {"requests": [...]}')
        if len(payload["requests"]) > self._max_requests:
            count = len(payload["requests"])
            return _error(413, f"{count} requests in one call; the limit is {self._max_requests}")
        try:
            parsed = _JudgeBody.model_validate_json(body)
        except ValidationError as error:
            return _error(400, f"invalid request: {describe_validation_error(error)}")
        judgments = await self.judge(parsed.requests)
        content = '{"judgments":[' + ",".join(j.model_dump_json() for j in judgments) + "]}"
        return Response(content, media_type="application/json")


TeacherDeployment: Deployment = serve.deployment(
    name=DEPLOYMENT_NAME, health_check_period_s=10, health_check_timeout_s=30
)(TeacherReplica)


def build_app(
    settings: Settings,
    policy_path: Path | str,
    backend: str | None = None,
    options: dict[str, Any] | None = None,
    workdir: str | None = None,
) -> Application:
    """The teacher Application with ``settings.serve``'s options; validates the policy here first.

    ``backend`` None uses ``settings.serve.backend``, then the policy's ``teacher.backend``.
    """
    policy = load_policy(policy_path)  # fail in the caller, not in a replica crash loop
    name = backend or settings.serve.backend or policy.teacher.backend
    if name not in backend_names():
        raise ValueError(f"unknown teacher backend {name!r}; known backends: {', '.join(backend_names())}")
    unknown = unknown_options(name, dict(options or {}))
    if unknown:
        raise ValueError(f"the {name} backend takes no option(s) {', '.join(unknown)}")
    bound: Application = TeacherDeployment.options(**deployment_options(settings.serve)).bind(
        str(policy_path), backend or settings.serve.backend, dict(options or {}), workdir
    )
    return bound


def deploy(
    settings: Settings,
    policy_path: Path | str | None = None,
    backend: str | None = None,
    options: dict[str, Any] | None = None,
) -> DeploymentHandle[Any]:
    """Start (or join) Ray and Serve, deploy the teacher app under ``/teacher``; returns its handle.

    The policy path is resolved against the current directory, which the replicas also use.
    """
    start_local_ray(settings)
    start_serve(settings)
    path = Path(policy_path or settings.policy_file).resolve()
    app = build_app(settings, path, backend, options, workdir=os.getcwd())
    handle: DeploymentHandle[Any] = serve.run(
        app, name=settings.ray.app_name, route_prefix=ROUTE_PREFIX, logging_config=dict(SERVE_LOGGING_CONFIG)
    )
    return handle


class AppArgs(BaseModel):
    """Arguments of ``app_builder`` (the ``args:`` of a Serve config file's application)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    policy_path: str = "policies/product-search.yaml"
    backend: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    #: Overrides of ServeSettings (batching, replicas, resources); the file's ``deployments:``
    #: section, if any, still wins for the options it sets.
    serve: dict[str, Any] = Field(default_factory=dict)


def app_builder(args: dict[str, Any]) -> Application:
    """Builder for ``serve run`` / ``serve deploy`` config files (``workers.deployment:app_builder``).

    Paths are relative to the application's working directory (its ``runtime_env.working_dir``).
    """
    parsed = AppArgs.model_validate(args)
    settings = load_settings()
    serve_settings = ServeSettings.model_validate({**settings.serve.model_dump(), **parsed.serve})
    settings = settings.model_copy(update={"serve": serve_settings})
    return build_app(settings, parsed.policy_path, parsed.backend, parsed.options)

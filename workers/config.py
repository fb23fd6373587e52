"""Translate ``ServeSettings`` into Ray Serve options: pure functions, no Ray started.

Kept apart from the deployment so the CLI, the YAML config test and the deployment agree on one
mapping: fixed ``num_replicas`` when ``min_replicas == max_replicas``, else ``autoscaling_config``;
batching parameters travel as ``user_config`` so they can change without restarting replicas.
"""

from __future__ import annotations

from typing import Any

from schemas.settings import AutoscalingSettings, ServeSettings, Settings

#: Serve's logging config with the per-request access log off (it otherwise floods the driver).
SERVE_LOGGING_CONFIG: dict[str, Any] = {"enable_access_log": False}
#: Where the teacher app is mounted on the Serve HTTP proxy.
ROUTE_PREFIX = "/teacher"


def with_replicas(serve: ServeSettings, replicas: int) -> ServeSettings:
    """A copy of ``serve`` pinned to exactly ``replicas`` replicas (no autoscaling)."""
    if replicas < 1:
        raise ValueError("replicas must be >= 1")
    bounds = {"min_replicas": replicas, "max_replicas": replicas}
    scaling = AutoscalingSettings.model_validate({**serve.autoscaling.model_dump(), **bounds})
    return serve.model_copy(update={"autoscaling": scaling})


def batch_user_config(serve: ServeSettings) -> dict[str, Any]:
    """The deployment's ``user_config``: dynamic-batching parameters applied in ``reconfigure``."""
    return {
        "max_batch_size": serve.max_batch_size,
        "batch_wait_timeout_s": serve.batch_wait_timeout_s,
        "max_requests_per_call": serve.max_requests_per_call,
    }


def autoscaling_config(scaling: AutoscalingSettings) -> dict[str, Any]:
    """Serve's ``autoscaling_config`` dict for the given bounds and delays."""
    return {
        "min_replicas": scaling.min_replicas,
        "initial_replicas": max(scaling.min_replicas, 1),
        "max_replicas": scaling.max_replicas,
        "target_ongoing_requests": scaling.target_ongoing_requests,
        "upscale_delay_s": scaling.upscale_delay_s,
        "downscale_delay_s": scaling.downscale_delay_s,
        "look_back_period_s": scaling.look_back_period_s,
        "metrics_interval_s": scaling.metrics_interval_s,
    }


def ray_actor_options(serve: ServeSettings) -> dict[str, Any]:
    """Per-replica resources: CPUs, GPUs and (optionally) reserved memory."""
    options: dict[str, Any] = {"num_cpus": serve.num_cpus, "num_gpus": serve.num_gpus}
    if serve.memory is not None:
        options["memory"] = serve.memory
    return options


def deployment_options(serve: ServeSettings) -> dict[str, Any]:
    """Keyword arguments for ``TeacherDeployment.options(...)``."""
    options: dict[str, Any] = {
        "max_ongoing_requests": serve.max_ongoing_requests,
        "ray_actor_options": ray_actor_options(serve),
        "user_config": batch_user_config(serve),
    }
    scaling = serve.autoscaling
    if scaling.min_replicas == scaling.max_replicas:
        options["num_replicas"] = scaling.max_replicas
    else:
        options["autoscaling_config"] = autoscaling_config(scaling)
    return options


def http_options(settings: Settings) -> dict[str, Any]:
    """Serve proxy HTTP options: host and port from ``settings.ray``, optional request timeout."""
    options: dict[str, Any] = {"host": settings.ray.serve_host, "port": settings.ray.serve_port}
    if settings.serve.request_timeout_s is not None:
        options["request_timeout_s"] = settings.serve.request_timeout_s
    return options


def http_url(settings: Settings) -> str:
    """The teacher's HTTP endpoint, e.g. ``http://127.0.0.1:18000/teacher``."""
    host = settings.ray.serve_host
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{settings.ray.serve_port}{ROUTE_PREFIX}"

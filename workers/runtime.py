"""Start and stop the local Ray head and Serve the way this project needs them.

``start_local_ray`` is idempotent. With ``settings.ray.address`` unset it starts a loopback-only
head (no dashboard, no auth token under $HOME, no usage stats, a project-local temp dir); with an
address (``auto``, ``ray://host:10001``) it joins that cluster instead and leaves the cluster's own
resources and temp dir alone.

Ray puts unix sockets under the temp dir (``<temp>/session_<date>_<pid>/sockets/plasma_store``)
and unix socket paths are limited to ~107 bytes, so a temp dir longer than
``MAX_TEMP_DIR_CHARS`` falls back to ``/tmp/evalloop-ray-<uid>``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from schemas.settings import Settings
from workers.config import SERVE_LOGGING_CONFIG, http_options

log = logging.getLogger(__name__)

#: Environment every Ray process of evalloop runs with (set before ``ray.init``; workers inherit).
RAY_ENV: dict[str, str] = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
#: Longest temp dir that leaves room for Ray's session and socket names under the ~107-byte limit.
MAX_TEMP_DIR_CHARS = 40


def ray_temp_dir(settings: Settings) -> Path:
    """``<state_dir>/ray`` as an absolute path, or ``/tmp/evalloop-ray-<uid>`` if that is too long."""
    preferred = (settings.state_dir / "ray").expanduser().resolve()
    if len(str(preferred)) <= MAX_TEMP_DIR_CHARS:
        return preferred
    fallback = Path(f"/tmp/evalloop-ray-{os.getuid()}")
    log.info("ray temp dir %s is too long for unix sockets; using %s", preferred, fallback)
    return fallback


def apply_ray_env() -> None:
    """Set ``RAY_ENV`` in this process (values already set by the user win)."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)


def start_local_ray(settings: Settings, *, log_to_driver: bool = False) -> None:
    """Start (or join) Ray once; later calls are no-ops while Ray is initialised."""
    import ray

    if ray.is_initialized():
        return
    apply_ray_env()
    if settings.ray.address:
        ray.init(
            address=settings.ray.address,
            namespace=settings.ray.namespace,
            ignore_reinit_error=True,
            log_to_driver=log_to_driver,
            runtime_env={"env_vars": dict(RAY_ENV)},
        )
        return
    temp_dir = ray_temp_dir(settings)
    temp_dir.mkdir(parents=True, exist_ok=True)
    ray.init(
        num_cpus=settings.ray.num_cpus or os.cpu_count() or 1,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=str(temp_dir),
        namespace=settings.ray.namespace,
        ignore_reinit_error=True,
        log_to_driver=log_to_driver,
    )


def start_serve(settings: Settings) -> None:
    """Start Serve on the connected cluster: HTTP proxy on ``settings.ray`` host/port, no access log.

    A no-op for the options if Serve already runs there (Serve keeps its first HTTP options).
    """
    from ray import serve

    serve.start(http_options=http_options(settings), logging_config=dict(SERVE_LOGGING_CONFIG))


def shutdown(*, stop_ray: bool = True) -> None:
    """Shut Serve down (all apps), then Ray if ``stop_ray``; safe when neither runs."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    serve.shutdown()  # type: ignore[no-untyped-call]
    if stop_ray:
        ray.shutdown()

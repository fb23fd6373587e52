"""ServeSettings → Serve options, the cluster config file, runtime paths and `evalloop serve`,
all without starting Ray."""

from __future__ import annotations

import asyncio
import importlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from schemas.settings import AutoscalingSettings, RaySettings, ServeSettings, Settings, load_settings
from workers.config import deployment_options, http_url, ray_actor_options, with_replicas
from workers.runtime import MAX_TEMP_DIR_CHARS, ray_temp_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_FILE = REPO_ROOT / "infra" / "serve" / "teacher.yaml"
POLICY_PATH = REPO_ROOT / "policies" / "product-search.yaml"


def test_defaults_autoscale_and_map_to_serve_options() -> None:
    options = deployment_options(ServeSettings())
    assert options["max_ongoing_requests"] == 64
    assert options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.0}
    assert options["user_config"] == {
        "max_batch_size": 32,
        "batch_wait_timeout_s": 0.01,
        "max_requests_per_call": 1024,
    }
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {
        "min_replicas": 1,
        "initial_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 16,
        "upscale_delay_s": 5.0,
        "downscale_delay_s": 60.0,
        "look_back_period_s": 30.0,
        "metrics_interval_s": 10.0,
    }


def test_equal_bounds_pin_the_replica_count() -> None:
    pinned = with_replicas(ServeSettings(num_cpus=0.5, num_gpus=1, memory=2**30), 3)
    options = deployment_options(pinned)
    assert options["num_replicas"] == 3 and "autoscaling_config" not in options
    assert ray_actor_options(pinned) == {"num_cpus": 0.5, "num_gpus": 1.0, "memory": 2**30}
    with pytest.raises(ValueError):
        with_replicas(ServeSettings(), 0)


def test_settings_validate_and_read_env(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="exceeds max_replicas"):
        AutoscalingSettings(min_replicas=3, max_replicas=2)
    monkeypatch.setenv("EVALLOOP_SERVE__MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("EVALLOOP_SERVE__BACKEND", "noop")
    monkeypatch.setenv("EVALLOOP_SERVE__AUTOSCALING__MAX_REPLICAS", "5")
    settings = load_settings()
    assert settings.serve.max_batch_size == 8
    assert settings.serve.backend == "noop"
    assert settings.serve.autoscaling.max_replicas == 5


def test_http_url() -> None:
    assert http_url(Settings(ray=RaySettings(serve_port=18001))) == "http://127.0.0.1:18001/teacher"
    assert http_url(Settings(ray=RaySettings(serve_host="0.0.0.0"))).startswith("http://127.0.0.1:")


def test_ray_temp_dir_short_or_fallback(tmp_path: Path) -> None:
    assert ray_temp_dir(Settings(state_dir=Path("/tmp/ev"))) == Path("/tmp/ev/ray")
    long_dir = tmp_path / ("x" * MAX_TEMP_DIR_CHARS)
    fallback = ray_temp_dir(Settings(state_dir=long_dir))
    assert str(fallback).startswith("/tmp/evalloop-ray-")
    assert len(str(fallback)) <= MAX_TEMP_DIR_CHARS


def _config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(CONFIG_FILE.read_text(encoding="utf-8"))
    return data


def test_config_file_is_a_valid_serve_deploy_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(_config())
    (app,) = config.applications
    assert app.import_path == "workers.deployment:app_builder"
    assert app.route_prefix == "/teacher"
    (deployment,) = app.deployments
    assert deployment.name == "TeacherDeployment"
    assert deployment.ray_actor_options.num_gpus == 1
    assert config.http_options.host == "127.0.0.1"
    assert config.logging_config is not None and config.logging_config.enable_access_log is False


def test_config_file_builds_the_application(monkeypatch: pytest.MonkeyPatch) -> None:
    import ray
    from ray.serve import Application

    from workers.deployment import AppArgs

    monkeypatch.chdir(REPO_ROOT)  # args paths are relative to the app's working directory
    ray_was_up = ray.is_initialized()  # an earlier test in the session may have left Ray running
    (app,) = _config()["applications"]
    module_name, _, attr = app["import_path"].partition(":")
    builder = getattr(importlib.import_module(module_name), attr)
    AppArgs.model_validate(app["args"])
    built = builder(app["args"])
    assert isinstance(built, Application)
    bound = built._bound_deployment  # private, but the only way to look inside without Ray
    assert bound.name == app["deployments"][0]["name"]
    assert list(bound.init_args[:2]) == ["policies/product-search.yaml", None]
    assert ray.is_initialized() == ray_was_up, "building the app must not start Ray"
    with pytest.raises(ValidationError):
        builder({"policy_path": "policies/product-search.yaml", "typo": 1})


def _request(body: bytes, method: str = "POST") -> Any:
    from starlette.requests import Request

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    scope = {"type": "http", "method": method, "path": "/teacher", "headers": [], "query_string": b""}
    return Request(scope, receive)


@pytest.fixture
def replica() -> Any:
    """The deployment class used directly (no Ray): only paths that never reach ``@serve.batch``."""
    from workers.deployment import TeacherReplica

    instance = TeacherReplica(str(POLICY_PATH), "noop", {})
    instance.reconfigure({"max_batch_size": 8, "batch_wait_timeout_s": 0.001, "max_requests_per_call": 2})
    return instance


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"{oops", 400, "not valid JSON"),
        (b'{"requests": 3}', 400, '{"requests"'),
        (b'{"requests": [{}, {}, {}]}', 413, "limit is 2"),
        (b'{"requests": [{"event_id": "e"}]}', 400, "requests.0.category"),
    ],
)
def test_http_rejects_bad_bodies(replica: Any, body: bytes, status: int, reason: str) -> None:
    response = asyncio.run(replica(_request(body)))
    assert response.status_code == status
    assert reason in json.loads(response.body)["error"]
    assert asyncio.run(replica(_request(b"", method="PUT"))).status_code == 405


def test_backend_exceptions_become_error_judgments_then_unhealthy(replica: Any) -> None:
    from judges.base import JudgeRequest
    from judges.fake import NoopTeacher
    from schemas.events import Item
    from workers.deployment import MAX_CONSECUTIVE_FAILURES

    class Broken(NoopTeacher):
        def judge(self, requests: Any) -> Any:
            raise OSError("model file vanished")

    request = JudgeRequest(
        event_id="e1",
        category="c",
        event_time=datetime(2026, 1, 1, tzinfo=UTC),
        query="q",
        item=Item(item_id="i1", title="t", rank=1),
    )
    replica._teacher = Broken(replica._policy)
    replica.check_health()
    for _ in range(MAX_CONSECUTIVE_FAILURES):
        (judgment,) = replica._judge_batch([request])
        assert judgment.status == "error" and "model file vanished" in (judgment.error or "")
    with pytest.raises(RuntimeError, match="in a row"):
        replica.check_health()


def test_serve_cli_refuses_detach_without_cluster_and_bad_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from evalloop.cli import main

    monkeypatch.delenv("EVALLOOP_RAY__ADDRESS", raising=False)
    assert main(["serve", "--detach", "--policy", str(POLICY_PATH)]) == 2
    assert "EVALLOOP_RAY__ADDRESS" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: x\n", encoding="utf-8")
    assert main(["serve", "--policy", str(bad)]) == 2
    assert "bad policy" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--replicas", "0"])


def test_build_app_refuses_unknown_backend_before_any_replica() -> None:
    from workers.deployment import build_app

    with pytest.raises(ValueError, match="unknown teacher backend 'nope'"):
        build_app(Settings(), POLICY_PATH, backend="nope")

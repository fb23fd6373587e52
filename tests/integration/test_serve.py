"""The teacher on real local Ray Serve: two replicas, handle and HTTP, equal to the backend itself.

Ray starts once per test session (``num_cpus=2``; ~4 s) and every app runs with two fixed replicas of
0.5 CPU each. Results are compared with calling the backend in-process, field by field
(``judged_at`` and ``latency_ms`` differ by nature).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from infra.processes import free_port as _free_port
from judges.base import JudgeRequest, Teacher
from judges.fake import NoopTeacher
from schemas.events import Item
from schemas.judgments import Judgment
from schemas.policy import Policy, identity_mismatch, load_policy
from schemas.settings import RaySettings, ServeSettings, Settings
from workers.config import with_replicas

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
POLICY_PATH = REPO_ROOT / "policies" / "product-search.yaml"
COMPARED = (
    "judgment_id",
    "event_id",
    "item_id",
    "status",
    "grade",
    "display",
    "failure_modes",
    "rationale",
    "grade_probabilities",
    "error",
    "policy_version",
    "teacher_version",
)


def _requests(count: int) -> list[JudgeRequest]:
    queries = ["king poster bed", "small wardrobe grey", "dual monitor stand", "gravity feeder"]
    titles = ["venice four poster bed", "2 door wardrobe", "single monitor mount", "bird bath"]
    return [
        JudgeRequest(
            event_id=f"ev-{n // 4}",
            category="furniture",
            event_time=datetime(2026, 1, 1, tzinfo=UTC),
            query=queries[n % 4],
            item=Item(item_id=f"it-{n}", title=titles[(n + n // 4) % 4], rank=n % 4 + 1),
        )
        for n in range(count)
    ]


def _key(judgment: Judgment) -> dict[str, Any]:
    return {name: getattr(judgment, name) for name in COMPARED}


@pytest.fixture(scope="module")
def serve_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Local Ray (2 CPUs) and Serve on a free loopback port, shut down when this module ends so
    other modules that deploy their own teacher under /teacher find the route free."""
    from workers.runtime import shutdown, start_local_ray, start_serve

    serve = with_replicas(ServeSettings(num_cpus=0.5, batch_wait_timeout_s=0.005), 2)
    settings = Settings(
        state_dir=tmp_path_factory.mktemp("state"),  # ray_temp_dir falls back to /tmp if too long
        policy_file=POLICY_PATH,
        ray=RaySettings(num_cpus=2, serve_port=_free_port(), app_name="evalloop-teacher-test"),
        serve=serve,
    )
    start_local_ray(settings)
    start_serve(settings)
    yield settings
    shutdown()


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(POLICY_PATH)


def _deploy(settings: Settings, backend: str) -> Any:
    from workers.deployment import deploy

    return deploy(settings, POLICY_PATH, backend=backend)


@pytest.fixture(scope="module")
def noop_handle(serve_settings: Settings) -> Any:
    """The noop teacher app, deployed once (each ``serve.run`` rolls the replicas: ~5-8 s here)."""
    return _deploy(serve_settings, "noop")


def _infos_by_replica(handle: Any, calls: int = 40) -> dict[str, dict[str, Any]]:
    """The latest info of each replica that answered ``calls`` concurrent info calls."""
    responses = [handle.info.remote() for _ in range(calls)]
    infos = [response.result(timeout_s=30) for response in responses]
    return {info["replica_id"]: info for info in infos}


def _check_against_backend(settings: Settings, handle: Any, teacher: Teacher, count: int) -> None:
    requests = _requests(count)
    expected = [_key(j) for j in teacher.judge(requests)]
    via_handle = handle.judge.remote(requests).result(timeout_s=60)
    assert [_key(j) for j in via_handle] == expected
    url = f"http://127.0.0.1:{settings.ray.serve_port}/teacher"
    body = {"requests": [r.model_dump(mode="json") for r in requests]}
    response = httpx.post(url, json=body, timeout=60)
    assert response.status_code == 200, response.text
    via_http = [Judgment.model_validate_json(_dump(raw)) for raw in response.json()["judgments"]]
    assert [_key(j) for j in via_http] == expected


def _dump(raw: dict[str, Any]) -> str:
    import json

    return json.dumps(raw)


def test_noop_two_replicas_handle_and_http(
    serve_settings: Settings, noop_handle: Any, policy: Policy
) -> None:
    handle = noop_handle
    _check_against_backend(serve_settings, handle, NoopTeacher(policy), count=64)
    by_replica = _infos_by_replica(handle)
    assert len(by_replica) == 2, "both replicas answer"
    infos = list(by_replica.values())
    assert {info["teacher_version"] for info in infos} == {"noop-v1"}
    assert {info["policy_version"] for info in infos} == {policy.version}
    # What a worker checks at start-up: the identity of the policy the replicas grade for.
    assert all(identity_mismatch(info, policy) is None for info in infos)
    # 64 requests through one call went through the batcher, not one backend call each.
    assert sum(info["judged"] for info in infos) == 2 * 64
    largest = max(info["largest_batch"] for info in infos)
    assert 1 < largest <= serve_settings.serve.max_batch_size
    assert sum(info["batches"] for info in infos) < 2 * 64


def test_noop_latency_and_health(serve_settings: Settings, noop_handle: Any) -> None:
    handle = noop_handle
    one = _requests(1)
    handle.judge.remote(one).result(timeout_s=30)
    started = time.perf_counter()
    for _ in range(20):
        handle.judge.remote(one).result(timeout_s=30)
    per_call_ms = (time.perf_counter() - started) / 20 * 1000
    print(f"noop handle judge(1) latency: {per_call_ms:.1f} ms/call")
    assert per_call_ms < 500

    health = httpx.get(f"http://127.0.0.1:{serve_settings.ray.serve_port}/teacher/healthz", timeout=30)
    assert health.status_code == 200
    assert health.json()["healthy"] is True
    from ray import serve

    status = serve.status().applications[serve_settings.ray.app_name]
    assert status.status == "RUNNING"
    assert status.deployments["TeacherDeployment"].status == "HEALTHY"


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'["a"]', 400, '{"requests"'),
        (b'{"requests": [{"event_id": "e1"}]}', 400, "requests.0.category"),
        (b'{"requests": [], "extra": 1}', 400, "extra"),
    ],
)
def test_bad_http_input_is_400_with_reason(
    serve_settings: Settings, noop_handle: Any, body: bytes, status: int, reason: str
) -> None:
    url = f"http://127.0.0.1:{serve_settings.ray.serve_port}/teacher"
    response = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=30)
    assert response.status_code == status
    assert reason in response.json()["error"]


def test_too_many_requests_is_413(serve_settings: Settings, noop_handle: Any) -> None:
    limit = serve_settings.serve.max_requests_per_call
    url = f"http://127.0.0.1:{serve_settings.ray.serve_port}/teacher"
    body = {"requests": [{"event_id": "e"}] * (limit + 1)}
    response = httpx.post(url, json=body, timeout=30)
    assert response.status_code == 413
    assert str(limit) in response.json()["error"]


def test_embedding_teacher_two_replicas(serve_settings: Settings, policy: Policy) -> None:
    from judges.registry import build_teacher

    handle = _deploy(serve_settings, "embedding")
    _check_against_backend(serve_settings, handle, build_teacher(policy, "embedding"), count=16)
    assert len(_infos_by_replica(handle)) == 2

"""A real OpenAI-compatible LLM server in the loop: llama.cpp (``xllamacpp`` from PyPI) serving
SmolLM2-135M-Instruct, the ``openai`` backend inside the Ray Serve teacher deployment.

A plumbing test, not a judging one (a 135M model grades no better than chance): every pair comes
back as a schema-valid judgment on the policy's scale or an error judgment with its reason, the
server reports cached prompt tokens (the rubric prefix is shared), and a timeout becomes error
judgments with that reason instead of a hang.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from infra.llm_server import ALIAS, llm_server
from infra.processes import free_port
from judges.golden import golden_requests, load_golden
from schemas.judgments import Judgment
from schemas.policy import Policy, load_policy
from schemas.settings import RaySettings, ServeSettings, Settings
from workers.config import with_replicas

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
POLICY_PATH = REPO / "policies" / "product-search.yaml"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("llm") / "llama-server.log"
    with llm_server(free_port(), log) as url:
        yield url


@pytest.fixture(scope="module")
def serve_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    from workers.runtime import shutdown, start_local_ray, start_serve

    settings = Settings(
        state_dir=tmp_path_factory.mktemp("state"),
        policy_file=POLICY_PATH,
        ray=RaySettings(num_cpus=2, serve_port=free_port(), app_name="evalloop-teacher-llm"),
        serve=with_replicas(ServeSettings(num_cpus=0.5, batch_wait_timeout_s=0.005), 1),
    )
    start_local_ray(settings)
    start_serve(settings)
    yield settings
    shutdown()


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(POLICY_PATH)


def _deploy(settings: Settings, options: dict[str, Any]) -> Any:
    from workers.deployment import deploy

    return deploy(settings, POLICY_PATH, backend="openai", options=options)


def _pairs(count: int) -> list[Any]:
    return golden_requests(load_golden(REPO / "data/wands/golden.jsonl")[:count])


def test_pairs_through_serve_to_llama_cpp(serve_settings: Settings, base_url: str, policy: Policy) -> None:
    options = {"base_url": base_url, "model": ALIAS, "timeout_s": 120.0, "max_retries": 1, "concurrency": 1}
    handle = _deploy(serve_settings, options)
    requests = _pairs(3)
    started = time.monotonic()
    judgments: list[Judgment] = handle.judge.remote(requests).result(timeout_s=600)
    seconds = time.monotonic() - started
    assert len(judgments) == 3
    for request, judgment in zip(requests, judgments, strict=True):
        again = Judgment.model_validate_json(judgment.model_dump_json())  # schema-valid on the wire
        assert again.event_id == request.event_id and again.policy_version == policy.version
        assert judgment.teacher_version.startswith(f"openai:{ALIAS}@127.0.0.1")
        if judgment.status == "ok":
            assert judgment.grade in policy.grades and judgment.rationale
        else:
            assert judgment.error and ("answer" in judgment.error or "schema" in judgment.error), (
                judgment.error
            )
    stats = handle.info.remote().result(timeout_s=30)["teacher_stats"]
    assert stats["requests"] >= 3 and stats["prompt_tokens"] > 0
    assert stats["cached_tokens"] > 0, stats  # the rubric prefix is served from the prompt cache
    ok = sum(j.status == "ok" for j in judgments)
    print(
        f"\nllama.cpp via Serve: 3 pairs in {seconds:.1f}s, {ok} ok; prefix cache hit rate "
        f"{stats['cached_tokens'] / stats['prompt_tokens']:.0%}"
    )


def test_a_timeout_becomes_error_judgments(serve_settings: Settings, base_url: str) -> None:
    options = {"base_url": base_url, "model": ALIAS, "timeout_s": 0.001, "max_retries": 1, "concurrency": 1}
    handle = _deploy(serve_settings, options)
    started = time.monotonic()
    judgments: list[Judgment] = handle.judge.remote(_pairs(2)).result(timeout_s=120)
    assert time.monotonic() - started < 60
    assert [j.status for j in judgments] == ["error", "error"]
    assert all("timed out after 0.001s" in (j.error or "") for j in judgments), [j.error for j in judgments]
    assert all(j.event_time == datetime(2024, 6, 1, tzinfo=UTC) for j in judgments)

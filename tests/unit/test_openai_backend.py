"""Protocol tests for judges.openai_backend against a real local HTTP server speaking the OpenAI
chat-completions protocol (tests/support/openai_stub.py), and the GPU-free parts of
judges.vllm_backend.

No real model runs here (see docs/llm-teacher.md): these tests pin the request we send and how
every kind of reply, failure and bad answer becomes a judgment.
"""

from __future__ import annotations

import importlib
import json
import logging
import socket
import sys
import types
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from judges.base import JudgeRequest, Teacher
from judges.openai_backend import OpenAITeacher
from judges.prompt import answer_schema, rubric_prefix
from schemas.events import Item
from schemas.policy import load_policy
from tests.support.openai_stub import (
    OpenAIStub,
    RecordedRequest,
    Reply,
    answer,
    bad_body,
    http_error,
    ok,
    rate_limited,
    server_error,
    slow,
)

ROOT = Path(__file__).resolve().parents[2]
POLICY = load_policy(ROOT / "policies" / "product-search.yaml")
SECRET = "sk-test-Zq81-do-not-leak"


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with OpenAIStub() as server:
        yield server


class Sleeps:
    """Injected sleep: records the delays instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def make_request(title: str = "queen four poster bed", item_id: str = "item-1") -> JudgeRequest:
    return JudgeRequest(
        event_id="event-1",
        category="Furniture & Office",
        event_time=datetime(2026, 1, 2, tzinfo=UTC),
        query="king poster bed",
        item=Item(item_id=item_id, title=title, category="Beds", rank=1),
    )


def make_teacher(stub: OpenAIStub, sleeps: Sleeps | None = None, **options: Any) -> OpenAITeacher:
    options.setdefault("api_key", SECRET)
    return OpenAITeacher(POLICY, base_url=stub.base_url, sleep=sleeps or Sleeps(), **options)


# --------------------------------------------------------------------------- happy path


def _grade_from_title(request: RecordedRequest) -> Reply:
    # Requests arrive concurrently, so answer by content: the title says which grade to give.
    grade = int(request.user_message.split("grade-")[1][0])
    modes = {4: [], 2: ["attribute_mismatch"], 0: ["wrong_product_type", "off_department"]}[grade]
    return ok(grade, modes, f"Because grade {grade}.")


def test_ok_path_grades_in_order_and_sends_a_strict_request(stub: OpenAIStub) -> None:
    stub.responder = _grade_from_title
    grades = [4, 2, 0, 2, 4, 0, 0, 4]
    requests = [make_request(f"item grade-{grade}", item_id=f"item-{i}") for i, grade in enumerate(grades)]
    teacher = make_teacher(stub, concurrency=4)
    assert isinstance(teacher, Teacher)

    judgments = teacher.judge(requests)

    assert [j.item_id for j in judgments] == [r.item.item_id for r in requests]
    assert [j.grade for j in judgments] == grades
    assert all(j.status == "ok" and j.error is None for j in judgments)
    assert [j.display for j in judgments] == [POLICY.display_for(g) for g in grades]
    assert judgments[1].failure_modes == ("attribute_mismatch",)
    assert judgments[2].failure_modes == ("wrong_product_type", "off_department")
    assert judgments[0].rationale == "Because grade 4."
    assert all(j.teacher_version == teacher.teacher_version for j in judgments)
    assert all(j.policy_version == POLICY.version and j.latency_ms is not None for j in judgments)

    sent = stub.requests
    assert len(sent) == len(requests)
    first = sent[0]
    assert first.path == "/v1/chat/completions"
    assert first.headers["Authorization"] == f"Bearer {SECRET}"
    body = first.body
    assert body["model"] == POLICY.teacher.openai.model
    assert body["temperature"] == 0
    assert body["max_tokens"] == POLICY.teacher.openai.max_tokens
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "judgment", "strict": True, "schema": answer_schema(POLICY)},
    }
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert {r.body["messages"][0]["content"] for r in sent} == {rubric_prefix(POLICY)}


def test_records_token_usage_and_prefix_cache_hits(stub: OpenAIStub) -> None:
    teacher = make_teacher(stub, concurrency=1)
    teacher.judge([make_request(item_id=f"item-{i}") for i in range(4)])
    stats = teacher.stats.snapshot()
    assert (stats.requests, stats.ok, stats.errors, stats.retries) == (4, 4, 0, 0)
    assert stats.prompt_tokens > 0 and stats.completion_tokens == 80
    # The stub caches the system prefix after the first request: 3 of 4 requests hit it.
    assert stats.cached_tokens == 3 * (len(rubric_prefix(POLICY)) // 4)
    assert 0.0 < stats.prefix_cache_hit_rate < 1.0


def test_teacher_version_names_model_host_and_prompt(stub: OpenAIStub) -> None:
    teacher = make_teacher(stub, model="qwen2.5-7b")
    port = stub.base_url.split(":")[2].split("/")[0]
    assert teacher.teacher_version.startswith(f"openai:qwen2.5-7b@127.0.0.1:{port}#")
    edited = POLICY.model_copy(update={"description": "A different scope."})
    other = OpenAITeacher(edited, base_url=stub.base_url, model="qwen2.5-7b")
    assert other.teacher_version != teacher.teacher_version


def test_settings_default_from_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(POLICY.teacher.openai.api_key_env, raising=False)
    teacher = OpenAITeacher(POLICY)
    settings = POLICY.teacher.openai
    assert (teacher.base_url, teacher.model, teacher.timeout_s) == (
        settings.base_url,
        settings.model,
        settings.timeout_s,
    )
    assert (teacher.max_retries, teacher.max_tokens) == (settings.max_retries, settings.max_tokens)
    assert "api_key=unset" in repr(teacher)


def test_api_key_comes_from_the_env_var_the_policy_names(
    stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(POLICY.teacher.openai.api_key_env, "env-key-42")
    OpenAITeacher(POLICY, base_url=stub.base_url).judge([make_request()])
    assert stub.requests[-1].headers["Authorization"] == "Bearer env-key-42"


def test_no_key_sends_no_authorization_header(stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(POLICY.teacher.openai.api_key_env, raising=False)
    OpenAITeacher(POLICY, base_url=stub.base_url).judge([make_request()])
    assert "Authorization" not in stub.requests[-1].headers


def test_empty_batch(stub: OpenAIStub) -> None:
    assert make_teacher(stub).judge([]) == []
    assert stub.requests == []


# --------------------------------------------------------------------------- retries


def test_429_is_retried_honouring_retry_after(stub: OpenAIStub) -> None:
    stub.enqueue(rate_limited(retry_after="7"), ok(3))
    sleeps = Sleeps()
    [judgment] = make_teacher(stub, sleeps).judge([make_request()])
    assert judgment.status == "ok" and judgment.grade == 3
    assert sleeps.delays == [7.0]
    assert len(stub.requests) == 2


def test_5xx_is_retried_with_exponential_backoff_then_an_error_judgment(stub: OpenAIStub) -> None:
    stub.enqueue(*[server_error(503)] * 4)
    sleeps = Sleeps()
    teacher = make_teacher(stub, sleeps, max_retries=3)
    [judgment] = teacher.judge([make_request()])
    assert judgment.status == "error" and judgment.grade is None
    assert judgment.error == "HTTP 503 after 3 retries"
    assert len(stub.requests) == 4
    assert len(sleeps.delays) == 3
    # Equal jitter: attempt n waits between half and all of 0.5 s * 2**n.
    for attempt, delay in enumerate(sleeps.delays):
        step = 0.5 * 2**attempt
        assert step / 2 <= delay <= step
    assert teacher.stats.snapshot().retries == 3


def test_500_then_ok_recovers(stub: OpenAIStub) -> None:
    stub.enqueue(server_error(500), server_error(502), ok(4))
    [judgment] = make_teacher(stub, max_retries=4).judge([make_request()])
    assert judgment.status == "ok" and judgment.grade == 4
    assert len(stub.requests) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_other_4xx_is_not_retried(stub: OpenAIStub, status: int) -> None:
    stub.enqueue(http_error(status, "response_format json_schema not supported"))
    sleeps = Sleeps()
    [judgment] = make_teacher(stub, sleeps).judge([make_request()])
    assert judgment.status == "error"
    assert judgment.error is not None and judgment.error.startswith(f"HTTP {status}: ")
    assert "json_schema not supported" in judgment.error
    assert len(stub.requests) == 1 and sleeps.delays == []


def test_timeout_is_retried_then_an_error_judgment(stub: OpenAIStub) -> None:
    stub.enqueue(slow(3.0), slow(3.0))
    sleeps = Sleeps()
    [judgment] = make_teacher(stub, sleeps, timeout_s=0.3, max_retries=1).judge([make_request()])
    assert judgment.status == "error"
    assert judgment.error == "timed out after 0.3s after 1 retry"
    assert len(sleeps.delays) == 1


def test_connection_refused_is_retried_then_an_error_judgment() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps = Sleeps()
    teacher = OpenAITeacher(POLICY, base_url=f"http://127.0.0.1:{port}/v1", sleep=sleeps, max_retries=2)
    [judgment] = teacher.judge([make_request()])
    assert judgment.error == "connection error (ConnectError) after 2 retries"
    assert len(sleeps.delays) == 2


# --------------------------------------------------------------------------- bad answers


BAD_ANSWERS = [
    (answer("Grade: 4. Looks great!"), r"answer is not JSON: Expecting value"),
    (ok(7), r"grade 7 is not on the policy scale [0, 1, 2, 3, 4]"),
    (ok(2, ["made_up"]), r"unknown failure modes ['made_up']"),
    (ok(2, [], ""), r"empty rationale"),
    (
        answer('{"grade": 2, "failure_modes": [], "rationale": "a very lo', "length"),
        r"answer cut off at max_tokens=256: answer is not JSON",
    ),
    (answer(None), r"answer has no content"),
    (bad_body(), r"malformed chat-completions response: <html>gateway says hi</html>"),
]


@pytest.mark.parametrize(("reply", "reason"), BAD_ANSWERS)
def test_bad_answer_is_an_error_judgment_not_retried(stub: OpenAIStub, reply: Reply, reason: str) -> None:
    stub.enqueue(reply)
    sleeps = Sleeps()
    teacher = make_teacher(stub, sleeps)
    [judgment] = teacher.judge([make_request()])
    assert judgment.status == "error" and judgment.grade is None and judgment.display is None
    assert judgment.error is not None and judgment.error.startswith(reason), judgment.error
    assert len(stub.requests) == 1 and sleeps.delays == []
    assert teacher.stats.snapshot().errors == 1


def test_one_bad_pair_does_not_spoil_the_batch(stub: OpenAIStub) -> None:
    stub.responder = lambda request: ok(7) if "broken" in request.user_message else ok(4)
    judgments = make_teacher(stub, concurrency=3).judge(
        [make_request("fine", "a"), make_request("broken", "b"), make_request("fine", "c")]
    )
    assert [j.status for j in judgments] == ["ok", "error", "ok"]


# --------------------------------------------------------------------------- the API key


def _echo_authorization(request: RecordedRequest) -> Reply:
    # A hostile or buggy proxy that reflects the credential in its error body.
    return http_error(401, f"invalid key {request.headers.get('Authorization')}")


def test_api_key_never_appears_in_judgments_errors_or_logs(
    stub: OpenAIStub, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx and httpcore included
    teacher = make_teacher(stub, api_key=SecretStr(SECRET), max_retries=1)
    judgments = teacher.judge([make_request()])  # default ok
    stub.enqueue(server_error(500), server_error(500), answer("not json"), ok(9))
    judgments += (
        teacher.judge([make_request()]) + teacher.judge([make_request()]) + teacher.judge([make_request()])
    )
    stub.responder = _echo_authorization
    judgments += teacher.judge([make_request()])

    assert [j.status for j in judgments] == ["ok", "error", "error", "error", "error"]
    assert stub.requests[-1].headers["Authorization"] == f"Bearer {SECRET}"  # it was sent ...
    assert judgments[-1].error == 'HTTP 401: {"error": {"message": "invalid key Bearer [redacted]"}}'
    everything = [j.model_dump_json() for j in judgments] + [caplog.text, repr(teacher), str(vars(teacher))]
    everything += [str(record.args) for record in caplog.records]
    assert caplog.records, "the retries and errors should have been logged"
    for text in everything:  # ... and is nowhere else
        assert SECRET not in text
        assert "Zq81" not in text


# --------------------------------------------------------------------------- vLLM backend (no GPU here)


def test_vllm_backend_imports_without_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now raises ImportError
    module = importlib.reload(importlib.import_module("judges.vllm_backend"))
    with pytest.raises(module.VLLMUnavailableError, match=r"pip install 'evalloop\[gpu\]' on a GPU node"):
        module.VLLMTeacher(POLICY)


def _fake_vllm(api: str, texts: list[str]) -> types.ModuleType:
    """Just enough of vLLM's offline API to drive VLLMTeacher without a GPU."""
    vllm = types.ModuleType("vllm")
    sampling = types.ModuleType("vllm.sampling_params")

    class Params:
        def __init__(self, **kwargs: Any) -> None:
            self.kwargs = kwargs

    setattr(sampling, "StructuredOutputsParams" if api == "new" else "GuidedDecodingParams", Params)

    class LLM:
        instances: list[LLM] = []  # noqa: RUF012 - test double

        def __init__(self, **options: Any) -> None:
            self.options = options
            self.calls: list[tuple[list[Any], Any]] = []
            LLM.instances.append(self)

        def chat(self, conversations: list[Any], params: Any, use_tqdm: bool = True) -> list[Any]:
            self.calls.append((conversations, params))
            return [
                types.SimpleNamespace(
                    prompt_token_ids=[1] * 100,
                    num_cached_tokens=80,
                    outputs=[types.SimpleNamespace(text=text, token_ids=[1] * 10, finish_reason="stop")],
                )
                for text in texts[: len(conversations)]
            ]

    vllm.sampling_params = sampling  # type: ignore[attr-defined]
    vllm.SamplingParams = Params  # type: ignore[attr-defined]
    vllm.LLM = LLM  # type: ignore[attr-defined]
    return vllm


@pytest.mark.parametrize(("api", "keyword"), [("new", "structured_outputs"), ("old", "guided_decoding")])
def test_vllm_backend_with_a_fake_engine(monkeypatch: pytest.MonkeyPatch, api: str, keyword: str) -> None:
    texts = [json.dumps({"grade": 4, "failure_modes": [], "rationale": "Exact."}), "{not json"]
    fake = _fake_vllm(api, texts)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    from judges.vllm_backend import VLLMTeacher

    teacher = VLLMTeacher(POLICY, max_model_len=2048)
    judgments = teacher.judge([make_request(item_id="a"), make_request(item_id="b")])

    llm = fake.LLM.instances[-1]
    assert llm.options["enable_prefix_caching"] is True and llm.options["max_model_len"] == 2048
    conversations, params = llm.calls[0]
    assert conversations[0][0]["content"] == rubric_prefix(POLICY)
    assert params.kwargs["temperature"] == 0.0
    assert params.kwargs[keyword].kwargs == {"json": answer_schema(POLICY)}
    assert [j.status for j in judgments] == ["ok", "error"]
    assert judgments[0].grade == 4 and judgments[0].teacher_version.startswith(
        "vllm:Qwen/Qwen2.5-7B-Instruct#"
    )
    assert judgments[1].error is not None and judgments[1].error.startswith("answer is not JSON")
    assert teacher.stats.snapshot().cached_tokens == 160

"""Teacher run by an in-process vLLM engine inside a Ray Serve replica (GPU nodes only).

Same prompt, answer schema and parser as the HTTP backend (``judges.prompt``): the rubric prefix
is the system message, so vLLM's automatic prefix caching computes it once per replica; the
answer is constrained to the schema by vLLM's structured-output decoding.

``vllm`` is imported only in the constructor, so this module imports on machines without it
(CI, laptops); constructing the teacher there raises ``VLLMUnavailableError``. See
docs/llm-teacher.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from judges.base import JudgeRequest, VerdictError, error_judgment, ok_judgment
from judges.openai_backend import TeacherStats
from judges.prompt import answer_schema, parse_answer, prompt_fingerprint, render_messages
from schemas.judgments import Judgment
from schemas.policy import Policy

__all__ = ["INSTALL_HINT", "VLLMTeacher", "VLLMUnavailableError", "structured_sampling_params"]

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'evalloop[gpu]' on a GPU node"


class VLLMUnavailableError(RuntimeError):
    """vLLM is not installed (or cannot be imported) in this environment."""


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as error:
        raise VLLMUnavailableError(
            f"the vllm teacher backend needs the vllm package ({error}); {INSTALL_HINT}"
        ) from error
    return vllm


def structured_sampling_params(vllm: Any, schema: dict[str, Any], max_tokens: int) -> Any:
    """Greedy ``SamplingParams`` constrained to ``schema``, across vLLM API generations.

    vLLM >= 0.10.2 has ``StructuredOutputsParams`` / ``structured_outputs=``; 0.12 removed the
    older ``GuidedDecodingParams`` / ``guided_decoding=`` (0.6 – 0.11), which we fall back to.
    """
    sampling = vllm.sampling_params
    if hasattr(sampling, "StructuredOutputsParams"):
        constraint = sampling.StructuredOutputsParams(json=schema)
        return vllm.SamplingParams(temperature=0.0, max_tokens=max_tokens, structured_outputs=constraint)
    if hasattr(sampling, "GuidedDecodingParams"):
        constraint = sampling.GuidedDecodingParams(json=schema)
        return vllm.SamplingParams(temperature=0.0, max_tokens=max_tokens, guided_decoding=constraint)
    version = getattr(vllm, "__version__", "?")
    raise VLLMUnavailableError(f"vllm {version} has no structured-output API; evalloop needs vllm >= 0.6")


class VLLMTeacher:
    """A Teacher that grades batches of pairs with an in-process ``vllm.LLM``."""

    def __init__(
        self,
        policy: Policy,
        *,
        model: str | None = None,
        gpu_memory_utilization: float | None = None,
        max_model_len: int | None = None,
        max_tokens: int | None = None,
        **engine_options: Any,
    ) -> None:
        vllm = _import_vllm()
        settings = policy.teacher.vllm
        self._policy = policy
        self.model = model or settings.model
        self.max_tokens = max_tokens if max_tokens is not None else policy.teacher.openai.max_tokens
        self._version = f"vllm:{self.model}#{prompt_fingerprint(policy)}"
        self.stats = TeacherStats()
        self._lock = threading.Lock()  # vllm.LLM is not safe to drive from two threads at once
        self._sampling = structured_sampling_params(vllm, answer_schema(policy), self.max_tokens)
        options: dict[str, Any] = {
            "model": self.model,
            "enable_prefix_caching": True,  # the rubric prefix is shared by every request
            "gpu_memory_utilization": gpu_memory_utilization or settings.gpu_memory_utilization,
            "max_model_len": max_model_len or settings.max_model_len,
            "seed": 0,
        }
        options.update(engine_options)
        self._llm = vllm.LLM(**options)

    @property
    def teacher_version(self) -> str:
        """``vllm:{model}#{prompt hash}``."""
        return self._version

    @property
    def policy(self) -> Policy:
        return self._policy

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgment]:
        """Grade all pairs in one engine batch; results keep input order. ``latency_ms`` is the
        batch's wall time (the engine schedules the pairs together)."""
        if not requests:
            return []
        conversations = [render_messages(self._policy, request) for request in requests]
        started = time.perf_counter()
        self.stats.add(requests=len(requests))
        try:
            with self._lock:
                outputs = self._llm.chat(conversations, self._sampling, use_tqdm=False)
        except Exception as error:  # an engine failure fails the batch, never the caller
            logger.error("vllm engine error on a batch of %d: %s", len(requests), error)
            latency = _elapsed_ms(started)
            return [
                self._error(request, f"vllm engine error: {error}"[:500], latency) for request in requests
            ]
        latency = _elapsed_ms(started)
        return [
            self._from_output(request, output, latency)
            for request, output in zip(requests, outputs, strict=True)
        ]

    def _from_output(self, request: JudgeRequest, output: Any, latency: float) -> Judgment:
        completion = output.outputs[0]
        self.stats.add(
            prompt_tokens=len(output.prompt_token_ids or ()),
            completion_tokens=len(completion.token_ids or ()),
            cached_tokens=int(getattr(output, "num_cached_tokens", None) or 0),
        )
        try:
            verdict = parse_answer(self._policy, completion.text)
            judgment = ok_judgment(
                request,
                self._policy,
                self._version,
                verdict.grade,
                verdict.failure_modes,
                verdict.rationale,
                latency_ms=latency,
            )
        except VerdictError as error:
            reason = str(error)
            if completion.finish_reason == "length":
                reason = f"answer cut off at max_tokens={self.max_tokens}: {reason}"
            return self._error(request, reason, latency)
        self.stats.add(ok=1)
        return judgment

    def _error(self, request: JudgeRequest, reason: str, latency: float) -> Judgment:
        self.stats.add(errors=1)
        return error_judgment(request, self._policy, self._version, reason, latency_ms=latency)


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0

"""Teacher backends by name, imported only when asked for (the GPU one pulls in vLLM).

Every backend class takes ``(policy: Policy, **options)`` and implements ``judges.base.Teacher``.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from judges.base import Teacher
from schemas.policy import Policy

#: backend name -> (module, class)
BACKENDS: dict[str, tuple[str, str]] = {
    "embedding": ("judges.embedding_teacher", "EmbeddingTeacher"),
    "openai": ("judges.openai_backend", "OpenAITeacher"),
    "vllm": ("judges.vllm_backend", "VLLMTeacher"),
    "noop": ("judges.fake", "NoopTeacher"),
}


def backend_names() -> list[str]:
    """The registered backend names, sorted."""
    return sorted(BACKENDS)


def build_teacher(policy: Policy, backend: str | None = None, **options: Any) -> Teacher:
    """The teacher named ``backend`` (default: the policy's ``teacher.backend``) for ``policy``.

    Raises ValueError for an unknown name; the backend's own errors (missing artifact, missing
    model, unreachable server) propagate, since a misconfigured teacher must not start.
    """
    name = backend or policy.teacher.backend
    if name not in BACKENDS:
        raise ValueError(f"unknown teacher backend {name!r}; known backends: {', '.join(backend_names())}")
    module_name, class_name = BACKENDS[name]
    cls = getattr(importlib.import_module(module_name), class_name)
    teacher = cls(policy, **options)
    if not isinstance(teacher, Teacher):
        raise TypeError(f"{module_name}.{class_name} does not implement the Teacher protocol")
    return teacher


def unknown_options(backend: str, options: dict[str, Any]) -> list[str]:
    """The ``options`` the backend's constructor does not take (checked before any replica starts:
    a typo must not become a crash-looping replica). Backends taking ``**options`` accept all."""
    module_name, class_name = BACKENDS[backend]
    cls = getattr(importlib.import_module(module_name), class_name)
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return []
    return sorted(set(options) - {name for name in parameters if name not in ("self", "policy")})


def producible_failure_modes(policy: Policy, backend: str | None = None) -> set[str]:
    """The policy's failure modes the backend can ever tag: the embedding teacher only those with
    a ``detector``; the noop teacher only the first mode each grade allows; LLM teachers all."""
    name = backend or policy.teacher.backend
    if name == "embedding":
        return {mode.id for mode in policy.failure_modes if mode.detector is not None}
    if name == "noop":
        firsts = {next((m.id for m in policy.failure_modes if g <= m.max_grade), None) for g in policy.grades}
        return {mode for mode in firsts if mode is not None}
    return set(policy.failure_mode_ids())


def unreachable_rules(policy: Policy, backend: str | None = None) -> list[str]:
    """Warnings for alert rules on a failure mode the configured teacher can never produce."""
    name = backend or policy.teacher.backend
    producible = producible_failure_modes(policy, name)
    return [
        f"alerts.{rule.id} watches failure mode {rule.failure_mode!r}, which the {name} teacher never "
        f"tags (give it a `detector` in failure_modes, or use an LLM teacher): the rule can never fire"
        for rule in policy.alerts
        if rule.signal == "failure_mode_share" and rule.failure_mode not in producible
    ]

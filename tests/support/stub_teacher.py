"""A content-sensitive stub teacher: in-process (for ``evalloop.backtest``) and behind the Serve
HTTP contract (for a live worker), grading exactly alike so live and backtest can be compared.

The noop teacher grades by hash and cannot notice a degradation; this one calls an item relevant
(4) when its title shares a word with the query or it comes from the event's department, else
irrelevant (0, ``off_department``). Crude, but it tells injected foreign items apart.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from http.server import ThreadingHTTPServer

from judges.base import ok_judgment
from reliability.harness import teacher_server
from schemas.events import JudgeRequest
from schemas.judgments import Judgment
from schemas.policy import Policy

_WORD = re.compile(r"[a-z]+")
VERSION = "stub-v1"


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if len(w) >= 3}


def stub_grade(request: JudgeRequest) -> int:
    """4 when the item is from the event's department or shares a query word, else 0."""
    same_department = request.item.attributes.get("coarse_category") == request.category
    return 4 if same_department or _words(request.query) & _words(request.item.title) else 0


class StubTeacher:
    """The stub as a ``judges.base.Teacher`` (in-process)."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    @property
    def teacher_version(self) -> str:
        return VERSION

    @property
    def policy(self) -> Policy:
        return self._policy

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgment]:
        out = []
        for request in requests:
            grade = stub_grade(request)
            modes = ["off_department"] if grade == 0 else []
            out.append(ok_judgment(request, self._policy, VERSION, grade, modes, "stub"))
        return out


def stub_server(policy: Policy) -> ThreadingHTTPServer:
    """The stub behind the Serve HTTP contract (POST judges; GET answers its info), in a thread."""
    return teacher_server(StubTeacher(policy))

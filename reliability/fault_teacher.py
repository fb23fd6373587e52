"""A fault-injecting teacher speaking the Serve protocol, for driving the live loop into failures.

``POST /teacher`` with ``{"requests": [JudgeRequest...]}`` answers ``{"judgments": [Judgment...]}``
exactly like ``workers.deployment`` when the mode is ``healthy`` (grades from
``judges.fake.NoopTeacher``: a hash of the pair, so it is instant and deterministic). Every other
mode breaks one thing the stream's teacher client must survive:

=====================  =====================================================================
mode                   answer
=====================  =====================================================================
``healthy``            valid judgments (NoopTeacher)
``timeout``            sleeps ``delay_s`` (longer than the client's timeout), then answers
``http_429``           429 with ``Retry-After: retry_after_s``
``http_500``           500
``http_503``           503 (Serve's "replicas saturated")
``malformed_json``     200 with a truncated JSON body
``wrong_count``        200 with one judgment too few
``grade_over_schema``  200, grade 11: outside the Judgment schema's 0-10
``out_of_scale``       200, grade ``max_grade + 3``: schema-valid, off the policy's scale
``unknown_mode``       200, a failure mode the policy does not define
``empty_rationale``    200, ok judgments with an empty rationale
=====================  =====================================================================

``down`` is not a mode: ``stop()`` closes the listening socket (connection refused) and
``restart()`` binds the same port again. ``fail_times`` limits a fault to the next N requests,
after which the server answers healthily (a transient fault that retries should absorb).

Every request is recorded (mode, arrival time, pairs), so tests can count the client's retries
and measure its backoff from the server's side.

    python -m reliability.fault_teacher --port 18100 [--mode healthy]
    curl -X PUT localhost:18100/mode -d '{"mode": "http_503", "fail_times": 2}'
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, get_args

from judges.base import JudgeRequest
from judges.fake import NoopTeacher
from schemas.policy import Policy, load_policy

Mode = Literal[
    "healthy",
    "timeout",
    "http_429",
    "http_500",
    "http_503",
    "malformed_json",
    "wrong_count",
    "grade_over_schema",
    "out_of_scale",
    "unknown_mode",
    "empty_rationale",
]
MODES: tuple[Mode, ...] = get_args(Mode)
UNKNOWN_FAILURE_MODE = "made_up_failure_mode"


@dataclass(frozen=True)
class Hit:
    """One request the server received."""

    mode: Mode
    at: float
    pairs: int
    event_ids: frozenset[str] = frozenset()


@dataclass
class FaultState:
    """The scripted behaviour and what was seen; shared by the handler threads under ``lock``."""

    policy: Policy
    mode: Mode = "healthy"
    fail_times: int | None = None
    delay_s: float = 3.0
    retry_after_s: int = 2
    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set_mode(self, mode: Mode, fail_times: int | None = None) -> None:
        """Switch to ``mode``; with ``fail_times``, only the next N requests get the fault."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; modes: {MODES}")
        with self.lock:
            self.mode, self.fail_times = mode, fail_times

    def take(self, pairs: int, event_ids: frozenset[str] = frozenset()) -> Mode:
        """Record a request and return the mode it is answered in."""
        with self.lock:
            mode = self.mode
            if self.fail_times is not None:
                if self.fail_times <= 0:
                    mode = "healthy"
                self.fail_times -= 1
            self.hits.append(Hit(mode, time.monotonic(), pairs, event_ids))
            return mode

    def hits_in(self, mode: Mode, since: float = 0.0) -> list[Hit]:
        """Requests answered in ``mode`` that arrived at or after ``since`` (monotonic)."""
        with self.lock:
            return [hit for hit in self.hits if hit.mode == mode and hit.at >= since]


def judgments_payload(state: FaultState, requests: list[JudgeRequest], mode: Mode) -> bytes:
    """The 200 body for ``mode``: NoopTeacher's judgments, corrupted as the mode says."""
    judged = NoopTeacher(state.policy).judge(requests)
    docs = [json.loads(j.model_dump_json()) for j in judged]
    for doc in docs:
        _corrupt(doc, mode, state.policy)
    if mode == "wrong_count":
        docs = docs[:-1]
    body = json.dumps({"judgments": docs}).encode()
    # Cut mid-document: what a proxy that dropped the connection, or a crashed encoder, leaves.
    return body[: max(1, len(body) // 2)] if mode == "malformed_json" else body


def _corrupt(doc: dict[str, Any], mode: Mode, policy: Policy) -> None:
    if doc.get("status") != "ok":
        return
    if mode == "grade_over_schema":
        doc["grade"] = 11
    elif mode == "out_of_scale":
        doc["grade"] = policy.max_grade + 3
    elif mode == "unknown_mode":
        doc["failure_modes"] = [UNKNOWN_FAILURE_MODE]
    elif mode == "empty_rationale":
        doc["rationale"] = ""


def _handler(state: FaultState) -> type[BaseHTTPRequestHandler]:
    # HTTP/1.0 (the default): one request per connection, so ``stop()`` really refuses the next
    # call instead of a pooled keep-alive connection still reaching a handler thread.
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            """The Serve info (the worker's start-up check); faults apply to judging only."""
            info = {"teacher_version": "fault-teacher", **state.policy.identity(), "healthy": True}
            self._send(200, json.dumps(info).encode())

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            requests = [JudgeRequest.model_validate(r) for r in json.loads(body)["requests"]]
            mode = state.take(len(requests), frozenset(r.event_id for r in requests))
            self._answer(mode, requests)

        def do_PUT(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
            state.set_mode(body["mode"], body.get("fail_times"))
            self._send(200, b'{"ok": true}')

        def _answer(self, mode: Mode, requests: list[JudgeRequest]) -> None:
            if mode == "timeout":
                time.sleep(state.delay_s)
            if mode in ("http_429", "http_500", "http_503"):
                headers = {"Retry-After": str(state.retry_after_s)} if mode == "http_429" else {}
                self._send(int(mode[-3:]), b'{"error": "injected fault"}', headers)
                return
            self._send(200, judgments_payload(state, requests, mode))

        def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout): exactly what the timeout mode is for

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class FaultTeacherServer:
    """The fault teacher on 127.0.0.1 in a background thread; ``stop``/``restart`` for outages."""

    def __init__(self, policy: Policy, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = FaultState(policy)
        self.host = host
        self.port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The teacher endpoint, as ``EVALLOOP_STREAM_TEACHER_URL`` wants it."""
        return f"http://{self.host}:{self.port}/teacher"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> FaultTeacherServer:
        """Listen (on the same port again after a ``stop``)."""
        if self._server is None:
            self._server = _Server((self.host, self.port), _handler(self.state))
            self.port = self._server.server_address[1]
            self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listening socket: new connections are refused (the teacher is down)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def restart(self) -> None:
        """Come back on the same port after ``stop``."""
        self.start()

    def __enter__(self) -> FaultTeacherServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the fault teacher until interrupted; switch modes with ``PUT /mode``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=18100)
    parser.add_argument("--policy", type=Path, default=Path("policies/product-search.yaml"))
    parser.add_argument("--mode", choices=MODES, default="healthy")
    args = parser.parse_args(argv)
    server = FaultTeacherServer(load_policy(args.policy), port=args.port).start()
    server.state.set_mode(args.mode)
    print(f"fault teacher on {server.url} in mode {args.mode}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A tiny real HTTP server speaking the OpenAI chat-completions protocol, for protocol tests.

It runs ``http.server`` in a thread on 127.0.0.1 (port 0, so tests never collide), answers
``POST /v1/chat/completions`` from a scriptable queue of replies, and records every request it
received. When the queue is empty it answers with ``default`` (a valid grade-2 answer), or asks
``responder`` if one is set (to answer by request content when requests arrive concurrently).

It imitates a prefix-caching server: ``usage.prompt_tokens_details.cached_tokens`` counts the
system message as cached when the same system message was seen before.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = [
    "OpenAIStub",
    "RecordedRequest",
    "Reply",
    "answer",
    "bad_body",
    "http_error",
    "ok",
    "rate_limited",
    "server_error",
    "slow",
]

CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Reply:
    """One scripted HTTP response; ``delay_s`` is waited before answering."""

    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    """What the stub received."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def user_message(self) -> str:
        messages = self.body.get("messages", [])
        return str(messages[-1]["content"]) if messages else ""


def _completion(
    content: str | None, usage: dict[str, Any] | None = None, finish_reason: str = "stop"
) -> bytes:
    payload = {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": "stub",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ],
        "usage": usage or {},
    }
    return json.dumps(payload).encode("utf-8")


def answer(content: str | None, finish_reason: str = "stop") -> Reply:
    """A 200 chat completion whose message content is ``content`` verbatim (may be broken)."""
    return Reply(
        200, _completion(content, finish_reason=finish_reason), (("Content-Type", "application/json"),)
    )


def ok(grade: int = 2, failure_modes: Sequence[str] = (), rationale: str = "Matches the query.") -> Reply:
    """A well-formed answer; grade, modes and rationale are sent as given (even off-policy)."""
    content = json.dumps({"grade": grade, "failure_modes": list(failure_modes), "rationale": rationale})
    return answer(content)


def rate_limited(retry_after: str | None = "1") -> Reply:
    """429 Too Many Requests, with an optional Retry-After header."""
    headers = (("Retry-After", retry_after),) if retry_after is not None else ()
    return Reply(429, b'{"error": {"message": "rate limited"}}', headers)


def server_error(status: int = 500) -> Reply:
    """A 5xx error."""
    return Reply(status, b'{"error": {"message": "server error"}}')


def http_error(status: int = 400, message: str = "bad request") -> Reply:
    """A 4xx error with an OpenAI-style error body."""
    return Reply(status, json.dumps({"error": {"message": message}}).encode("utf-8"))


def bad_body() -> Reply:
    """HTTP 200 whose body is not a chat-completions JSON document (e.g. a proxy's HTML page)."""
    return Reply(200, b"<html>gateway says hi</html>", (("Content-Type", "text/html"),))


def slow(delay_s: float, then: Reply | None = None) -> Reply:
    """``then`` (default: a valid answer) sent only after ``delay_s`` seconds."""
    base = then or ok()
    return Reply(base.status, base.body, base.headers, delay_s)


@dataclass
class _State:
    queue: deque[Reply] = field(default_factory=deque)
    requests: list[RecordedRequest] = field(default_factory=list)
    seen_prefixes: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)


class OpenAIStub:
    """Context manager: ``with OpenAIStub() as stub: OpenAITeacher(..., base_url=stub.base_url)``."""

    def __init__(
        self, default: Reply | None = None, responder: Callable[[RecordedRequest], Reply] | None = None
    ):
        self.default = default or ok()
        self.responder = responder
        self._state = _State()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        # A short poll interval makes shutdown() (every test teardown) return quickly.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="openai-stub", daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Requests received so far, in arrival order."""
        with self._state.lock:
            return list(self._state.requests)

    def enqueue(self, *replies: Reply) -> None:
        """Script the next replies, answered in arrival order."""
        with self._state.lock:
            self._state.queue.extend(replies)

    def start(self) -> OpenAIStub:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._state.stopping.set()  # wakes handlers sleeping in a slow reply
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> OpenAIStub:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def _next_reply(self, request: RecordedRequest) -> Reply:
        with self._state.lock:
            self._state.requests.append(request)
            if self._state.queue:
                return self._state.queue.popleft()
        return self.responder(request) if self.responder else self.default

    def _usage(self, body: dict[str, Any]) -> dict[str, Any]:
        messages = body.get("messages") or [{"content": ""}]
        system = str(messages[0].get("content", ""))
        prompt_tokens = sum(len(str(message.get("content", ""))) for message in messages) // 4 + 1
        with self._state.lock:
            cached = len(system) // 4 if system in self._state.seen_prefixes else 0
            self._state.seen_prefixes.add(system)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": 20,
            "total_tokens": prompt_tokens + 20,
            "prompt_tokens_details": {"cached_tokens": cached},
        }

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"_unparsed": raw.decode("utf-8", "replace")}
                recorded = RecordedRequest(self.path, dict(self.headers.items()), body)
                if self.path != CHAT_PATH:
                    self._send(Reply(404, b'{"error": {"message": "not found"}}'))
                    return
                reply = stub._next_reply(recorded)
                if reply.delay_s and stub._state.stopping.wait(reply.delay_s):
                    return
                self._send(self._with_usage(reply, body))

            def _with_usage(self, reply: Reply, body: dict[str, Any]) -> Reply:
                if reply.status != 200:
                    return reply
                try:
                    payload = json.loads(reply.body)
                except json.JSONDecodeError:
                    return reply
                if isinstance(payload, dict) and payload.get("usage") == {}:
                    payload["usage"] = stub._usage(body)
                    return Reply(reply.status, json.dumps(payload).encode("utf-8"), reply.headers)
                return reply

            def _send(self, reply: Reply) -> None:
                try:
                    self.send_response(reply.status)
                    headers = dict(reply.headers)
                    headers.setdefault("Content-Type", "application/json")
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to answer

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        return Handler

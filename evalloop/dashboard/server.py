"""The dashboard's HTTP server (stdlib ``ThreadingHTTPServer``): ``/`` the page, ``/api/status``
the status report as JSON, ``/review`` the golden review page (GET; POST writes an edit),
``/healthz``. Loopback by default; every error is a short page, never a traceback."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from evalloop.dashboard import html, page, views
from evalloop.dashboard.review_html import render_review
from evalloop.dashboard.sources import Sources
from evalloop.review import ReviewDesk
from judges.golden_review import ReviewError

log = logging.getLogger("evalloop.dashboard")
MAX_FORM_BYTES = 64 * 1024  # a review form is a reason and a few fields
Gate1 = Callable[[], dict[str, Any] | None]


def parse_query(text: str) -> page.Query:
    """The page query from a URL's query string (unknown or malformed values are ignored)."""
    raw = {key: values[-1] for key, values in parse_qs(text).items() if values and values[-1]}
    grade = raw.get("grade")
    filters = views.JudgmentFilter(
        category=raw.get("category"),
        grade=int(grade) if grade is not None and grade.isdigit() else None,
        failure_mode=raw.get("failure_mode"),
        model_version=raw.get("model_version"),
    )
    return page.Query(
        raw.get("category"), page.parse_time(raw.get("from")), page.parse_time(raw.get("to")), filters
    )


class Dashboard:
    """What a request handler needs: the sources, the chart window and the Gate 1 report."""

    def __init__(
        self, sources: Sources, window_s: int, gate1: Gate1, review: ReviewDesk | None = None
    ) -> None:
        self.sources, self.window_s, self.gate1, self.review = sources, window_s, gate1, review

    def page(self, query_text: str) -> str:
        """The HTML page for a query string."""
        return html.render(page.build(self.sources, parse_query(query_text), self.window_s, self.gate1()))

    def review_page(self, message: str = "", error: str = "") -> str:
        """The golden review page (a short note when the desk is off)."""
        if self.review is None:
            return "<!doctype html><p>golden review is off: no golden file</p>"
        return render_review(self.review.view(), self.review.policy, message, error)

    def submit_review(self, body: str) -> tuple[int, str]:
        """Apply one edit posted from the review page: (status, page)."""
        if self.review is None:
            return 404, self.review_page()
        form = {key: values[-1] for key, values in parse_qs(body, keep_blank_values=True).items()}
        try:
            written = self.review.submit(form)
        except ReviewError as error:
            return 400, self.review_page(error=str(error))
        return 200, self.review_page(message=f"wrote {written.path} ({written.version})\n{written.diff}")


def _handler(dashboard: Dashboard) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            try:
                if url.path == "/":
                    self._send(200, "text/html; charset=utf-8", dashboard.page(url.query).encode())
                elif url.path == "/api/status":
                    report = dashboard.sources.status(dashboard.window_s)
                    self._send(200, "application/json", json.dumps(report).encode())
                elif url.path == "/review":
                    self._send(200, "text/html; charset=utf-8", dashboard.review_page().encode())
                elif url.path == "/healthz":
                    self._send(200, "text/plain", b"ok\n")
                else:
                    self._send(404, "text/plain", b"not found\n")
            except Exception as error:  # a store away: say so, keep serving
                log.warning("dashboard: %s failed: %s: %s", url.path, type(error).__name__, error)
                self._send(
                    503,
                    "text/plain; charset=utf-8",
                    f"unavailable: {type(error).__name__}: {error}\n".encode(),
                )

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            try:
                if url.path != "/review":
                    self._send(404, "text/plain", b"not found\n")
                    return
                length = min(int(self.headers.get("Content-Length") or 0), MAX_FORM_BYTES)
                status, body = dashboard.submit_review(self.rfile.read(length).decode("utf-8", "replace"))
                self._send(status, "text/html; charset=utf-8", body.encode())
            except Exception as error:  # a bad file or form: say so, keep serving
                log.warning("dashboard: POST %s failed: %s: %s", url.path, type(error).__name__, error)
                self._send(
                    500, "text/plain; charset=utf-8", f"failed: {type(error).__name__}: {error}\n".encode()
                )

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("dashboard: " + format, *args)

    return Handler


def serve(dashboard: Dashboard, host: str, port: int) -> ThreadingHTTPServer:
    """A started-to-be server bound to ``host:port`` (port 0: a free one); call ``serve_forever``."""
    server = ThreadingHTTPServer((host, port), _handler(dashboard))
    server.daemon_threads = True
    return server

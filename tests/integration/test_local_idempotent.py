"""`python -m infra.local up` while the services run: exits 0 quickly and says they are already up."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_up_again_is_fast_and_says_already_up(kafka_bootstrap: str, redis_client: object) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "infra.local", "up"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kafka: already up" in done.stdout
    assert "redis: already up" in done.stdout
    assert "all services already up" in done.stdout
    assert took < 15, f"second `up` took {took:.1f}s"


def test_status_reports_up(kafka_bootstrap: str, redis_client: object) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "infra.local", "status"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "kafka: up" in done.stdout
    assert "redis: up" in done.stdout

"""Kafka's own console tools, run from the project (`make kafka-tool` / `python -m infra.local
tool`), against the local broker: what an outside producer and an operator use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _tool(*args: str, stdin: str = "", timeout: float = 90) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "infra.local", "tool", *args]
    return subprocess.run(
        command, cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_console_producer_consumer_and_groups_round_trip(fresh_topic: str) -> None:
    lines = ['{"event_id":"console-1"}', "not even json"]
    produced = _tool("console-producer", "--topic", fresh_topic, stdin="\n".join(lines) + "\n")
    assert produced.returncode == 0, produced.stderr
    consumed = _tool(
        "console-consumer",
        "--topic",
        fresh_topic,
        "--from-beginning",
        "--max-messages",
        "2",
        "--group",
        "evalloop-tools-test",
    )
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout.splitlines() == lines
    groups = _tool("consumer-groups", "--describe", "--group", "evalloop-tools-test")
    assert groups.returncode == 0 and fresh_topic in groups.stdout


def test_an_unknown_tool_is_one_line() -> None:
    done = _tool("nope")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: unknown Kafka tool 'nope'; one of: console-consumer, console-producer, consumer-groups, "
        "get-offsets, topics"
    ]

"""Every command, with a service down, a wrong path or a bad option, answers one line (what
failed, the address or file, what to do) and a non-zero exit code: never a traceback, never
librdkafka's own log lines. Each runs as ``python -m evalloop.cli`` in a process of its own with the
services pointed at closed loopback ports, so no real service is needed (the live cases with Kafka and
Redis up are in tests/integration/test_worker_startup.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

KAFKA_DOWN = {"EVALLOOP_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1"}
REDIS_DOWN = {"EVALLOOP_REDIS__URL": "redis://127.0.0.1:1/0"}

CASES = [
    # (argv, environment, text the line must hold)
    (["status"], REDIS_DOWN, "Redis is not reachable at redis://127.0.0.1:1/0"),
    (["status", "--window", "7x"], REDIS_DOWN, "duration '7x'"),
    (["status", "--policy", "/nope.yaml"], {}, "/nope.yaml"),
    (["events", "check", "/nope.jsonl"], {}, "no such file: /nope.jsonl"),
    (["export", "judgments"], KAFKA_DOWN, "Kafka is not reachable at 127.0.0.1:1"),
    (["windows", "rebuild"], KAFKA_DOWN, "Kafka is not reachable at 127.0.0.1:1"),
    (["replay", "data/wands/events.jsonl"], KAFKA_DOWN, "Kafka is not reachable at 127.0.0.1:1"),
    (["replay", "/nope.jsonl"], {}, "no such file: /nope.jsonl"),
    (["worker"], KAFKA_DOWN, "Kafka is not reachable at 127.0.0.1:1"),
    (["worker", "--policy", "/nope.yaml"], {}, "/nope.yaml"),
    (["offsets", "show"], KAFKA_DOWN, "Kafka is not reachable at 127.0.0.1:1"),
    (["offsets", "skip", "--topic", "events", "--partition", "0", "--to", "1"], KAFKA_DOWN, "Kafka is not"),
    (["demo"], KAFKA_DOWN, "Kafka is not reachable at 127.0.0.1:1"),
    (["backtest", "/nope.jsonl"], {}, "no such file: /nope.jsonl"),
    (["backtest", "data/wands/events.jsonl", "--inject-degradation", "Nowhere"], {}, "unknown category"),
    (["policy", "check", "/nope.yaml"], {}, "/nope.yaml"),
    (["gate1", "/nope.jsonl"], {}, "/nope.jsonl"),
    (["gate2", "--golden", "/nope.jsonl"], {}, "/nope.jsonl"),
    (["golden", "check", "/nope.jsonl"], {}, "/nope.jsonl"),
    (["serve", "--policy", "/nope.yaml"], {}, "/nope.yaml"),
    (["teacher", "fit", "--golden", "/nope.jsonl"], {}, "no such file: /nope.jsonl"),
    (["status"], {"EVALLOOP_REDIS__URL": "http://nope"}, "invalid setting redis.url"),
    (["dashboard"], REDIS_DOWN, "Redis is not reachable at redis://127.0.0.1:1/0"),
    (["policy", "export-rules", "--policy", "/nope.yaml"], {}, "/nope.yaml"),
    (["golden", "diff", "/nope.jsonl", "/nope.jsonl"], {}, "/nope.jsonl"),
]


@pytest.mark.parametrize(
    ("argv", "env", "expected"), CASES, ids=[" ".join(c[0]) + str(sorted(c[1])) for c in CASES]
)
def test_failures_are_one_clear_line_and_a_non_zero_exit(
    argv: list[str], env: dict[str, str], expected: str
) -> None:
    # A process of its own, as a user runs it: its stderr is the command's alone (in-process, a
    # Kafka client another test left for the garbage collector can print into it).
    environment = {k: v for k, v in os.environ.items() if k != "EVALLOOP_DEBUG"} | env
    command = [sys.executable, "-m", "evalloop.cli", *argv]
    done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0, (done.stdout, done.stderr)
    assert len(lines) == 1, f"expected one line, got:\n{done.stderr}"
    assert lines[0].startswith(f"evalloop {argv[0]}"), lines[0]
    assert expected in lines[0], lines[0]

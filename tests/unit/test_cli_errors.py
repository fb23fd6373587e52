"""Every command, with a service down, a wrong path or a bad option, answers one line (what
failed, the address or file, what to do) and a non-zero exit code: never a traceback, never
librdkafka's own log lines. Run in-process through ``evalloop.cli.main`` with the services
pointed at closed loopback ports, so no real service is needed (the live cases with Kafka and
Redis up are in tests/integration/test_worker_startup.py)."""

from __future__ import annotations

import os

import pytest

from evalloop.cli import main

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
]


@pytest.mark.parametrize(
    ("argv", "env", "expected"), CASES, ids=[" ".join(c[0]) + str(sorted(c[1])) for c in CASES]
)
def test_failures_are_one_clear_line_and_a_non_zero_exit(
    argv: list[str],
    env: dict[str, str],
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # `demo` writes its run's settings into the environment: keep that inside this test.
    monkeypatch.setattr(os, "environ", dict(os.environ))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("EVALLOOP_DEBUG", raising=False)
    code = main(argv)
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0, (out, err)
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert lines[0].startswith(f"evalloop {argv[0]}"), lines[0]
    assert expected in lines[0], lines[0]
    assert "Traceback" not in out + err and "rdkafka" not in err


def test_a_bad_option_is_argparses_usage_and_exit_2(capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["replay", "data/wands/events.jsonl", "--speed", "-1"])
    assert caught.value.code == 2
    err = capfd.readouterr().err
    assert "speed must be > 0" in err and "Traceback" not in err

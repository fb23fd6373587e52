"""`evalloop serve --option KEY=VALUE`: parsed, typed, and checked against the backend before
anything starts (a typo is exit 2 with one line, never a crash-looping replica)."""

from __future__ import annotations

import pytest

from evalloop.cli import main
from evalloop.commands.serve import _option
from judges.registry import unknown_options


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("base_url=http://127.0.0.1:8088/v1", ("base_url", "http://127.0.0.1:8088/v1")),
        ("timeout_s=0.5", ("timeout_s", 0.5)),
        ("max_retries=2", ("max_retries", 2)),
        ("model=smollm2-135m", ("model", "smollm2-135m")),
    ],
)
def test_options_are_typed(text: str, expected: tuple[str, object]) -> None:
    assert _option(text) == expected


@pytest.mark.parametrize(
    ("backend", "options", "unknown"),
    [
        ("openai", {"base_url": "x", "model": "m", "timeout_s": 1.0}, []),
        ("openai", {"modle": "m"}, ["modle"]),
        ("noop", {"grade": 4, "colour": 1}, ["colour"]),
        ("embedding", {"artifact": "a.json", "anything": 1}, []),  # takes **options
    ],
)
def test_unknown_options_are_named(backend: str, options: dict[str, object], unknown: list[str]) -> None:
    assert unknown_options(backend, options) == unknown


def test_serve_refuses_a_typo_before_starting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--backend", "openai", "--option", "modle=x"]) == 2
    assert "the openai backend takes no option(s) modle" in capsys.readouterr().err

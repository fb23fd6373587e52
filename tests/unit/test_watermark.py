"""streams.watermark: monotone max event time minus allowed lateness."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from streams.watermark import Watermark

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_empty_watermark() -> None:
    watermark = Watermark(60)
    assert watermark.value is None
    assert watermark.max_event_time is None
    assert not watermark.is_late(at(-10_000))


@pytest.mark.parametrize(
    ("observed", "lateness", "expected"),
    [
        ([0], 0, 0),
        ([0], 60, -60),
        ([0, 100, 50], 60, 40),  # an older event does not move it back
        ([100, 50, 20, 10], 30, 70),
        ([10, 20, 30], 0, 30),
    ],
)
def test_value(observed: list[float], lateness: float, expected: float) -> None:
    watermark = Watermark(lateness)
    for seconds in observed:
        watermark.observe(at(seconds))
    assert watermark.value == at(expected)


@pytest.mark.parametrize(
    ("event", "late"),
    [(39, True), (40, False), (41, False), (-1000, True), (500, False)],
)
def test_is_late(event: float, late: bool) -> None:
    watermark = Watermark(60)
    watermark.observe(at(100))
    assert watermark.is_late(at(event)) is late  # watermark at 40: strictly before is late


def test_negative_lateness_rejected() -> None:
    with pytest.raises(ValueError):
        Watermark(-1)

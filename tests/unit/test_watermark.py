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


def test_paired_watermarks_keep_judgments_partitions_apart() -> None:
    """A judgments partition read far ahead of another must not move the other's watermark:
    each runs on its own sources' marks (the fix for alerts running before their judgments)."""
    from datetime import UTC, datetime, timedelta

    from streams.watermark import PairedWatermarks

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    marks = PairedWatermarks(0.0, sources=2, idle_s=1e9)
    key = PairedWatermarks.key
    marks.observe(t0 + timedelta(hours=10), key(0, 0))
    marks.observe(t0 + timedelta(hours=10), key(0, 1))
    marks.observe(t0 + timedelta(hours=2), key(1, 0))
    assert marks.at(0) == t0 + timedelta(hours=10)
    assert marks.at(1) is None, "source 1 has said nothing on partition 1 yet: hold it back"
    assert marks.at(2) is None and marks.value is None
    marks.observe(t0 + timedelta(hours=3), key(1, 1))
    assert marks.at(1) == t0 + timedelta(hours=2)
    assert marks.value == t0 + timedelta(hours=2), "expiry uses the least"
    assert marks.at(0) == t0 + timedelta(hours=10), "partition 0 is not held back by partition 1"

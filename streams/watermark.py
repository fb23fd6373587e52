"""Event-time watermark: how far the stream has certainly progressed, allowing for lateness.

Windows and alerts are evaluated at the watermark, never at wall time, so replaying a recorded
day at full speed produces the same windows and alerts as the live run did.
"""

from __future__ import annotations

from datetime import datetime, timedelta


class Watermark:
    """The maximum event time seen, minus ``allowed_lateness_s``; it never moves backwards."""

    def __init__(self, allowed_lateness_s: float) -> None:
        if allowed_lateness_s < 0:
            raise ValueError("allowed_lateness_s must be >= 0")
        self.allowed_lateness = timedelta(seconds=allowed_lateness_s)
        self._max_event_time: datetime | None = None

    def observe(self, event_time: datetime) -> None:
        """Advance the maximum event time seen (an older time is ignored: monotone)."""
        if self._max_event_time is None or event_time > self._max_event_time:
            self._max_event_time = event_time

    @property
    def max_event_time(self) -> datetime | None:
        """The latest event time observed, or None before the first event."""
        return self._max_event_time

    @property
    def value(self) -> datetime | None:
        """Max event time − allowed lateness; None until an event has been observed."""
        if self._max_event_time is None:
            return None
        return self._max_event_time - self.allowed_lateness

    def is_late(self, event_time: datetime) -> bool:
        """True when ``event_time`` is strictly before the watermark (its windows are closed)."""
        watermark = self.value
        return watermark is not None and event_time < watermark

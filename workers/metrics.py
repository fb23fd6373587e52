"""The teacher deployment's own metrics, beside Ray Serve's (``ray.serve.metrics``: exported by
Ray's metrics agent in Prometheus format, tagged with application, deployment and replica):

* ``evalloop_teacher_pairs`` (counter, tag ``status`` ok/error): pairs graded;
* ``evalloop_teacher_batches`` (counter): batches run by the backend;
* ``evalloop_teacher_batch_seconds`` (histogram): one backend batch's duration;
* ``evalloop_teacher_batch_pairs`` (histogram): pairs in one batch.

Ray prefixes them with ``ray_`` on its metrics export port (docs/metrics.md). Created on the first
batch inside a replica; a replica that cannot report them still grades.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("evalloop.teacher.metrics")
SECONDS_BOUNDARIES = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
PAIRS_BOUNDARIES = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]


class ReplicaMetrics:
    """The counters and histograms of one replica."""

    def __init__(self) -> None:
        from ray.serve import metrics

        self.pairs: Any = metrics.Counter(
            "evalloop_teacher_pairs", description="(request, item) pairs graded", tag_keys=("status",)
        )
        self.batches: Any = metrics.Counter("evalloop_teacher_batches", description="backend batches run")
        self.batch_seconds: Any = metrics.Histogram(
            "evalloop_teacher_batch_seconds", description="one backend batch", boundaries=SECONDS_BOUNDARIES
        )
        self.batch_pairs: Any = metrics.Histogram(
            "evalloop_teacher_batch_pairs", description="pairs in one batch", boundaries=PAIRS_BOUNDARIES
        )

    def record(self, pairs: int, errors: int, seconds: float) -> None:
        """One batch: its pairs (``errors`` of them error judgments) and how long it took."""
        if pairs - errors:
            self.pairs.inc(pairs - errors, tags={"status": "ok"})
        if errors:
            self.pairs.inc(errors, tags={"status": "error"})
        self.batches.inc()
        self.batch_seconds.observe(seconds)
        self.batch_pairs.observe(pairs)


class LazyReplicaMetrics:
    """``ReplicaMetrics`` made on first use; off for good if Ray cannot make them (no replica)."""

    def __init__(self) -> None:
        self._metrics: ReplicaMetrics | None = None
        self._failed = False

    def record(self, pairs: int, errors: int, seconds: float) -> None:
        """Record a batch, or nothing when metrics are unavailable."""
        if self._failed:
            return
        try:
            if self._metrics is None:
                self._metrics = ReplicaMetrics()
            self._metrics.record(pairs, errors, seconds)
        except Exception as error:  # reporting must never cost a grade
            self._failed = True
            log.warning("teacher metrics off: %s: %s", type(error).__name__, error)

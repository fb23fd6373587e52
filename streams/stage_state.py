"""What the loop's stages remember between batches, apart from their wiring (``Components``).

Watermarks, the offsets stage 1 has read, where each category's evaluation starts, when input
was last seen, the idle close-out, and the alert engine over the wired windows and alert states.
Built once from the wiring (``StageState.for_wiring``); the handlers in ``streams.stages`` read
and update it, tests inspect it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from streams import pipeline
from streams.engine import AlertEngine
from streams.sampling import Sampler
from streams.watermark import PairedWatermarks, PartitionedWatermark

if TYPE_CHECKING:
    from streams.stages import Components


@dataclass
class StageState:
    """The stages' memory (see the module docstring); one per worker process."""

    sampler: Sampler
    #: Events older than watermark - this are dead-lettered "late" (the policy's longest window).
    retention_s: float
    event_watermark: PartitionedWatermark
    #: Judgments arrive on category-keyed partitions that mix every sample partition, and the
    #: judge stage drains sample partitions at different speeds (hours of event time apart at max
    #: replay speed). Each sample partition's judgments reach a judgments partition in event-time
    #: order, so the watermark is kept per (judgments partition, *source* sample partition: a
    #: header on each judgment) and a category runs up to its own judgments partition's minimum.
    judgment_watermark: PairedWatermarks
    #: A judgment is only dropped once its buckets may have expired (the window TTL): one that
    #: arrives after its boundary was evaluated still counts in the windows.
    judgment_retention_s: float
    examples: pipeline.RecentExamples
    #: The rules at each boundary, over the windows and alert states (held in memory).
    engine: AlertEngine
    #: Wall time (monotonic) of the last judgment batch (or start): the idle close-out counts from it.
    last_input_wall: float
    #: Last offset stage 1 handled per events partition (whether a silent partition caught up).
    event_offsets: dict[int, int] = field(default_factory=dict)
    #: Per category, the earliest judgment event time this worker applied (where to start).
    first_seen: dict[str, float] = field(default_factory=dict)
    #: Serialises evaluation between the aggregate agent and the idle timer.
    evaluation_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: The judgments partitions owned at the last evaluation (a change reloads the engine).
    last_owned: frozenset[int] | None = None
    #: (target, owned partitions) of the last idle close-out; None once new judgments arrive.
    closed_out: tuple[float, frozenset[int] | None] | None = None

    @classmethod
    def for_wiring(cls, c: Components) -> StageState:
        """The initial state for the wiring ``c``."""
        lateness, idle = c.stream.allowed_lateness_s, c.stream.partition_idle_s
        topics = c.settings.topics
        examples = pipeline.RecentExamples()
        return cls(
            sampler=Sampler(c.policy),
            retention_s=c.stream.retention_s or pipeline.policy_retention_s(c.policy),
            event_watermark=PartitionedWatermark(lateness, topics.events.partitions, idle),
            judgment_watermark=PairedWatermarks(lateness, topics.samples.partitions, idle),
            judgment_retention_s=float(c.stream.window_ttl_s),
            examples=examples,
            engine=AlertEngine(c.policy, c.windows, c.alert_states, examples, c.corrector),
            last_input_wall=c.clock(),
        )

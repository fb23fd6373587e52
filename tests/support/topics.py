"""Settings whose five loop topics are named ``<prefix>.<topic>`` with ``partitions`` each: the
stages' unit tests run on these with in-memory outputs."""

from __future__ import annotations

from schemas.settings import Settings, TopicSettings, TopicSpec

LOOP_TOPICS = ("events", "samples", "judgments", "alerts", "dead_letters")


def topic_settings(prefix: str = "t", partitions: int = 1) -> Settings:
    """Default settings with every loop topic renamed and sized."""
    specs = {name: TopicSpec(name=f"{prefix}.{name}", partitions=partitions) for name in LOOP_TOPICS}
    return Settings().model_copy(update={"topics": TopicSettings(**specs)})

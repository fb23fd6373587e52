"""The input of the agreement statistics: one rater's grade of one item, and its clean-up.

Shared by :mod:`judges.pairwise` and :mod:`judges.agreement` (which re-exports :class:`Rating`
and :func:`deduplicate`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Rating", "deduplicate", "labels_by_item"]


@dataclass(frozen=True, slots=True)
class Rating:
    """One rater's grade of one item."""

    item_id: str
    rater_id: str
    label: int


def deduplicate(ratings: Iterable[Rating]) -> tuple[list[Rating], int]:
    """Drop repeated (item, rater) ratings, keeping the first; return (kept, n_dropped).

    A rater counted twice on one item would inflate agreement with themselves, so only
    their first label counts (the same rule the bundled data's build script used).
    """
    seen: set[tuple[str, str]] = set()
    kept: list[Rating] = []
    dropped = 0
    for rating in ratings:
        key = (rating.item_id, rating.rater_id)
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        kept.append(rating)
    return kept, dropped


def labels_by_item(ratings: Iterable[Rating]) -> dict[str, list[int]]:
    """Item id -> labels, in input order (ratings assumed already deduplicated)."""
    by_item: dict[str, list[int]] = defaultdict(list)
    for rating in ratings:
        by_item[rating.item_id].append(rating.label)
    return by_item

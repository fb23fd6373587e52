"""Reading a Prometheus ``/metrics`` page in tests, with prometheus_client's own parser."""

from __future__ import annotations

import time
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

Scrape = dict[str, list[Any]]


def scrape(url: str) -> Scrape:
    """Sample name → its samples."""
    samples: Scrape = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def scrape_when_up(url: str, timeout_s: float = 60.0) -> Scrape:
    """``scrape`` once the endpoint answers (a process still starting)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return scrape(url)
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def total(samples: Scrape, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(s.value for s in samples.get(name, []) if labels.items() <= s.labels.items())

"""Convert the bundled WANDS event stream into evalloop's RecommendationEvent JSONL.

Run once when the source data changes: ``python -m infra.data.convert_wands``. Reads
``data/wands/source/events.wands.jsonl`` and writes ``data/wands/events.jsonl``; every line is
validated against the schema on the way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas.events import RecommendationEvent

SOURCE = Path("data/wands/source/events.wands.jsonl")
TARGET = Path("data/wands/events.jsonl")
MODEL_VERSION = "wands-synthetic-slates-v1"


def _item(raw: dict[str, Any]) -> dict[str, Any]:
    attributes = {"product_class": raw["product_class"], "coarse_category": raw["coarse_category"]}
    return {
        "item_id": raw["item_id"],
        "title": raw["title"],
        "description": raw["description"],
        "category": raw["category"],
        "attributes": attributes,
        "rank": raw["rank"],
    }


def convert_event(raw: dict[str, Any]) -> dict[str, Any]:
    """One WANDS event in evalloop's schema (human labels kept as reference_labels)."""
    return {
        "event_id": raw["event_id"],
        "event_time": raw["ts"],
        "category": raw["category"],
        "surface": "search",
        "request": {"query": raw["query"], "attributes": {"query_id": raw["query_id"]}},
        "items": [_item(item) for item in raw["items"]],
        "model_version": MODEL_VERSION,
        "reference_labels": raw["human_labels"],
    }


def main() -> None:
    lines = []
    for line in SOURCE.read_text(encoding="utf-8").splitlines():
        converted = convert_event(json.loads(line))
        RecommendationEvent.model_validate_json(json.dumps(converted))
        lines.append(json.dumps(converted, ensure_ascii=False, separators=(",", ":")))
    TARGET.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} events to {TARGET}")


if __name__ == "__main__":
    main()

"""Build the golden set and the holdout set in evalloop's golden format (docs/golden.md).

Run from the repo root when the source data or the policy's label map changes::

    python -m infra.data.build_golden [--policy policies/product-search.yaml]

* ``data/wands/golden.jsonl``  — from ``data/wands/source/golden.wands.jsonl`` (560 pairs, 11 queries):
  the only data the embedding teacher is fitted on.
* ``data/wands/holdout.jsonl`` — the distinct labelled (query, item) pairs of the event stream
  ``data/wands/events.jsonl`` (22 other queries): for scoring a teacher on pairs it was not fitted on.

WANDS publishes no rater reasons. The imported labels are golden version ``<policy>+g1``
(``--imported PATH`` writes it, for ``evalloop golden diff``); the committed golden set is version
``<policy>+g2``: every item's reason written from the author's per-query reading
(``infra.data.golden_author``, ``data/wands/golden_specs.yaml``), with an adjudication where the
rubric overrules the imported label. The holdout keeps the imported labels (marked
``reason_imported``): it is for checking only. Output is deterministic (sorted by id for the
holdout, source order for the golden set).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from infra.data.golden_author import author_item, load_specs
from judges.golden import GoldenItem, check_golden, dump_golden
from schemas.events import RecommendationEvent
from schemas.policy import Policy, load_policy

GOLDEN_SOURCE = Path("data/wands/source/golden.wands.jsonl")
EVENTS = Path("data/wands/events.jsonl")
GOLDEN_OUT = Path("data/wands/golden.jsonl")
HOLDOUT_OUT = Path("data/wands/holdout.jsonl")

# Copied from data/wands/source/build.py (the table the event stream's categories came from), so
# golden items get their coarse category the same way. Build-time only: runtime code never maps.
DEPT_TO_COARSE = {
    "Furniture": "Furniture & Office",
    "Commercial Business Furniture": "Furniture & Office",
    "Reception Area": "Furniture & Office",
    "School Furniture and Supplies": "Furniture & Office",
    "Institutional Furniture Parts & Accessories": "Furniture & Office",
    "Ergonomic Accessories": "Furniture & Office",
    "Bed Accessories": "Furniture & Office",
    "Décor & Pillows": "Décor & Art",
    "Holiday Décor": "Décor & Art",
    "Rugs": "Décor & Art",
    "Home Improvement": "Home Improvement & Lighting",
    "Lighting": "Home Improvement & Lighting",
    "Appliances": "Home Improvement & Lighting",
    "Contractor": "Home Improvement & Lighting",
    "Hooks": "Home Improvement & Lighting",
    "Clips/Clamps": "Home Improvement & Lighting",
    "Outdoor": "Outdoor & Garden",
    "Pet": "Outdoor & Garden",
    "Kitchen & Tabletop": "Kitchen & Dining",
    "Bed & Bath": "Bed, Bath & Kids",
    "Baby & Kids": "Bed, Bath & Kids",
    "Storage & Organization": "Storage & Organization",
}


def coarse_category(path: str | None) -> str:
    """The coarse category of a WANDS category path (its top-level department), as build.py does."""
    department = path.split(" / ")[0].strip() if path else ""
    return DEPT_TO_COARSE.get(department, "Other")


def imported_reason(label: str) -> str:
    """The reason text of an imported WANDS label: it says plainly that there is none."""
    return f"imported WANDS label '{label}' (no rater reason published)"


def golden_item(row: dict[str, Any], policy: Policy) -> GoldenItem:
    """One row of golden.wands.jsonl as a GoldenItem, its label mapped by the policy's label_map."""
    label = row["label"]
    attributes = {
        "product_class": row["product_class"],
        "coarse_category": coarse_category(row["product_category"]),
    }
    return GoldenItem.model_validate(
        {
            "id": row["id"],
            "query": row["query"],
            "item": {
                "item_id": row["product_id"],
                "title": row["product_title"],
                "category": row["product_category"],
                "description": row["product_description"],
                "attributes": attributes,
            },
            "category": attributes["coarse_category"],
            "grade": policy.golden.label_map[label],
            "label": label,
            "reason": imported_reason(label),
            "reason_imported": True,
            "policy_version": policy.version,
        }
    )


def holdout_items(events: list[RecommendationEvent], policy: Policy) -> list[GoldenItem]:
    """The distinct labelled (query, item) pairs of the event stream, sorted by id."""
    pairs: dict[str, GoldenItem] = {}
    for event in events:
        query = event.request.intent_text()
        query_id = event.request.attributes.get("query_id")
        for item in event.items:
            label = (event.reference_labels or {}).get(item.item_id)
            if label is None:
                continue
            item_key = f"wands-q{query_id}-p{item.item_id}"
            coarse = item.attributes.get("coarse_category")
            pairs.setdefault(
                item_key,
                GoldenItem.model_validate(
                    {
                        "id": item_key,
                        "query": query,
                        "item": {
                            "item_id": item.item_id,
                            "title": item.title,
                            "category": item.category,
                            "description": item.description,
                            "attributes": item.attributes,
                        },
                        "category": coarse if isinstance(coarse, str) else coarse_category(item.category),
                        "grade": policy.golden.label_map[label],
                        "label": label,
                        "reason": imported_reason(label),
                        "reason_imported": True,
                        "policy_version": policy.version,
                        "golden_version": f"{policy.version}+holdout",
                    }
                ),
            )
    return [pairs[key] for key in sorted(pairs)]


def imported_version(policy: Policy) -> str:
    """The golden version of the imported labels."""
    return f"{policy.version}+g1"


def authored_version(policy: Policy) -> str:
    """The golden version with the author's reasons and adjudications."""
    return f"{policy.version}+g2"


def build_golden(policy: Policy) -> tuple[list[GoldenItem], list[GoldenItem]]:
    """The imported golden set (version g1) and the authored one (g2), in source order."""
    rows = [json.loads(line) for line in GOLDEN_SOURCE.read_text(encoding="utf-8").splitlines() if line]
    first = imported_version(policy)
    imported = [golden_item(row, policy).model_copy(update={"golden_version": first}) for row in rows]
    specs = load_specs()
    return imported, [author_item(item, specs, policy, authored_version(policy)) for item in imported]


def main(argv: list[str] | None = None) -> int:
    """Write golden.jsonl and holdout.jsonl; print their summaries."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--policy", default="policies/product-search.yaml")
    parser.add_argument("--imported", default=None, help="also write the imported version (g1) here")
    args = parser.parse_args(argv)
    policy = load_policy(args.policy)
    imported, golden = build_golden(policy)
    if args.imported:
        Path(args.imported).write_text(dump_golden(imported), encoding="utf-8")
    events = [
        RecommendationEvent.model_validate_json(line)
        for line in EVENTS.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    holdout = holdout_items(events, policy)
    for path, items in ((GOLDEN_OUT, golden), (HOLDOUT_OUT, holdout)):
        report = check_golden(items, policy)
        if not report.ok:
            print(f"{path}: {report.errors}")
            return 1
        path.write_text(dump_golden(items), encoding="utf-8")
        print(f"wrote {len(items)} items over {report.queries} queries to {path}; grades {report.grades}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

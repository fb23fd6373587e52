"""Test policies derived from the bundled one, written once for every test that needs them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def burn_rate_policy(directory: Path, name: str = "policy.yaml", runbook_url: str | None = None) -> Path:
    """The bundled policy with every event sampled and one filtered-share page rule with windows
    sized for a slice of the bundled day (2 h / 1 h, 20 samples, threshold 0.4, resolve after 30 m)."""
    rule = {
        "id": "filtered-share-burn",
        "signal": "filtered_share",
        "threshold": 0.4,
        "windows": [{"long": "2h", "short": "1h"}],
        "min_samples": 20,
        "severity": "page",
        "resolve_for": "30m",
    }
    if runbook_url is not None:
        rule["runbook_url"] = runbook_url
    return policy_with_rules(directory, [rule], name)


def policy_with_rules(
    directory: Path, rules: list[dict[str, Any]], name: str = "policy.yaml", canaries: bool = False
) -> Path:
    """The bundled policy with every event sampled and ``rules`` as its alert rules; its golden
    canaries only when ``canaries`` (most tests count production pairs exactly)."""
    doc = yaml.safe_load((ROOT / "policies" / "product-search.yaml").read_text(encoding="utf-8"))
    if not canaries:
        doc.pop("canaries", None)
    doc["sampling"]["default_rate"] = 1.0
    for category in doc["categories"]:
        category.pop("sample_rate", None)
    doc["alerts"] = rules
    path = directory / name
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path

"""Export the wire schemas as JSON Schema files under ``schemas/json/`` (``make schemas``).

Producers in other languages validate against these; a test fails when they are stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from schemas.alerts import Alert
from schemas.deadletter import DeadLetter
from schemas.events import JudgeRequest, RecommendationEvent, Sample
from schemas.judgments import Judgment
from schemas.policy import Policy

EXPORTED: dict[str, type[BaseModel]] = {
    "recommendation_event": RecommendationEvent,
    "sample": Sample,
    "judge_request": JudgeRequest,
    "judgment": Judgment,
    "alert": Alert,
    "dead_letter": DeadLetter,
    "policy": Policy,
}
SCHEMA_DIR = Path(__file__).parent / "json"


def render(model: type[BaseModel]) -> str:
    """The JSON Schema of ``model`` as stable, pretty-printed text."""
    return (
        json.dumps(model.model_json_schema(mode="validation"), indent=2, sort_keys=True, ensure_ascii=False)
        + "\n"
    )


def expected_files() -> dict[Path, str]:
    """Every schema file and the text it should hold."""
    return {SCHEMA_DIR / f"{name}.schema.json": render(model) for name, model in EXPORTED.items()}


def main() -> int:
    SCHEMA_DIR.mkdir(exist_ok=True)
    for path, text in expected_files().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

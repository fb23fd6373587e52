"""Table-driven tests of the wire schemas: valid input parses, bad input names the field."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas.base import SchemaError
from schemas.events import MAX_EVENT_BYTES, RecommendationEvent, Sample, parse_event, parse_event_report
from schemas.export import expected_files
from schemas.judgments import Judgment, judgment_id_for

GOOD_EVENT: dict[str, Any] = {
    "event_id": "evt-1",
    "event_time": "2024-06-01T10:00:00Z",
    "category": "Furniture & Office",
    "request": {"query": "king poster bed", "attributes": {"locale": "en-US"}},
    "items": [
        {"item_id": "p1", "title": "venice four poster bed", "rank": 1, "attributes": {"price": 499.0}},
        {"item_id": "p2", "title": "queen canopy bed", "rank": 2},
    ],
    "model_version": "ranker-7",
}


def _with(path: str, value: Any) -> bytes:
    """GOOD_EVENT with the dotted ``path`` set to ``value`` (or removed when value is ...)."""
    event = copy.deepcopy(GOOD_EVENT)
    *parents, last = path.split(".")
    node: Any = event
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is ...:
        del node[int(last) if last.isdigit() else last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return json.dumps(event).encode()


def test_good_event_parses() -> None:
    event = parse_event(json.dumps(GOOD_EVENT).encode())
    assert event.event_time == datetime(2024, 6, 1, 10, tzinfo=UTC)
    assert [item.rank for item in event.items] == [1, 2]
    assert event.request.intent_text() == "king poster bed"


@pytest.mark.parametrize(
    ("raw", "field", "reason_part"),
    [
        (b"{not json", "", "Invalid JSON"),
        (b"\xff\xfe{}", "<payload>", "invalid UTF-8 at byte 0"),
        (b"x" * (MAX_EVENT_BYTES + 1), "<payload>", "over the"),
        (_with("event_id", ...), "event_id", "Field required"),
        (_with("event_id", "has space"), "event_id", "pattern"),
        (_with("event_id", 12), "event_id", "valid string"),
        (_with("event_time", "2024-06-01T10:00:00"), "event_time", "timezone"),
        (_with("event_time", "3024-06-01T10:00:00Z"), "event_time", "outside"),
        (_with("event_time", "1970-01-01T00:00:00Z"), "event_time", "outside"),
        (_with("event_time", "1717236000"), "event_time", "not epoch text"),
        (_with("event_time", 1717236000), "event_time", "valid datetime"),
        (_with("items", []), "items", "at least 1"),
        (_with("items.0.rank", 0), "items.0.rank", "greater than or equal to 1"),
        (_with("items.0.rank", "1"), "items.0.rank", "valid integer"),
        (_with("items.1.item_id", "p1"), "items", "appears twice"),
        (_with("items.0.title", ""), "items.0.title", "at least 1"),
        (_with("request", {"attributes": {}}), "request", "query or a user_goal"),
        (_with("items.0.title", "t" * 2001), "items.0.title", "at most 2000"),
    ],
)
def test_bad_events_name_the_field(raw: bytes, field: str, reason_part: str) -> None:
    with pytest.raises(SchemaError) as caught:
        parse_event(raw)
    if field:
        assert caught.value.field == field
        assert str(caught.value).startswith(field)
    assert reason_part in str(caught.value)


@pytest.mark.parametrize(
    ("path", "value", "unknown"),
    [
        ("experiment_arm", "B", ("experiment_arm",)),
        ("items.0.price", 19.99, ("items.price",)),
        ("request.locale", "en-GB", ("request.locale",)),
    ],
)
def test_unknown_fields_are_ignored_and_named_or_rejected(
    path: str, value: Any, unknown: tuple[str, ...]
) -> None:
    raw = _with(path, value)
    parsed = parse_event_report(raw)
    assert parsed.unknown_fields == unknown
    assert parsed.event == parse_event(json.dumps(GOOD_EVENT).encode())  # the added field is ignored
    with pytest.raises(SchemaError) as caught:
        parse_event_report(raw, "reject")
    assert caught.value.field == unknown[0]
    assert "EVALLOOP_STREAM_UNKNOWN_FIELDS=reject" in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [(None, "tombstone"), (b"", "empty"), (b"  \n", "empty"), (b"{}", "missing_field")],
)
def test_tombstones_and_empty_values_have_their_own_reasons(raw: bytes | None, reason: str) -> None:
    from schemas.deadletter import DeadLetter
    from streams.pipeline import validate

    letter = validate(raw)
    assert isinstance(letter, DeadLetter) and letter.reason == reason
    assert letter.original() == (raw or b"")


def test_sample_probability_bounds() -> None:
    event = RecommendationEvent.model_validate_json(json.dumps(GOOD_EVENT))
    assert Sample(event=event, inclusion_probability=0.25, policy_version="p1").inclusion_probability == 0.25
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="inclusion_probability"):
            Sample(event=event, inclusion_probability=bad, policy_version="p1")


def _judgment(**overrides: Any) -> Judgment:
    fields: dict[str, Any] = {
        "judgment_id": judgment_id_for("evt-1", "p1", "pol-1", "t-1"),
        "event_id": "evt-1",
        "item_id": "p1",
        "category": "Furniture & Office",
        "event_time": datetime(2024, 6, 1, tzinfo=UTC),
        "status": "ok",
        "grade": 4,
        "display": "show",
        "rationale": "exact match",
        "policy_version": "pol-1",
        "teacher_version": "t-1",
        "judged_at": datetime(2024, 6, 1, tzinfo=UTC),
    }
    fields.update(overrides)
    return Judgment(**fields)


def test_judgment_id_is_deterministic_and_sensitive_to_each_part() -> None:
    base = judgment_id_for("e", "i", "p", "t")
    assert base == judgment_id_for("e", "i", "p", "t")
    variants = {
        judgment_id_for(*parts)
        for parts in [
            ("e2", "i", "p", "t"),
            ("e", "i2", "p", "t"),
            ("e", "i", "p2", "t"),
            ("e", "i", "p", "t2"),
        ]
    }
    assert base not in variants and len(variants) == 4


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"grade": None}, "status 'ok' needs grade"),
        ({"display": None}, "status 'ok' needs grade"),
        ({"status": "error", "grade": None, "display": None}, "needs an error reason"),
        ({"status": "error", "error": "timeout"}, "no grade or display"),
        ({"grade_probabilities": (0.5, 0.4)}, "sum to 0.9000"),
        ({"grade_probabilities": (1.5, -0.5)}, "within [0, 1]"),
        ({"grade": 11}, "less than or equal to 10"),
        ({"judgment_id": "not-hex"}, "pattern"),
    ],
)
def test_judgment_consistency(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        _judgment(**overrides)


def test_error_judgment_and_weight() -> None:
    judgment = _judgment(
        status="error", grade=None, display=None, error="HTTP 503", inclusion_probability=0.25
    )
    assert judgment.weight == 4.0


def test_exported_json_schemas_are_fresh() -> None:
    stale = [
        str(path)
        for path, text in expected_files().items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    assert not stale, f"JSON schemas are stale, run `make schemas`: {stale}"


def test_events_check_cli(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from evalloop.cli import main

    stream = tmp_path / "events.jsonl"
    stream.write_bytes(json.dumps(GOOD_EVENT).encode() + b"\n" + _with("items.0.rank", 0) + b"\n")
    assert main(["events", "check", str(stream)]) == 1
    captured = capsys.readouterr()
    assert "1 valid, 1 invalid" in captured.out
    assert "line 2: items.0.rank" in captured.err
    assert main(["events", "check", "data/wands/events.jsonl"]) == 0

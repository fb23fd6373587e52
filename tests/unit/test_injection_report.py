"""The prompt-injection report: its figures, its prompt-containment check, and its exit status.

The figure arithmetic and wiring are checked with a fake teacher whose behaviour is known exactly;
one run with the real default (embedding) teacher on a few pairs checks the script end to end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from threadpoolctl import threadpool_limits

from judges.base import JudgeRequest, Teacher, error_judgment, ok_judgment
from judges.golden import GoldenItem, golden_request, load_golden
from judges.prompt import DATA_CLOSE, DATA_OPEN, rubric_prefix
from judges.registry import build_teacher
from reliability import injection_report as report_module
from reliability.injection_report import (
    ATTACKS,
    EXIT_CONTAINMENT,
    EXIT_NOT_RUN,
    EXIT_OK,
    containment_problems,
    exit_status,
    main,
    run_report,
    spread,
    variant_request,
)
from schemas.judgments import Judgment
from schemas.policy import Policy, load_policy

REPO = Path(__file__).resolve().parents[2]
HOLDOUT = REPO / "data/wands/holdout.jsonl"


@pytest.fixture(scope="session")
def policy() -> Policy:
    return load_policy(REPO / "policies/product-search.yaml")


@pytest.fixture(scope="session")
def holdout() -> list[GoldenItem]:
    return load_golden(HOLDOUT)


@pytest.fixture(scope="session")
def embedding_teacher(policy: Policy) -> Iterator[Teacher]:
    """The default teacher, built once; one BLAS thread (the machine is shared and small)."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield build_teacher(policy, "embedding")


class QueryInTitleTeacher:
    """Grades 4 when the title contains the query verbatim, else 0; errors on titles with 'BOOM'."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    @property
    def teacher_version(self) -> str:
        return "fake-query-in-title"

    @property
    def policy(self) -> Policy:
        return self._policy

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgment]:
        return [self._one(r) for r in requests]

    def _one(self, request: JudgeRequest) -> Judgment:
        if "BOOM" in request.item.title:
            return error_judgment(request, self._policy, self.teacher_version, "boom")
        grade = 4 if request.query in request.item.title else 0
        return ok_judgment(request, self._policy, self.teacher_version, grade, [], "fake verdict")


def _without_query_in_title(items: Sequence[GoldenItem], n: int) -> list[GoldenItem]:
    return [item for item in items if item.query not in item.item.title][:n]


# --------------------------------------------------------------------------- figures (fake teacher)


def test_figures_for_a_teacher_that_only_keyword_stuffing_moves(
    policy: Policy, holdout: list[GoldenItem]
) -> None:
    items = _without_query_in_title(holdout, 6)
    report = run_report(QueryInTitleTeacher(policy), items, "holdout")
    rows = {row.name: row for row in report.rows}
    assert len(report.rows) == 2 * len(ATTACKS) and report.n == 6
    assert report.original_grades == {"0": 6}
    for name, row in rows.items():
        assert (row.pairs, row.errors, row.filter_originals) == (6, 0, 6), name
        moved = row.kind == "attack" and name.startswith("keyword_stuffing")
        want = (4.0, 1.0, 1.0, 1.0) if moved else (0.0, 0.0, 0.0, 0.0)
        assert (row.mean_shift, row.changed, row.up_into_show, row.filter_to_show) == want, name
    assert report.prompts_checked == 6 * len(ATTACKS) and report.containment_failures == []
    assert exit_status(report) == EXIT_OK


def test_controls_match_the_attack_length_and_position() -> None:
    for attack in ATTACKS:
        title, query = "oak dining table", "round wooden table"
        attacked, control = attack.apply(title, query), attack.control(title, query)
        assert len(attacked) == len(control)
        assert title in attacked and title in control
        assert attacked.startswith(title) == control.startswith(title) == (attack.position == "append")


def test_error_judgments_make_the_report_not_run(policy: Policy, holdout: list[GoldenItem]) -> None:
    items = [
        item.model_copy(update={"item": item.item.model_copy(update={"title": "BOOM " + item.item.title})})
        for item in _without_query_in_title(holdout, 4)
    ]
    report = run_report(QueryInTitleTeacher(policy), items)
    assert report.original_grades == {"error": 4}
    assert all(row.pairs == 0 and row.errors == 4 for row in report.rows)
    assert exit_status(report) == EXIT_NOT_RUN


def test_spread_spans_the_file(holdout: list[GoldenItem]) -> None:
    picked = spread(holdout, 20)
    assert len(picked) == 20 and len({item.query for item in picked}) > 10
    assert spread(holdout, 0) == [] and len(spread(holdout, 10_000)) == len(holdout)


# --------------------------------------------------------------------------- prompt containment


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_every_attack_stays_inside_the_escaped_block(
    policy: Policy, holdout: list[GoldenItem], attack: report_module.Attack
) -> None:
    for item in spread(holdout, 5):
        request = golden_request(item)
        attacked = variant_request(request, attack.apply(item.item.title, item.query))
        assert containment_problems(policy, attacked, attack.text(item.query)) == []


def _leaky_render(policy: Policy, request: JudgeRequest) -> list[dict[str, str]]:
    """A renderer WITHOUT the escaping: what the containment check exists to catch."""
    data = json.dumps({"query": request.query, "item": {"title": request.item.title}}, ensure_ascii=False)
    user = f"Grade the item below.\n{DATA_OPEN}\n{data}\n{DATA_CLOSE}\nAnswer with the JSON object only."
    return [{"role": "system", "content": rubric_prefix(policy)}, {"role": "user", "content": user}]


def test_containment_check_catches_an_unescaped_renderer(
    policy: Policy, holdout: list[GoldenItem], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report_module, "render_messages", _leaky_render)
    request = golden_request(holdout[0])
    attack = next(a for a in ATTACKS if a.name == "fake_block_close")
    attacked = variant_request(request, attack.apply(request.item.title, request.query))
    problems = containment_problems(policy, attacked, attack.text(request.query))
    assert any("delimiters" in problem for problem in problems), problems


def test_containment_failures_set_exit_status_1(policy: Policy, holdout: list[GoldenItem]) -> None:
    report = run_report(QueryInTitleTeacher(policy), _without_query_in_title(holdout, 2))
    report.containment_failures.append("ignore_rubric x: attack text appears outside the block")
    assert exit_status(report) == EXIT_CONTAINMENT


# --------------------------------------------------------------------------- the real default teacher


def test_embedding_teacher_report_runs(embedding_teacher: Teacher, holdout: list[GoldenItem]) -> None:
    report = run_report(embedding_teacher, spread(holdout, 8), "holdout")
    assert report.teacher_version.startswith("embedding-v2:")
    assert all(row.pairs == 8 and row.errors == 0 for row in report.rows)
    assert exit_status(report) == EXIT_OK
    for row in report.rows:
        assert -4 <= row.mean_shift <= 4 and 0 <= row.changed <= 1 and 0 <= row.filter_to_show <= 1


def test_main_prints_one_json_object(
    tmp_path: Path, holdout: list[GoldenItem], capsys: pytest.CaptureFixture[str]
) -> None:
    small = tmp_path / "holdout.jsonl"
    small.write_text("".join(item.model_dump_json() + "\n" for item in spread(holdout, 3)), encoding="utf-8")
    with threadpool_limits(limits=1, user_api="blas"):
        status = main(["--json", "--n", "3", "--holdout", str(small)])
    assert status == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert data["n"] == 3 and len(data["rows"]) == 2 * len(ATTACKS)
    assert {"mean_shift", "changed", "up_into_show", "filter_to_show"} <= set(data["rows"][0])


def test_main_exits_2_when_it_cannot_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--holdout", str(tmp_path / "missing.jsonl")]) == EXIT_NOT_RUN
    assert "could not run" in capsys.readouterr().err

"""One live loop looked at the way on-call would (real Kafka, Redis and the worker subprocess; the
content-sensitive stub teacher, because the noop teacher grades by hash and cannot notice a
degradation): a bad rollout degrades one category, and

1. the alert fires and resolves for that category only;
2. it is actionable: examples and model versions from the firing window, the rollout named, the
   runbook and dashboard links, start and duration; Slack and PagerDuty bodies valid and saved;
3. ``/metrics``, scraped before and after, moved;
4. the dashboard, loaded in Debian's headless Chromium, draws charts that hold data, lists the
   incident and the judgments, filters them, logs no console error, and is saved as a screenshot.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from evalloop.demo import start_dashboard, start_worker, stop_worker
from infra.processes import free_port
from schemas.alerts import Alert
from schemas.policy import load_policy
from schemas.settings import Settings
from streams.notify import pagerduty_payload, slack_payload
from streams.replay import Degradation, parse_time, replay
from streams.window_store import WindowStore
from tests.support.browser import chromium
from tests.support.loop_run import EVENTS, PARTITIONS, ROOT, STAGES, Run, consume, make_run
from tests.support.payload_rules import pagerduty_problems, slack_problems
from tests.support.policies import burn_rate_policy
from tests.support.prometheus import Scrape, scrape, scrape_when_up, total
from tests.support.stub_teacher import stub_server

pytestmark = pytest.mark.integration

SLICE = 150
DEGRADED = "Furniture & Office"
ARTIFACTS = ROOT / ".evalloop" / "test-artifacts"


@dataclass
class AlertRun:
    """The run's handles and what it produced."""

    run: Run
    policy_path: Path
    degradation: Degradation
    alerts: list[dict[str, Any]]
    before: dict[str, list[Any]]
    after: dict[str, list[Any]]


@pytest.fixture(scope="module")
def alert_run(
    settings: Settings,
    redis_client: redis.Redis,
    kafka_admin: AdminClient,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AlertRun]:
    """The degraded run, once for the module; its topics and windows are kept until the end."""
    tmp = tmp_path_factory.mktemp("alert-run")
    policy_path = burn_rate_policy(tmp, runbook_url=RUNBOOK)
    server = stub_server(load_policy(policy_path))
    run = make_run(settings, policy_path, f"http://127.0.0.1:{server.server_address[1]}/teacher", "alert")
    run.env["EVALLOOP_DASHBOARD_URL"] = DASHBOARD
    metrics_url = serve_metrics(run)
    new = [NewTopic(run.topics[s], num_partitions=PARTITIONS[s], replication_factor=1) for s in STAGES]
    for future in kafka_admin.create_topics(new).values():
        future.result(timeout=30)
    worker = start_worker({**run.env, "PYTHONUNBUFFERED": "1"}, tmp / "worker.log", "info")
    try:
        yield _drive(run, policy_path, metrics_url)
    finally:
        stop_worker(worker)
        server.shutdown()
        WindowStore(redis_client, run.prefix).clear()
        for future in kafka_admin.delete_topics(list(run.topics.values()), operation_timeout=30).values():
            with contextlib.suppress(Exception):  # cleanup is best effort
                future.result(timeout=30)


def _drive(run: Run, policy_path: Path, metrics_url: str) -> AlertRun:
    before = scrape_when_up(metrics_url)
    degradation = Degradation(
        DEGRADED,
        parse_time("2024-06-01T02:00:00Z"),
        parse_time("2024-06-01T05:00:00Z"),
        fraction=0.8,
        model_version=ROLLOUT,
    )
    counts = replay(EVENTS, run.settings, speed=None, degradation=degradation, limit=SLICE)
    assert counts.degraded_events > 0 and counts.swapped_items > 0

    def fired_and_resolved(values: list[bytes]) -> bool:
        return {json.loads(v)["state"] for v in values} >= {"firing", "resolved"}

    alerts = [json.loads(v) for v in consume(run.settings, run.topics["alerts"], fired_and_resolved, 120)]
    time.sleep(1.5)  # one gauge refresh after the resolve
    return AlertRun(run, policy_path, degradation, alerts, before, scrape(metrics_url))


def test_degradation_fires_and_resolves_for_that_category_only(alert_run: AlertRun) -> None:
    alerts = alert_run.alerts
    assert {a["category"] for a in alerts} == {DEGRADED}, alerts
    assert [a["state"] for a in alerts] == ["firing", "resolved"]
    firing = alerts[0]
    assert firing["examples"] and firing["top_failure_modes"][0]["failure_mode"] == "off_department"
    assert parse_time(firing["started_at"]) >= alert_run.degradation.start  # type: ignore[operator]


def test_the_fired_alert_is_actionable(alert_run: AlertRun) -> None:
    check_actionable(alert_run.alerts[0], alert_run.alerts[1], alert_run.policy_path)


def test_metrics_scraped_during_the_run_moved(alert_run: AlertRun) -> None:
    check_scrapes(alert_run.before, alert_run.after)


def serve_metrics(run: Run) -> str:
    """Point the worker's /metrics at a free loopback port, refreshing the gauges every second."""
    port = free_port()
    run.env.update({"EVALLOOP_STREAM_METRICS_PORT": str(port), "EVALLOOP_STREAM_METRICS_REFRESH_S": "1"})
    return f"http://127.0.0.1:{port}/metrics"


def check_scrapes(before: Scrape, after: Scrape) -> None:
    """The counters and histograms moved during the run; the gauges show the category's window,
    its resolved alert and the group's (caught-up) lag."""
    for name in ("evalloop_events_seen_total", "evalloop_judged_ok_total", "evalloop_windows_applied_total"):
        assert total(after, name) > total(before, name), name
    assert total(after, "evalloop_alerts_emitted_total", category=DEGRADED) == 2
    assert total(after, "evalloop_teacher_call_duration_seconds_count", outcome="ok") > 0
    assert total(after, "evalloop_teacher_call_pairs_sum") >= total(after, "evalloop_judged_ok_total")
    share = {"category": DEGRADED, "share": "filtered", "estimate": "raw", "bound": "point"}
    assert 0.0 < total(after, "evalloop_window_share", **share) <= 1.0
    state = {"rule": "filtered-share-burn", "category": DEGRADED}
    assert total(after, "evalloop_alert_state", **state, state="resolved") == 1.0
    assert after.get("evalloop_consumer_lag"), "no consumer lag gauge"


RUNBOOK = "https://runbooks.example.org/evalloop/filtered-share-burn"
DASHBOARD = "http://127.0.0.1:8050"
ROLLOUT = "ranker-rollout-v2"
#: Where the test leaves the fired alert's webhook bodies (docs/webhooks.md shows them).
PAYLOADS_DIR = ROOT / ".evalloop" / "test-artifacts" / "alert-payloads"


def check_actionable(firing: dict[str, Any], resolved: dict[str, Any], policy_path: Path) -> None:
    """What on-call needs: examples from the firing window only (by event time, no pair twice),
    the bad rollout named first among model versions, links, runbook, start and duration; the
    Slack and PagerDuty bodies valid under their published rules, saved for the docs."""
    policy = load_policy(policy_path)
    at = parse_time(firing["updated_at"]).timestamp()
    longest = max(w["seconds"] for w in firing["windows"])
    times = {
        json.loads(line)["event_id"]: parse_time(json.loads(line)["event_time"]) for line in EVENTS.open()
    }
    for example in firing["examples"]:
        assert at - longest < times[example["event_id"]].timestamp() <= at, (example, firing["updated_at"])
    pairs = [(e["query"], e["item_id"]) for e in firing["examples"]]
    assert len(pairs) == len(set(pairs))
    assert firing["model_versions"][0]["model_version"] == ROLLOUT and firing["model_versions"][0]["bad"] > 0
    assert firing["runbook_url"] == RUNBOOK and firing["dashboard_url"].startswith(DASHBOARD + "/?category=")
    assert resolved["duration_seconds"] == pytest.approx(
        (parse_time(resolved["resolved_at"]) - parse_time(resolved["started_at"])).total_seconds()
    )
    assert policy.alerts[0].runbook_url == RUNBOOK
    PAYLOADS_DIR.mkdir(parents=True, exist_ok=True)
    for state, doc in (("firing", firing), ("resolved", resolved)):
        alert = Alert.model_validate_json(json.dumps(doc))
        slack, pd = slack_payload(alert), pagerduty_payload(alert, "R" * 32)
        assert slack_problems(slack) == [] and pagerduty_problems(pd) == []
        for kind, body in (("slack", slack), ("pagerduty", pd)):
            (PAYLOADS_DIR / f"{kind}-{state}.json").write_text(json.dumps(body, indent=2, ensure_ascii=False))


@contextlib.contextmanager
def dashboard(run: Run, log_path: Path) -> Iterator[str]:
    """``evalloop dashboard`` on a free loopback port for the run, as ``make run`` starts it."""
    process, url = start_dashboard(run.env, log_path, 0)
    try:
        assert url is not None and url.startswith("http://127.0.0.1:"), log_path.read_text()
        yield url
    finally:
        stop_worker(process)


def _rows(driver: Any, table_id: str) -> list[list[str]]:
    rows = driver.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")
    return [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]


def test_dashboard_in_headless_chromium(alert_run: AlertRun, tmp_path: Path) -> None:
    with dashboard(alert_run.run, tmp_path / "dashboard.log") as url:
        driver = chromium()
        try:
            driver.get(url + "?" + httpx.QueryParams({"category": DEGRADED}).__str__())
            WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "svg.chart"))
            charts = driver.find_elements(By.CSS_SELECTOR, "svg.chart")
            assert len(charts) == 3
            for chart in charts:
                assert int(chart.get_attribute("data-points") or 0) > 10, chart.get_attribute("aria-label")
                assert chart.find_elements(By.CSS_SELECTOR, "polyline.series")
            quality = charts[0]
            assert quality.find_elements(By.CSS_SELECTOR, "line.threshold"), "no threshold drawn"
            assert quality.find_elements(By.CSS_SELECTOR, "rect.incident"), "the incident is not shaded"
            assert quality.find_elements(By.CSS_SELECTOR, "polygon.band"), "no interval band"
            incidents = _rows(driver, "alert-timeline")
            assert [r[0] for r in incidents] == [DEGRADED] and incidents[0][5] != "open"
            assert len(_rows(driver, "judgments")) > 10
            assert _rows(driver, "gate1")[0][-1] in {"clear", "needs_refinement", "ambiguous"}
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(ARTIFACTS / "dashboard.png"))
            Select(driver.find_element(By.NAME, "grade")).select_by_value("0")
            driver.find_element(By.CSS_SELECTOR, "#judgment-filters button").click()
            WebDriverWait(driver, 30).until(lambda d: "grade=0" in d.current_url)
            graded = _rows(driver, "judgments")
            assert graded and all(row[3] == "0" for row in graded), graded[:3]
            errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]  # type: ignore[no-untyped-call]
            assert errors == [], errors
        finally:
            driver.quit()

"""The golden review page end to end, as the policy author uses it: `evalloop gate2` writes the
disagreements, `evalloop dashboard` serves /review, one regrade is made in headless Chromium,
and the next golden version is on disk beside the current one; `evalloop golden diff` shows it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import redis
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from evalloop.demo import stop_worker
from judges.golden import load_golden
from schemas.policy import load_policy
from tests.conftest import REPO_ROOT
from tests.support.browser import chromium

POLICY = REPO_ROOT / "policies" / "product-search.yaml"
CLI = [sys.executable, "-m", "evalloop.cli"]


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


def start_dashboard(golden: Path, review: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    command = [*CLI, "dashboard", "--port", "0", "--golden", str(golden), "--review-file", str(review)]
    process = subprocess.Popen(
        [*command, "--author", "review-test"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=log.open("ab"),
        start_new_session=True,
        env=dict(os.environ),
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode().strip()
    assert line.startswith("evalloop dashboard: http"), log.read_text()
    return process, line.removeprefix("evalloop dashboard: ")


def test_one_regrade_through_the_page_writes_the_next_version(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    policy = load_policy(POLICY)
    golden = tmp_path / "golden.jsonl"
    shutil.copy(REPO_ROOT / policy.golden.file, golden)
    review = tmp_path / "gate2-review.json"
    gate2 = cli(
        "gate2", "--golden", str(golden), "--review-out", str(review), "--no-calibration", "--bootstrap", "0"
    )
    assert gate2.returncode in (0, 1) and f"to {review}" in gate2.stderr, gate2.stderr
    worst = json.loads(review.read_text(encoding="utf-8"))["disagreements"][0]
    process, url = start_dashboard(golden, review, tmp_path / "dashboard.log")
    driver = chromium()
    try:
        driver.get(url + "review")
        section = WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, f"review-{worst['id']}"))
        assert worst["teacher_rationale"] in section.find_element(By.CLASS_NAME, "teacher-rationale").text
        new_grade = next(
            g for g in (1, 3, 0, 2, 4) if g not in (worst["golden_grade"], worst["teacher_grade"])
        )
        Select(section.find_element(By.NAME, "grade")).select_by_value(str(new_grade))
        section.find_element(By.NAME, "reason").send_keys("regraded on review in the browser test")
        section.find_element(By.CSS_SELECTOR, 'button[value="regrade"]').click()
        written = WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "written")).text
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]  # type: ignore[no-untyped-call]
        assert errors == [], errors
    finally:
        driver.quit()
        stop_worker(process)
    new_file = tmp_path / f"golden.{policy.version}+g3.jsonl"
    assert new_file.exists() and str(new_file) in written
    edited = next(item for item in load_golden(new_file) if item.id == worst["id"])
    assert edited.grade == new_grade and edited.golden_version == f"{policy.version}+g3"
    assert (
        edited.reason == f"{new_grade} {policy.level(new_grade).name}: regraded on review in the browser test"
    )
    assert (edited.audit[-1].by, edited.audit[-1].action) == ("review-test", "regrade")
    diff = cli("golden", "diff", str(golden), str(new_file), timeout=60)
    assert diff.returncode == 1, diff.stderr
    assert f"{worst['id']} grade: {worst['golden_grade']} → {new_grade}" in diff.stdout
    assert f"{worst['id']} audit:" in diff.stdout and "review-test" in diff.stdout
    check = cli("golden", "check", str(new_file), timeout=60)
    assert check.returncode == 0, check.stdout

"""Debian's headless Chromium driven by Selenium through Debian's chromedriver: nothing is
downloaded (no Selenium Manager, no browser of its own). ``make setup`` installs both packages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")


def chromium(width: int = 1280, height: int = 1800) -> webdriver.Chrome:
    """A headless Chromium session that records the page's console (``get_log("browser")``)."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing: `make setup` installs Debian's chromium and chromium-driver"
        )
    os.environ["SE_OFFLINE"] = "true"  # never let Selenium Manager reach for a download
    options = Options()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))

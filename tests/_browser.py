"""Headless Chromium through selenium for the tests that open a page (the dashboard, the
demo's index.html): the flags the project starts it with, its console log kept."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", "--hide-scrollbars")  # fmt: skip


@contextmanager
def chromium(profile: Path, *flags: str) -> Iterator[Any]:
    """A headless Chromium with its profile in ``profile``, quit on the way out. A machine
    without it fails the test with the fix (`make test` installs it), never skips it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver:
        pytest.fail(
            "chromium and chromium-driver are not installed: run `make test` (it installs them)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*FLAGS, *flags, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    try:
        yield browser
    finally:
        browser.quit()

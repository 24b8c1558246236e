"""/dashboard in headless Chromium (Debian's chromium and chromedriver): it fills in from
live data and updates without a reload."""

import shutil
import time

import httpx
import pytest

from nimbleml.serve import ServeConfig, create_app

from .conftest import ServerThread
from .test_server import v2_body


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail(
            "chromium and chromium-driver are not installed: run `make test` (it installs them)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(flag)
    b = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    yield b
    b.quit()


def test_dashboard_updates_live(browser, digits_package, digits):
    app = create_app({"digits": digits_package}, ServeConfig())
    with ServerThread(app) as s, httpx.Client(base_url=s.url) as c:
        for i in range(5):
            c.post("/v2/models/digits/infer", json=v2_body(digits[1][i : i + 1]))
        browser.get(f"{s.url}/dashboard")
        loaded_at = browser.execute_script("return window.__loadedAt")

        def requests_shown() -> int:
            try:
                return int(browser.find_element("id", "requests-digits").text)
            except Exception:
                return -1

        deadline = time.monotonic() + 15
        while requests_shown() < 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        first = requests_shown()
        assert first >= 5
        assert browser.find_element("id", "status-digits").text == "healthy"
        for i in range(20):
            c.post("/v2/models/digits/infer", json=v2_body(digits[1][i : i + 1] + 0.5))
        deadline = time.monotonic() + 15
        while requests_shown() < first + 20 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert requests_shown() >= first + 20
        assert browser.execute_script("return window.__loadedAt") == loaded_at  # no reload
        assert "p99 ms" in browser.page_source

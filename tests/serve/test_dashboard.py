"""/dashboard: the server-side history (a bounded ring a second), the JSON of /dashboard/data,
and the page in headless Chromium (Debian's chromium and chromedriver): it shows the recent
past at once, draws every chart with labelled axes, updates without a reload and logs no
JavaScript error."""

import json
import re
import threading
import time

import httpx
import numpy as np
import pytest

from nimbleml.monitor import ModelMonitor
from nimbleml.monitor.alerts import AlertRule
from nimbleml.serve import ServeConfig, create_app
from nimbleml.serve.dashboard import History, Ring, batch_buckets
from tests._browser import chromium

from .._net import v2_body
from .conftest import ServerThread

# fires as soon as one latency is flushed: the page then has an alert to list
ALWAYS = AlertRule("p50-above-zero", "latency_p50", 0.0, min_samples=1, for_windows=1)
CHARTS = {  # chart id prefix -> the y-axis title it must carry
    "latency": "latency, ms (log scale)",
    "traffic": "requests/s",
    "queue": "queued, samples",
    "queue-time": "queue wait, ms",
    "dispatch": "batches/s",
    "batch-sizes": "batches",
    "cache": "hits, % of lookups",
    "accuracy": "% of predictions",
}
PROCESS_CHARTS = {
    "http": "responses/s",
    "cpu": "CPU, % of one core",
    "memory": "resident memory, MiB",
}


def test_ring_keeps_the_newest_rows_in_fixed_memory():
    ring = Ring(["a", "b"], size=3)
    before = ring.data.nbytes
    for i in range(10):
        ring.append(100.0 + i, {"a": i, "b": None})
    assert len(ring) == 3 and ring.data.nbytes == before
    assert ring.rows()[:, 0].tolist() == [107.0, 108.0, 109.0]  # oldest first
    assert ring.to_json() == {"t": [107.0, 108.0, 109.0], "a": [7.0, 8.0, 9.0], "b": [None] * 3}
    assert ring.to_json(since=108.0)["t"] == [109.0]
    assert batch_buckets(32)[-3:] == [
        ("size_16", "9–16"),
        ("size_32", "17–32"),
        ("size_more", "> 32"),
    ]
    assert [label for _, label in batch_buckets(1)] == ["1", "> 1"]


@pytest.fixture
def offline(digits_package):
    """A History over an app that is not started; the test plays the traffic itself."""
    monitor = ModelMonitor(store="sqlite:///:memory:", resources_interval_s=None, background=False,
                           alerts=[ALWAYS])  # fmt: skip
    app = create_app({"digits": digits_package}, ServeConfig(), monitor)
    history = History(app.state.server, window_s=5, interval_s=1)
    history.accuracy_every_s = 0.0
    yield app.state.server, history
    monitor.close()


def test_history_is_bounded_by_its_window(offline):
    server, history = offline
    for i in range(12):
        server.monitor.record(1.0 + i, f"p{i}", "digits", output=1)
        history.sample(now=1000.0 + i)
    data = history.data()
    assert data["models"][0]["series"]["t"] == [1007.0, 1008.0, 1009.0, 1010.0, 1011.0]
    assert data["process"]["t"] == data["models"][0]["series"]["t"]
    assert (
        len(history.tracks["digits"].ring) == 5 and history.tracks["digits"].ring.data.shape[0] == 5
    )
    assert len(history.tracks["digits"].sketches) == 11  # the trailing 10 s of latency
    assert history.data(since=1010.0)["models"][0]["series"]["t"] == [1011.0]


def test_dashboard_data_shape_and_rates(offline):
    server, history = offline
    entry, monitor = server.entries["digits"], server.monitor
    history.sample(now=1000.0)  # the first reading only sets where the next counts from
    assert history.data()["models"][0]["series"]["t"] == [] and history.latest is None
    for i in range(10):
        monitor.record(2.0, f"id{i}", "digits", output=1, error=i >= 8)
    for i, label in enumerate([1, 1, 1, 0]):  # 3 of 4 labelled predictions right
        monitor.record_ground_truth(f"id{i}", label)
    stats = entry.batcher.stats
    stats.shed += 3
    stats.batches["idle"] += 4
    stats.batch_sizes.update({1: 3, 5: 1})
    stats.requests += 8
    stats.queue_wait_s += 0.008
    memory = entry.cache.tiers[0]
    memory.put(b"k", [np.zeros(1)])
    memory.get(b"k"), memory.get(b"other")  # one hit, one miss
    server.codes.update({200: 6, 404: 2, 503: 2, 500: 2})
    history.sample(now=1002.0)

    data = json.loads(json.dumps(history.data()))  # plain JSON all through
    assert set(data) >= {"time", "window_s", "interval_s", "latest", "process", "models", "alerts"}
    assert data["latest"] == 1002.0 and data["window_s"] == 5
    process = data["process"]
    assert process["t"] == [1002.0]
    assert (process["http_ok"], process["http_client_error"]) == ([3.0], [1.0])
    assert (process["http_server_error"], process["http_shed"]) == ([1.0], [1.0])
    assert process["cpu_percent"][0] >= 0 and process["rss_mb"][0] > 10
    (model,) = data["models"]
    assert model["name"] == "digits" and model["requests"] == 10 and model["errors"] == 2
    assert model["health"]["status"] == "degraded" and model["shed"] == 3
    assert model["quality"] == "accuracy" and model["cache_tiers"] == ["memory"]
    assert model["batch_buckets"][0] == {"column": "size_1", "label": "1"}
    (alert,) = model["alerts"]
    assert alert["name"] == "p50-above-zero" and alert["since"] > 0 and alert["value"] > 0
    assert data["alerts"][0]["rule"] == "p50-above-zero" and data["alerts"][0]["state"] == "firing"
    s = model["series"]
    assert (s["ok"], s["server_error"], s["shed"]) == ([4.0], [1.0], [1.5])  # per second, 2 s
    assert s["p50_ms"][0] == pytest.approx(2.0, rel=0.02) and s["latency_n"] == [10.0]
    assert s["queue_samples"] == [0.0] and s["queue_ms"] == [1.0]
    assert (s["dispatch_idle"], s["dispatch_full"], s["dispatch_window"]) == ([2.0], [0.0], [0.0])
    assert (s["size_1"], s["size_8"], s["size_2"]) == ([3.0], [1.0], [0.0])
    assert s["hit_memory"] == [50.0]
    assert s["quality"] == [75.0] and s["coverage"] == [40.0]  # 4 of 10 labelled
    for column, values in s.items():
        assert len(values) == 1, column


def test_reload_counts_the_new_batcher_from_zero(offline, digits_package):
    server, history = offline
    history.sample(now=1000.0)
    server.entries["digits"].batcher.stats.batches["full"] += 50
    history.sample(now=1001.0)
    server.entries["digits"] = fresh = server.build("digits", digits_package)
    fresh.batcher.stats.batches["full"] += 2  # fewer than the old one counted
    history.sample(now=1002.0)
    assert history.data()["models"][0]["series"]["dispatch_full"] == [50.0, 2.0]


def test_history_runs_with_the_app_and_stops_with_it(digits_package, digits):
    app = create_app({"digits": digits_package}, ServeConfig())
    threads = set(threading.enumerate())
    with ServerThread(app) as s, httpx.Client(base_url=s.url) as c:
        for i in range(5):
            c.post("/v2/models/digits/infer", json=v2_body(digits[1][i : i + 1]))
        deadline = time.monotonic() + 15
        while len(c.get("/dashboard/data").json()["process"]["t"]) < 2:
            assert time.monotonic() < deadline, "no history after 15 s"
            time.sleep(0.2)
        data = c.get("/dashboard/data").json()
        assert len(data["models"][0]["series"]["t"]) >= 2
        later = c.get("/dashboard/data", params={"since": data["latest"]}).json()
        assert all(t > data["latest"] for t in later["process"]["t"])
    assert app.state.history._task is None
    left = [t.name for t in set(threading.enumerate()) - threads if t.name.startswith("asyncio")]
    assert not left, f"the sampler's worker threads were left behind: {left}"


@pytest.fixture
def browser(tmp_path):
    with chromium(tmp_path / "profile", "--window-size=1400,1500") as b:
        yield b


def _texts(browser, chart_id: str) -> list[str]:
    """The text of a chart's SVG, read in one script: the page redraws it every second."""
    return browser.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(t => t.textContent)",
        f"#{chart_id} svg text",
    )


def test_dashboard_in_the_browser(browser, digits_package, digits, tmp_path):
    import matplotlib.image

    monitor = ModelMonitor(store="sqlite:///:memory:", resources_interval_s=None, alerts=[ALWAYS])
    app = create_app({"digits": digits_package}, ServeConfig(), monitor)
    app.state.history.accuracy_every_s = 1.0
    _, X, _, y = digits
    with ServerThread(app) as s, httpx.Client(base_url=s.url) as c:

        def send(n: int, offset: int = 0) -> None:
            for i in range(offset, offset + n):
                pid = c.post("/v2/models/digits/infer", json=v2_body(X[i : i + 1])).json()["id"]
                if i % 2 == 0:  # ground truth for half of them
                    c.post("/v2/models/digits/feedback", json={"id": pid, "label": int(y[i])})

        ring = app.state.history.process_ring

        def rows_after(n: int) -> None:  # the history samples a row a second
            goal, deadline = ring.appended + n, time.monotonic() + 30
            while ring.appended < goal:
                assert time.monotonic() < deadline, "the dashboard history stopped sampling"
                time.sleep(0.05)

        send(10)
        rows_after(2)  # history gathers before the page is opened
        browser.get(f"{s.url}/dashboard")
        loaded_at = browser.execute_script("return window.__loadedAt")

        def shown(element_id: str) -> str:
            return browser.execute_script(
                "const e = document.getElementById(arguments[0]); return e ? e.textContent : ''",
                element_id,
            )

        def wait(check, what: str) -> None:
            # 60 s: with two pytest workers on 2 cores, Chromium once took over 20 s
            deadline = time.monotonic() + 60
            while not check():
                assert time.monotonic() < deadline, f"the page never showed {what}"
                time.sleep(0.2)

        wait(lambda: shown("requests-digits") == "10", "10 requests")
        wait(lambda: shown("status-digits") == "degraded", "the model degraded: its alert fired")
        # the recent past is there at once: the latency line holds rows from before the load
        path = browser.execute_script(
            "return document.querySelector('#chart-latency-digits path').getAttribute('d')"
        )
        assert path.count("M") + path.count("L") >= 2
        for prefix, y_title in CHARTS.items():
            texts = _texts(browser, f"chart-{prefix}-digits")
            assert y_title in texts, (prefix, texts)
            assert sum(bool(re.fullmatch(r"[\d.]+k?", t)) for t in texts) >= 2, (prefix, texts)
            if prefix != "batch-sizes":
                assert "time (local clock, last 15 min)" in texts
                assert sum(bool(re.fullmatch(r"\d\d:\d\d", t)) for t in texts) >= 4, texts
        assert "batch size, samples" in _texts(browser, "chart-batch-sizes-digits")
        for name, y_title in PROCESS_CHARTS.items():
            assert y_title in _texts(browser, f"chart-{name}")
        alerts = shown("alerts")
        assert "p50-above-zero" in alerts and "firing since" in alerts
        wait(lambda: re.search(r"accuracy \d+ %", shown("chart-accuracy-digits")), "accuracy")

        def latency_n() -> int:
            found = re.search(r"n=(\d+)\)", shown("chart-latency-digits"))
            return int(found.group(1)) if found else -1

        # more traffic: the numbers and the charts move without a reload
        send(20, offset=10)
        wait(lambda: shown("requests-digits") == "30", "30 requests")
        wait(lambda: latency_n() >= 20, "the new requests in the trailing latency window")
        assert browser.execute_script("return window.__loadedAt") == loaded_at  # no reload

        rows_after(1)  # one more row on every chart before the picture
        shot = tmp_path / "dashboard.png"
        assert browser.save_screenshot(str(shot))
        severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert not severe, severe
        size = browser.execute_script(
            "return [innerWidth * devicePixelRatio, innerHeight * devicePixelRatio]"
        )
    image = matplotlib.image.imread(shot)
    assert image.shape[:2] == (size[1], size[0])
    pixels = image[..., :3].reshape(-1, 3)
    assert pixels.std() > 0.05  # not one colour
    assert len(np.unique((pixels * 255).astype(np.uint8), axis=0)) > 20  # lines, text, colours


def test_dashboard_behind_the_api_key_in_the_browser(browser, digits_package, digits):
    """With an API key, /metrics and the dashboard need it too (issue 11): a scraper sends it
    as a Bearer token, a browser as the password of HTTP Basic auth, which it then re-sends
    for the page's own polling; --public-metrics opens them."""
    key = "s3cret"
    app = create_app({"digits": digits_package}, ServeConfig(api_key=key))
    with ServerThread(app) as s, httpx.Client(base_url=s.url) as c:
        for path in ("/metrics", "/dashboard", "/dashboard/data"):
            c.cookies.clear()
            r = c.get(path)
            assert r.status_code == 401 and "API key" in r.json()["error"], path
            assert r.headers["www-authenticate"] == 'Basic realm="nimbleml"'
            assert c.get(path, headers={"Authorization": f"Bearer {key}"}).status_code == 200
            assert httpx.get(s.url + path, auth=("anyone", "wrong")).status_code == 401
            assert httpx.get(s.url + path, auth=("anyone", key)).status_code == 200
        # the page's cookie (not the key) lets its polling through, and nothing else
        page = httpx.get(s.url + "/dashboard", headers={"Authorization": f"Bearer {key}"})
        cookie = page.cookies["nimbleml_dashboard"]
        assert cookie and key not in cookie
        polled = httpx.get(s.url + "/dashboard/data", cookies={"nimbleml_dashboard": cookie})
        assert polled.status_code == 200
        forged = {"nimbleml_dashboard": "0" * 64}
        assert httpx.get(s.url + "/dashboard/data", cookies=forged).status_code == 401
        assert c.post("/v2/models/digits/infer", json=v2_body(digits[1][:1]),
                      headers={"Authorization": f"Bearer {key}"}).status_code == 200  # fmt: skip
        browser.get(s.url.replace("http://", f"http://viewer:{key}@") + "/dashboard")
        deadline = time.monotonic() + 20
        shown = ""
        while time.monotonic() < deadline:
            shown = browser.execute_script(
                "const e = document.getElementById('requests-digits'); return e ? e.textContent : ''"
            )
            if shown.strip().isdigit() and int(shown) >= 1:
                break
            time.sleep(0.2)
        assert shown.strip().isdigit() and int(shown) >= 1, (
            browser.page_source[:500],
            browser.get_log("browser"),
            browser.get_cookies(),
        )
    public = create_app({"digits": digits_package}, ServeConfig(api_key=key, public_metrics=True))
    with ServerThread(public) as s, httpx.Client(base_url=s.url) as c:
        assert c.get("/metrics").status_code == 200
        assert c.post("/v2/models/digits/infer", json=v2_body(digits[1][:1])).status_code == 401

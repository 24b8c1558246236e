"""`nimbleml demo --quick` run once through the console script, then its page opened in
headless Chromium: no console error, every picture loads, every link resolves to a file of
the run; nothing written outside the folder, no process left running, and a second run into
the same folder asks for --force."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import psutil
import pytest

from nimbleml.errors import ConfigError
from tests._browser import chromium

NIMBLEML = str(Path(sys.executable).with_name("nimbleml"))
STAGES = ["train", "distill", "optimize", "sign", "serve", "monitor", "profile", "cost", "deploy",
          "batch"]  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One quick run. TMPDIR, the cache and config homes, HOME and the working directory point
    at empty folders of the test's, so anything written outside --out shows there."""
    root = tmp_path_factory.mktemp("demo")
    outside = {name: root / name for name in ("tmp", "cache", "config", "home", "cwd")}
    for path in outside.values():
        path.mkdir()
    env = {**os.environ, "TMPDIR": str(outside["tmp"]), "XDG_CACHE_HOME": str(outside["cache"]),
           "XDG_CONFIG_HOME": str(outside["config"]), "HOME": str(outside["home"]),
           "PYTHONWARNINGS": "error::DeprecationWarning:nimbleml"}  # fmt: skip
    env.pop("MPLCONFIGDIR", None)
    out = root / "out"
    started = time.monotonic()
    proc = subprocess.run([NIMBLEML, "demo", "--out", str(out), "--quick"], capture_output=True,
                          text=True, timeout=600, env=env, cwd=outside["cwd"])  # fmt: skip
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"out": out, "outside": outside, "proc": proc, "seconds": seconds, "env": env}


def test_the_run_says_where_the_page_is_and_stays_inside_its_folder(demo):
    out, proc = demo["out"], demo["proc"]
    assert proc.stdout.strip().splitlines()[-1].endswith(str((out / "index.html").resolve()))
    assert "per 1M predictions" in proc.stdout and "req/s" in proc.stdout
    for name, path in demo["outside"].items():
        assert not any(path.iterdir()), f"the demo wrote into {name}: {list(path.iterdir())}"
    assert not (out / "tmp").exists(), "the demo's temporary folder was left behind"
    left = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if any(str(out) in arg for arg in p.info["cmdline"] or []):
            left.append((p.info["pid"], " ".join(p.info["cmdline"])[:200]))
    assert not left, f"processes the demo started are still running: {left}"
    # the server was stopped cleanly: the SQLite store was checkpointed and closed
    assert (out / "serve" / "monitor.db").is_file()
    assert not (out / "serve" / "monitor.db-wal").exists()


def test_a_second_run_into_the_same_folder_asks_for_force(demo):
    proc = subprocess.run([NIMBLEML, "demo", "--out", str(demo["out"]), "--quick"],
                          capture_output=True, text=True, timeout=120, env=demo["env"])  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "--force" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert (demo["out"] / "index.html").is_file()  # the earlier run is untouched


def test_force_replaces_only_an_earlier_demo(tmp_path):
    from nimbleml.demo.workspace import prepare

    earlier = tmp_path / "earlier"
    (earlier / "train").mkdir(parents=True)
    (earlier / "demo.json").write_text('{"status": "done"}')
    (earlier / "train" / "best.pt").write_text("x")
    with pytest.raises(ConfigError, match="--force"):
        prepare(earlier, force=False)
    prepare(earlier, force=True)
    assert earlier.is_dir() and not any(earlier.iterdir())
    # a run stopped half-way (Ctrl-C, an error): the same command starts over
    (earlier / "demo.json").write_text('{"status": "running"}')
    (earlier / "train").mkdir()
    prepare(earlier, force=False)
    assert not any(earlier.iterdir())
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    with pytest.raises(ConfigError, match="holds other files"):
        prepare(other, force=True)
    assert (other / "thesis.tex").is_file()


@pytest.fixture(scope="module")
def browser(demo):
    profile = demo["out"].parent / "chromium-profile"
    with chromium(profile, "--window-size=1200,1500", "--allow-file-access-from-files") as b:
        yield b


def test_the_page_in_a_browser(demo, browser):
    out = demo["out"]
    page = out / "index.html"
    html = page.read_text()
    assert "http://" not in html and "https://" not in html  # no CDN, nothing fetched
    browser.get(page.resolve().as_uri())
    deadline = time.monotonic() + 60
    while browser.execute_script(
        "return Array.from(document.images).some(i => !i.complete)"
    ):  # fmt: skip
        assert time.monotonic() < deadline, "the page's pictures never finished loading"
        time.sleep(0.1)
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])"
    )
    broken = [src for src, width in images if not width]
    assert not broken, f"pictures that did not load: {broken}"
    shown = {src.split("/")[-1] for src, _ in images}
    for picture in ("curves.png", "pareto.png", "latency.png", "dashboard.png",
                    "latency_throughput.png", "accuracy.png", "profile.png"):  # fmt: skip
        assert picture in shown, f"{picture} is not on the page"
    links = browser.execute_script(
        "return Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href'))"
    )
    files = [h for h in links if not h.startswith("#")]
    assert len(files) > 40
    for h in files:
        assert not urlparse(h).scheme, f"not a relative link: {h}"
        assert (out / unquote(h)).is_file(), f"a link to nothing: {h}"
    for h in (h for h in links if h.startswith("#")):
        assert browser.execute_script("return !!document.getElementById(arguments[0])", h[1:]), h
    ids = browser.execute_script(
        "return Array.from(document.querySelectorAll('section')).map(s => s.id)"
    )
    assert ids == STAGES
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda d: (d / "file.txt").write_text("x") and d / "file.txt", "is a file"),
        (lambda d: Path("/proc/nimbleml-demo"), "/proc"),
    ],
    ids=["a file", "unwritable"],
)
def test_a_bad_out_is_one_line(tmp_path, make, says):
    from typer.testing import CliRunner

    from nimbleml.cli import app

    result = CliRunner().invoke(app, ["demo", "--out", str(make(tmp_path)), "--quick"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and says in result.output
    assert result.output.count("\n") == 1

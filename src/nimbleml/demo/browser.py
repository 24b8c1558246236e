"""Pictures of web pages from headless Chromium, when it is installed: the server's live
dashboard during the demo, and the demo page itself for README (``make demo-picture`` runs
``python -m nimbleml.demo.browser nimble-demo/index.html docs/demo.png``).

The flags are those the dashboard's browser test uses (tests/serve/test_dashboard.py):
headless, no sandbox (containers and CI run as root), no GPU, no background networking, and
a profile folder of our own, so nothing is written to the user's Chromium profile.
``--virtual-time-budget`` lets the page's scripts run (the dashboard fetches its data and
draws) before the picture is taken."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-dev-shm-usage", "--hide-scrollbars")  # fmt: skip


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(url: str, png: Path, profile: Path, size: tuple[int, int] = (1400, 1500),
               settle_ms: int = 3000, timeout_s: float = 60.0) -> str | None:  # fmt: skip
    """Write a PNG of ``url``; None when it was written, else why not (one line)."""
    browser = find_browser()
    if browser is None:
        return ("no headless Chromium here (apt-get install chromium, or `make test`, which "
                "installs it)")  # fmt: skip
    png.parent.mkdir(parents=True, exist_ok=True)
    argv = [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
            f"--virtual-time-budget={settle_ms}", f"--screenshot={png.resolve()}", url]  # fmt: skip
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                              stdin=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"Chromium did not finish the picture within {timeout_s:.0f} s"
    if not png.is_file() or png.stat().st_size == 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"Chromium wrote no picture (exit {proc.returncode}: {tail[0][:200]})"
    return None


def main(argv: list[str]) -> int:
    """``python -m nimbleml.demo.browser PAGE.html OUT.png [WIDTH HEIGHT]``."""
    if len(argv) not in (2, 4):
        print("usage: python -m nimbleml.demo.browser PAGE.html OUT.png [WIDTH HEIGHT]",
              file=sys.stderr)  # fmt: skip
        return 2
    page, out = Path(argv[0]), Path(argv[1])
    if not page.is_file():
        print(f"error: {page} not found: run `make demo` first", file=sys.stderr)
        return 2
    size = (int(argv[2]), int(argv[3])) if len(argv) == 4 else (1200, 1500)
    with tempfile.TemporaryDirectory(prefix="nimbleml-picture-") as profile:
        why = screenshot(page.resolve().as_uri(), out, Path(profile), size=size, settle_ms=1000)
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

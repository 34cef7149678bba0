"""One real-browser test: Debian's Chromium driven by Playwright (never a downloaded browser)."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (./dev test installs it as root)"
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(ROOT / "app.py"),
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("streamlit did not start in 90 s")
    yield url
    proc.terminate()
    proc.wait(10)


def test_slider_updates_the_page(server):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(f"{server}/prune?sparsity=0.5", timeout=120_000)
        metric = page.get_by_test_id("stMetric").filter(has_text="Global at")
        metric.first.wait_for(timeout=180_000)
        before = metric.first.inner_text()
        assert "50%" in before
        page.screenshot(path=str(ARTIFACTS / "prune-50.png"), full_page=True)

        slider = page.get_by_role("slider").first
        slider.focus()
        t0 = time.perf_counter()
        slider.press("ArrowRight")  # one step: 0.50 -> 0.51, timed until the new accuracy is on screen
        moved = page.get_by_test_id("stMetric").filter(has_text="Global at 51%")
        moved.first.wait_for(timeout=180_000)
        first_update = time.perf_counter() - t0
        page.get_by_text("estimate, 1,000 images").first.wait_for(state="detached", timeout=180_000)
        full_update = time.perf_counter() - t0
        after = moved.first.inner_text()
        assert "estimate" not in after
        page.screenshot(path=str(ARTIFACTS / "prune-51.png"), full_page=True)
        (ARTIFACTS / "slider-update-seconds.txt").write_text(
            f"first update (1,000-image estimate) {first_update:.2f} s; full 10k accuracy {full_update:.2f} s\n"
        )
        browser.close()
    assert after != before

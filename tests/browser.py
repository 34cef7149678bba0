"""Shared by the real-server tests: a free port, a server process that answers its health check, and Debian's
Chromium driven by Playwright (never a downloaded browser)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (./dev test installs it as root)"
)
# The labels of the app's navigation, in order: every page shows all of them in its sidebar.
NAVIGATION = ["Model", "Prune", "Filter importance", "Sensitivity", "Trade-offs", "Forgetting", "Methods"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(proc: subprocess.Popen, url: str, limit: float = 300) -> None:
    """Wait for ``url``'s health check (a hang guard of ``limit`` seconds); fail if the process exits."""
    deadline = time.time() + limit
    while time.time() < deadline:
        assert proc.poll() is None, f"the app exited with code {proc.returncode}"
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                assert answer.read().decode().strip() == "ok"
                return
        except OSError:
            time.sleep(0.2)
    proc.kill()
    pytest.fail(f"the app did not answer its health check in {limit:.0f} s")


@contextmanager
def served(command: list[str], port: int, cwd: Path, env: dict, log: Path) -> Iterator[str]:
    """Run ``command`` (a server on ``port``) with its output in ``log``; yields its URL once healthy."""
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        healthy(proc, url)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def launch_browser(pw):
    return pw.chromium.launch(
        executable_path=CHROMIUM,
        args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
    )


def open_directly(browser, url: str, title: str) -> list[str]:
    """Open ``url`` in a fresh tab, as a share link is, and wait for the page's ``title``; returns the labels
    of the sidebar's navigation and fails on any exception box."""
    tab = browser.new_page(viewport={"width": 1400, "height": 1600})
    tab.goto(url, timeout=120_000)
    tab.get_by_role("heading", name=title).first.wait_for(timeout=180_000)
    nav = tab.get_by_test_id("stSidebarNav").get_by_role("link")
    nav.first.wait_for(timeout=60_000)
    labels = [text.strip().splitlines()[-1] for text in nav.all_inner_texts()]  # after the icon
    errors = tab.get_by_test_id("stException").all_inner_texts()
    tab.close()
    assert not errors, errors
    return labels

"""Every way to start the app serves every page from a direct link, with the app's whole sidebar.

Each server's **first** request is a direct link to a page other than the default: Streamlit 1.67 treats a
``pages/`` folder beside the main script as an old-style multipage app until the first ``st.navigation`` call,
and that would run the page file alone. `./dev app`'s first link is checked in tests/app/test_browser.py (whose
server it is) and the installed package's entry in tests/test_package.py.
"""

import os
import sys
from pathlib import Path

import pytest

from tests.browser import NAVIGATION, free_port, launch_browser, needs_chromium, open_directly, served
from tests.helpers import ROOT

TITLES = {
    "model": "Where do the parameters and the compute live?",
    "prune": "Global against local pruning",
    "importance": "Which filters does each criterion keep?",
    "sensitivity": "Which layers can take the cut?",
    "tradeoffs": "Accuracy against sparsity and speed-up",
    "forget": "What the pruned model forgets",
    "methods": "When and how to prune: the methods side by side",
}
BIN = Path(sys.executable).parent
# The command, and the pages its server is asked for, the first one first. Both commands serve the same app file,
# so every page is checked once, on the first; the second is checked for its own first link and one more page.
ENTRIES = {
    "streamlit run app.py": (
        [str(BIN / "streamlit"), "run", "app.py"],
        ["prune", *[n for n in TITLES if n != "prune"]],
    ),
    "./dev app": ([str(BIN / "prunekit"), "app"], ["sensitivity", "model"]),  # what ./dev app execs once .venv is ready
}

pytestmark = [pytest.mark.browser, needs_chromium]


def check_pages(url: str, pages: list[str], log: Path) -> None:
    """``pages`` by their own links, in order, each in a fresh tab; then a share link's state is kept."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch_browser(pw)
        for name in pages:
            assert open_directly(browser, f"{url}/{name}", TITLES[name]) == NAVIGATION, name
        tab = browser.new_page()
        tab.goto(f"{url}/prune?sparsity=0.7&structure=filter&criterion=l2", timeout=120_000)
        tab.get_by_test_id("pkReadout").filter(has_text="Global at 70%").first.wait_for(timeout=180_000)
        assert "sparsity=0.7" in tab.url and "criterion=l2" in tab.url  # a share link's state, kept
        browser.close()
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and "Error" not in text, text[-3000:]


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_each_entry_serves_every_page_from_a_direct_first_link(entry, tmp_path):
    command, pages = ENTRIES[entry]
    port = free_port()
    env = os.environ | {"PRUNEKIT_CACHE_DIR": str(tmp_path / "cache"), "PRUNEKIT_WORKERS": "1"}
    env["PRUNEKIT_CURVE_FILL"] = "0"
    flags = ["--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true"]
    log = tmp_path / "server.log"
    with served([*command, *flags], port, ROOT, env, log) as url:
        check_pages(url, pages, log)

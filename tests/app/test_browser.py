"""One real-browser test: Debian's Chromium driven by Playwright (never a downloaded browser)."""

import os
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.browser import CHROMIUM, NAVIGATION, free_port, launch_browser, needs_chromium, open_directly, served
from tests.helpers import ROOT

ARTIFACTS = ROOT / "artifacts"

# One xdist worker for the module: its tests share one server (two workers would each start their own).
pytestmark = [pytest.mark.browser, needs_chromium, pytest.mark.xdist_group("browser")]


@contextmanager
def _app(cache_dir: Path):
    """The app exactly as a newcomer starts it: ``./dev app`` (app.py, warm start), two workers; the background
    curve off (no test here waits for it, and it would take both cores from the suite)."""
    env = os.environ | {"PRUNEKIT_CACHE_DIR": str(cache_dir), "PRUNEKIT_WORKERS": "2", "PRUNEKIT_CURVE_FILL": "0"}
    port = free_port()
    command = ["./dev", "app", "--server.port", str(port), "--server.address", "127.0.0.1"]
    with served(command, port, ROOT, env, Path(tempfile.mkdtemp(prefix="prunekit-app-log-")) / "server.log") as url:
        yield url


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``./dev app`` on a damaged result store (random bytes): it must start, serve and say so."""
    cache = tmp_path_factory.mktemp("cache")
    (cache / "results.sqlite3").write_bytes(os.urandom(32 * 1024))
    with _app(cache) as url:
        yield url


def test_the_app_starts_on_a_damaged_store_and_on_an_unusable_cache_dir(server, tmp_path):
    from playwright.sync_api import sync_playwright

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with sync_playwright() as pw:
        browser = launch_browser(pw)
        # This server's first page request, as `./dev app` serves it: a direct link to a page other than the
        # default, with the app's whole sidebar (tests/app/test_entries.py checks `streamlit run app.py` so).
        assert open_directly(browser, f"{server}/sensitivity", "Which layers can take the cut?") == NAVIGATION
        page = browser.new_page()
        page.goto(f"{server}/model", timeout=120_000)
        page.get_by_text("The result store was damaged").wait_for(timeout=120_000)
        page.get_by_test_id("stMetric").first.wait_for(timeout=120_000)  # and the page itself is served
        with _app(blocker / "cache") as url:
            page.goto(f"{url}/model", timeout=120_000)
            page.get_by_text("results are kept in memory").wait_for(timeout=120_000)
            page.get_by_test_id("stMetric").first.wait_for(timeout=120_000)
        browser.close()
    assert list(Path(tmp_path).iterdir()) == [blocker]  # nothing was created under the unusable path


def _full(page, scope_at: str, test_id: str = "pkReadout"):
    """The readout of ``scope_at`` once it shows a full-split figure (no estimate, nothing pending)."""
    metric = page.get_by_test_id(test_id).filter(has_text=scope_at)
    return metric.filter(has_not_text="estimate").filter(has_not_text="computing").first


# Records, every 5 ms, the app's script state, the global readout's state and the curve's point count, with their
# times: a change of either while no script run happened since its last state was pushed by the channel.
WATCH = """
window.pkLog = [];
let lastRun = null, lastCard = null, host = null, lastCurve = null, curveHost = null;
setInterval(() => {
  if (!curveHost || !curveHost.isConnected) {
    curveHost = [...document.querySelectorAll("*")].find((e) => e.shadowRoot && e.shadowRoot.querySelector(".pk-curve"));
  }
  const drawn = curveHost ? curveHost.shadowRoot.querySelector(".pk-curve").dataset.points : null;
  if (drawn !== lastCurve) { window.pkLog.push([performance.now(), "curve", drawn]); lastCurve = drawn; }
  const app = document.querySelector('[data-testid="stApp"]');
  const run = app ? app.getAttribute("data-test-script-state") : null;
  if (run !== lastRun) { window.pkLog.push([performance.now(), "run", run]); lastRun = run; }
  if (!host || !host.isConnected) {
    host = [...document.querySelectorAll("*")].find((e) => e.shadowRoot && e.shadowRoot.querySelector(".pk-cards"));
  }
  const card = host ? host.shadowRoot.querySelector('[data-card="global"]') : null;
  const state = card ? card.dataset.state + " " + card.querySelector(".pk-value").textContent : null;
  if (state !== lastCard) { window.pkLog.push([performance.now(), "card", state]); lastCard = state; }
}, 5);
"""


CURVE_HAS = """() => [...document.querySelectorAll("*")].some(
  (e) => e.shadowRoot && e.shadowRoot.querySelector('.pk-curve circle[data-series="global"][data-s="{s}"]'))"""


MARK_FULL = """() => [...document.querySelectorAll("*")].some(
  (e) => e.shadowRoot && e.shadowRoot.querySelector('.pk-curve polygon[data-mark="global"][data-estimate="false"]'))"""


def test_a_figure_is_pushed_onto_the_page_with_no_rerun(server):
    """fmnist-vgg at a new position: its full pass takes seconds, so the page is drawn while the figure is
    pending, and the figure then arrives on the live channel while the script stays not running, in the readout
    and as a point on the curve."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch_browser(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.add_init_script(WATCH)
        page.goto(f"{server}/prune?model=fmnist-vgg&sparsity=0.37", timeout=120_000)
        _full(page, "Global at 37%").wait_for(timeout=180_000)
        page.wait_for_function(CURVE_HAS.replace("{s}", "0.37"), timeout=60_000)  # and on the curve
        page.wait_for_function(MARK_FULL, timeout=10_000)  # and the slider's mark shows it, not an estimate
        page.wait_for_timeout(100)
        log = page.evaluate("window.pkLog")
        browser.close()
    cards = [(t, v) for t, kind, v in log if kind == "card" and v]
    full = next(i for i, (_, v) in enumerate(cards) if v.startswith("full"))
    assert full > 0, f"the full figure was drawn by the first run, not pushed: {log}"
    _assert_pushed(log, cards[full - 1][0], cards[full][0])  # the card's last state before the figure, the figure
    curve = [(t, int(v)) for t, kind, v in log if kind == "curve" and v is not None]
    grew = [i for i in range(1, len(curve)) if curve[i][1] > curve[i - 1][1]]
    assert grew, f"no point was added to the curve after it was first drawn: {log}"
    _assert_pushed(log, curve[grew[-1] - 1][0], curve[grew[-1]][0])  # the point at 37%, added by the channel


def _assert_pushed(log: list, before: float, landed: float) -> None:
    """No script ran from ``before`` (the page's state then) to ``landed``: what changed was pushed."""
    runs = [(t, v) for t, kind, v in log if kind == "run"]
    state_then = [v for t, v in runs if t <= before][-1]
    assert state_then == "notRunning" and not [t for t, v in runs if before < t <= landed], log


def test_a_measurement_started_by_a_button_is_pushed_with_no_poll(server):
    """Measure latency on fmnist-vgg (seconds in a worker): the part listens on the channel (a ``p=1`` stream) and
    reruns once when the latency lands, so from the click to the figure no part of the page reruns more than
    twice (the click's own rerun, then the push's); a part that polled would rerun every 0.5 s while it waited."""
    from playwright.sync_api import sync_playwright
    from streamlit.proto.BackMsg_pb2 import BackMsg

    with sync_playwright() as pw:
        browser = launch_browser(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        sent, streams = [], []
        page.on("websocket", lambda ws: ws.on("framesent", lambda frame: sent.append((time.monotonic(), frame))))
        page.on("request", lambda r: streams.append(r.url) if "/prunekit/live" in r.url and "p=1" in r.url else None)
        page.goto(f"{server}/prune?model=fmnist-vgg&sparsity=0.52", timeout=120_000)
        button = page.get_by_role("button", name="Measure latency")
        button.wait_for(timeout=120_000)
        clicked = time.monotonic()
        button.click()
        page.get_by_text("Measured speedup (").wait_for(timeout=120_000)
        landed = time.monotonic()
        browser.close()
    reruns = Counter()
    for t, frame in sent:
        msg = BackMsg.FromString(frame if isinstance(frame, bytes) else frame.encode("latin-1"))
        if clicked <= t <= landed and msg.WhichOneof("type") == "rerun_script":
            reruns[msg.rerun_script.fragment_id or "the whole page"] += 1
    assert reruns and max(reruns.values()) <= 2, f"reruns in {landed - clicked:.1f} s: {reruns}"
    assert streams, "the part never listened on the channel"


def test_a_browser_that_cannot_reach_the_channel_falls_back_to_refreshing(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch_browser(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.route("**/prunekit/live**", lambda route: route.abort())  # a proxy that does not pass the stream
        page.goto(f"{server}/prune?model=fmnist-vgg&sparsity=0.41", timeout=120_000)
        page.get_by_text("could not open the live channel").first.wait_for(timeout=120_000)  # caption or toast
        _full(page, "Global at 41%", "stMetric").wait_for(timeout=180_000)  # the figures still arrive
        browser.close()


def test_a_stream_that_is_cut_reconnects_and_its_figures_still_arrive(server):
    """Each stream the page opens (the readouts', the curve's) is first answered and then ends with nothing in it
    (a proxy or a server restart cutting the connection): the browser connects again by itself, the figures
    arrive on the new streams, and the page does not fall back to refreshing itself."""
    from playwright.sync_api import sync_playwright

    asked = []

    def cut_first(route):
        asked.append(route.request.url)
        if asked.count(route.request.url) == 1:
            route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body="retry: 300\n\n")
        else:
            route.continue_()

    with sync_playwright() as pw:
        browser = launch_browser(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.route("**/prunekit/live**", cut_first)
        page.goto(f"{server}/prune?model=fmnist-vgg&sparsity=0.43", timeout=120_000)
        _full(page, "Global at 43%").wait_for(timeout=180_000)
        page.wait_for_function(CURVE_HAS.replace("{s}", "0.43"), timeout=60_000)  # and on the curve
        fell_back = page.get_by_text("could not open the live channel").count()
        browser.close()
    assert any(asked.count(url) >= 2 for url in asked), asked  # a stream cut, asked again
    assert fell_back == 0


def test_quick_moves_while_figures_are_pending_all_land_and_the_last_one_shows(server):
    """No move is lost: six slider steps 0.2 s apart on fmnist-vgg (whose full passes take seconds), each arriving
    while the page's last run and its figures are still pending; the page settles on the last position, with
    the full-split figures of both scopes there, and the link says where the last step left the slider."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch_browser(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(f"{server}/prune?model=fmnist-vgg&sparsity=0.6", timeout=120_000)
        page.get_by_test_id("pkReadout").filter(has_text="Global at 60%").first.wait_for(timeout=120_000)
        slider = page.get_by_role("slider").first
        slider.focus()
        for _ in range(6):
            slider.press("ArrowRight")
            page.wait_for_timeout(200)
        _full(page, "Global at 66%").wait_for(timeout=180_000)
        _full(page, "Local at 66%").wait_for(timeout=180_000)
        assert "sparsity=0.66" in page.url
        browser.close()


def test_slider_updates_the_page(server):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = launch_browser(pw)
        page = browser.new_page(viewport={"width": 1400, "height": 2200})
        t0 = time.perf_counter()
        page.goto(f"{server}/model", timeout=120_000)
        page.get_by_test_id("stMetric").first.wait_for(timeout=120_000)
        cold_open = time.perf_counter() - t0

        page.goto(f"{server}/prune?sparsity=0.5", timeout=120_000)
        _full(page, "Global at 50%").wait_for(timeout=180_000)
        before = _full(page, "Global at 50%").inner_text()
        page.screenshot(path=str(ARTIFACTS / "prune-50.png"), full_page=True)

        slider = page.get_by_role("slider").first
        slider.focus()
        t0 = time.perf_counter()
        slider.press("ArrowRight")  # one step: 0.50 -> 0.51, timed until the full-split accuracy is on screen
        _full(page, "Global at 51%").wait_for(timeout=180_000)
        _full(page, "Local at 51%").wait_for(timeout=180_000)
        move = time.perf_counter() - t0
        after = _full(page, "Global at 51%").inner_text()
        page.screenshot(path=str(ARTIFACTS / "prune-51.png"), full_page=True)
        t0 = time.perf_counter()
        slider.press("ArrowLeft")  # back to 0.50: a position already computed, as on a filled curve
        _full(page, "Global at 50%").wait_for(timeout=60_000)
        _full(page, "Local at 50%").wait_for(timeout=60_000)
        warm_move = time.perf_counter() - t0
        assert _full(page, "Global at 50%").inner_text() == before  # the same numbers, from the cache
        (ARTIFACTS / "slider-update-seconds.txt").write_text(
            f"cold open of the first page after the health check {cold_open:.2f} s; "
            f"slider move to full accuracy, new position {move:.2f} s, back to a computed one {warm_move:.2f} s\n"
        )
        browser.close()
    assert after != before
    assert "%" in after


def _overlaps(a: dict | None, b: dict | None) -> bool:
    if a is None or b is None:
        return False
    return a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"] and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"]  # fmt: skip


def test_tradeoffs_charts_and_metrics_are_legible(server):
    """Trade-offs: legends clear of tick labels, no rotated text over the plot (screenshot kept);
    Lite0's metrics at 1440 px: compact values that fit their boxes."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1440, "height": 1800})
        page.goto(f"{server}/tradeoffs?model=fmnist-cnn", timeout=120_000)
        page.get_by_text("all points measured").wait_for(timeout=240_000)
        page.wait_for_timeout(1000)  # let plotly finish drawing
        page.screenshot(path=str(ARTIFACTS / "tradeoffs.png"), full_page=True)
        charts = page.locator(".js-plotly-plot")
        assert charts.count() == 2
        for i in range(2):
            chart = charts.nth(i)
            legend = chart.locator(".legend").bounding_box()
            ticks = [
                chart.locator(".xtick text").nth(j).bounding_box() for j in range(chart.locator(".xtick text").count())
            ]
            assert ticks and not any(_overlaps(legend, t) for t in ticks)
            assert not any(_overlaps(a, b) for a, b in zip(ticks, ticks[1:], strict=False))
            assert chart.locator(".annotation-text", has_text="collapse").count() == 0
        page.goto(f"{server}/?model=efficientnet-lite0", timeout=120_000)  # the Model page is the default page
        values = page.get_by_test_id("stMetricValue")
        values.first.wait_for(timeout=120_000)
        page.screenshot(path=str(ARTIFACTS / "model-lite0-1440.png"), full_page=True)
        texts = values.all_inner_texts()
        assert "M" in texts[0] and "," not in texts[0]  # compact, e.g. '4.7 M'
        assert values.evaluate_all("els => els.every(e => e.scrollWidth <= e.clientWidth)")
        browser.close()

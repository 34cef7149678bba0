"""AppTest helpers shared by the page tests: the app's script, its pages, and runs that must not raise."""

from streamlit.testing.v1 import AppTest

from tests.helpers import APP_SCRIPT, page, wait_until

APP = APP_SCRIPT
PAGES = [
    page("model"),
    page("prune"),
    page("importance"),
    page("sensitivity"),
    page("tradeoffs"),
    page("forget"),
    page("methods"),
]
TIMEOUT = 240


def app(query: dict | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    return at


def open_page(path: str, query: dict | None = None) -> AppTest:
    at = app(query).run()
    if path != page("model"):
        at.switch_page(path).run()
    assert not at.exception, at.exception
    return at


def metric(at: AppTest, label_start: str) -> str:
    return next(m.value for m in at.metric if m.label.startswith(label_start))


def rerun(at: AppTest) -> AppTest:
    """One more run of the page, which must not raise."""
    at.run()
    assert not at.exception, at.exception
    return at


def settle(at: AppTest) -> AppTest:
    """Rerun until every accuracy on the page is a full-split figure (the service works meanwhile)."""
    pending = lambda: any(m.value == "computing..." or "estimate" in m.label for m in at.metric)  # noqa: E731
    wait_until(lambda: not pending(), step=lambda: rerun(at), what="every accuracy a full-split figure")
    return at

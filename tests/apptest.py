"""AppTest helpers shared by the page tests: the app's script, its pages, and runs that must not raise."""

import json

from streamlit.testing.v1 import AppTest

from prunekit.app import server_state
from prunekit.app.readouts import PENDING
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
    at = past_loading(app(query).run())
    if path != page("model"):
        past_loading(at.switch_page(path).run())
    assert not at.exception, at.exception
    return at


def past_loading(at: AppTest) -> AppTest:
    """When the session's model is loading apart (its progress shown in place of the page), wait for the load
    and run the page again, as the browser's refresh does once it is ready."""
    status = at.session_state["loading"] if "loading" in at.session_state else None  # noqa: SIM401 - no .get here
    if status is not None:
        server_state.loads().get(status.name)
        at.run()
    return at


def shown(element_json: str) -> dict[str, tuple[str, str]]:
    """A readouts element's data -> {label (with its estimate tag): (value, interval)}, as the browser first draws it."""
    out = {}
    for c in json.loads(element_json)["cards"]:
        r = c["full"] or c["estimate"]
        tag = f" (estimate, {r['n']:,} images)" if r and r["estimate"] else ""
        out[c["label"] + tag] = (r["value"], r["interval"]) if r else (c["error"] or PENDING, "")
    return out


def readouts(at: AppTest) -> dict[str, tuple[str, str]]:
    """The live readouts' cards (label with its estimate tag -> (value, interval)), as the component is given them
    on this run (what the page knew when it ran; the browser updates them from the live channel, AppTest cannot)."""
    out = {}
    for element in at.get("bidi_component"):
        if element.proto.component_name == "prunekit_readouts":
            out |= shown(element.proto.json)
    return out


def component_data(at: AppTest, name: str) -> list[dict]:
    """The data each ``name`` component (v2) was given on this run."""
    return [json.loads(e.proto.json) for e in at.get("bidi_component") if e.proto.component_name == name]


def curve(at: AppTest) -> dict[str, dict[float, float]]:
    """The Prune page's accuracy curve, scope -> sparsity -> top-1 (%), as drawn on this run: by the component that
    listens (the points it was given; those pending arrive in the browser), else by Plotly (a page that refreshes)."""
    for data in component_data(at, "prunekit_curve"):
        return {s["id"]: {x: 100 * y for x, y in s["points"]} for s in data["series"]}
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        if "Accuracy against sparsity" in json.dumps(spec.get("layout", {}).get("title", "")):
            named = [t for t in spec["data"] if t.get("name", "").endswith("(full split)")]
            return {t["name"].split()[0]: dict(zip(t["x"], t["y"], strict=True)) for t in named}
    raise AssertionError("no accuracy curve")


def labelled(at: AppTest) -> list[tuple[str, str]]:
    """Every metric and readout on the page: (label, value)."""
    return [(m.label, m.value) for m in at.metric] + [(k, v) for k, (v, _) in readouts(at).items()]


def notes(at: AppTest) -> list[str]:
    """Every caption and readout interval on the page."""
    return [c.value for c in at.caption] + [interval for _, interval in readouts(at).values()]


def metric(at: AppTest, label_start: str) -> str:
    return next(value for label, value in labelled(at) if label.startswith(label_start))


def rerun(at: AppTest) -> AppTest:
    """One more run of the page, which must not raise."""
    at.run()
    assert not at.exception, at.exception
    return at


def settle(at: AppTest) -> AppTest:
    """Rerun until every accuracy on the page is a full-split figure (the service works meanwhile)."""
    pending = lambda: any(v == "computing..." or "estimate" in label for label, v in labelled(at))  # noqa: E731
    wait_until(lambda: not pending(), step=lambda: rerun(at), what="every accuracy a full-split figure")
    return at

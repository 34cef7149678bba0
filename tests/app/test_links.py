"""Share links never raise: every value is used, or replaced by the default or nearest allowed value
with one notice. Checked on the parser directly and, with hypothesis, through AppTest on every page."""

import math

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from prunekit.app.links import LinkSchema, decode_overrides, encode_overrides, parse_link, shown
from tests.apptest import PAGES, app
from tests.helpers import page

DEFAULTS = {"model": "m1", "criterion": "c1", "structure": "s1", "sparsity": 0.5, "keep": False, "normalise": "none"}
CHOICES = {"model": ["m1", "m2"], "criterion": ["c1", "c2"], "structure": ["s1", "s2"], "normalise": ["none", "mean"]}
SCHEMA = LinkSchema(DEFAULTS, CHOICES)


def _accepted(name: str, raw: str) -> bool:
    """The oracle, written from the rules and not from the parser: is ``raw`` used exactly as given?"""
    if name == "sparsity":
        try:
            v = float(raw)
        except ValueError:
            return False
        return math.isfinite(v) and 0 <= v <= 0.99 and abs(v * 100 - round(v * 100)) <= 1e-6  # on the 0.01 grid
    if name == "keep":
        return raw in ("0", "1")
    return name in CHOICES and raw in CHOICES[name]


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("nan", 0.5),
        ("inf", 0.99),
        ("-inf", 0.0),
        ("-1", 0.0),
        ("1", 0.99),
        ("0.999999", 0.99),
        ("1e309", 0.99),
        ("0.505", 0.5),
        ("abc", 0.5),
        ("<b>0.3</b>", 0.5),
        ("", 0.5),
    ],
)
def test_bad_sparsities_fall_back_to_the_default_or_the_nearest_allowed_value(raw, value):
    got, notices = parse_link({"sparsity": raw}, SCHEMA)
    assert got["sparsity"] == pytest.approx(value) and len(notices) == 1


def test_good_values_pass_without_a_notice():
    link = {"model": "m2", "criterion": "c2", "structure": "s2", "sparsity": "0.37", "keep": "1", "normalise": "mean"}
    got, notices = parse_link(link, SCHEMA)
    assert notices == [] and got == {**link, "sparsity": 0.37, "keep": True}


def test_a_notice_quotes_markup_harmlessly():
    _, notices = parse_link({"model": "**x** [y](http://e.vil) <script>", "zz<b>": "1"}, SCHEMA)
    assert len(notices) == 2
    for note in notices:
        assert "**" not in note and "](" not in note and "<script>" not in note and "<b>" not in note
    assert shown("a" * 100).endswith("...'") and len(shown("a" * 100)) < 60


names = st.sampled_from([*DEFAULTS, "zoom", "utm_source"])
values = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["nan", "inf", "-1", "1", "0.999999", "1e309", "0.5", "0.25", "0", "1", "m2", "c1", "mean"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(names, values, max_size=8))
@example({"sparsity": "-5.324451263190823e-194"})  # found by hypothesis: below 0, however little
@example({"sparsity": "1E-9"})  # found by hypothesis: within 1e-6 of a step counts as on it
def test_any_link_parses_to_allowed_settings_with_one_notice_per_rejected_value(link):
    got, notices = parse_link(link, SCHEMA)
    assert set(got) == set(DEFAULTS)
    for name, choices in CHOICES.items():
        assert got[name] in choices
    assert 0 <= got["sparsity"] <= 0.99 and round(got["sparsity"], 2) == got["sparsity"]
    assert isinstance(got["keep"], bool)
    rejected = [n for n, raw in link.items() if not _accepted(n, raw)]
    assert len(notices) == len(rejected)


# --- through the app: random query strings on every page -------------------------------------------

APP_CHOICES = {  # cheap valid values (one small model, data-free criteria) beside bad ones
    "model": ["fmnist-cnn", "nosuchnet", "<i>vgg</i>", ""],
    "criterion": ["magnitude", "l1", "random", "nope"],
    "structure": ["unstructured", "filter", "channels!"],
    "normalise": ["none", "mean", "??"],
    "sparsity": ["0.3", "0.999999", "1", "-1", "nan", "1e309", "inf", "0.123", "half"],
    "keep": ["0", "1", "yes"],
    "round_to": ["1", "8", "7", "x"],
    "zoom": ["2"],
}
APP_VALID = {
    "model": {"fmnist-cnn"},
    "criterion": {"magnitude", "l1", "random"},
    "structure": {"unstructured", "filter"},
    "normalise": {"none", "mean"},
    "keep": {"0", "1"},
    "round_to": {"1", "8"},
}


def _app_accepted(name: str, raw: str) -> bool:
    if name == "sparsity":
        return raw == "0.3"
    return raw in APP_VALID.get(name, ())


app_links = st.fixed_dictionaries({}, optional={n: st.sampled_from(v) for n, v in APP_CHOICES.items()})


def _link_notices(at) -> list[str]:
    return [w.value for w in at.warning if "link" in w.value]


@pytest.mark.slow
@pytest.mark.parametrize("path", PAGES)
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(link=app_links)
@example(link={"sparsity": "0.999999"})
@example(link={"sparsity": "1e309", "model": "<b>x</b>", "criterion": "nope", "keep": "yes"})
def test_random_links_never_raise_on_any_page(path, link):
    at = app(link).run()
    notices = _link_notices(at)
    if path != page("model"):
        at.switch_page(path).run()
    assert not at.exception, (link, at.exception)
    rejected = [n for n, raw in link.items() if not _app_accepted(n, raw)]
    assert len(notices) == len(rejected), (link, notices)
    assert not any("<b>" in n or "<i>" in n for n in notices)


@pytest.mark.parametrize(
    ("raw", "kept", "ignored"),
    [
        ("features.3:0.6,classifier.1:0.9", {"classifier.1": 0.9, "features.3": 0.6}, 0),
        ("a:0.5,b:1.5,c:nan,:0.3,d", {"a": 0.5}, 4),
        ("x<script>:0.2,layer.0:0.25", {"layer.0": 0.25}, 1),
        ("", {}, 0),
    ],
)
def test_per_layer_overrides_keep_only_layer_names_with_allowed_sparsities(raw, kept, ignored):
    schema = LinkSchema({**DEFAULTS, "overrides": ""}, CHOICES)
    got, notices = parse_link({"overrides": raw}, schema)
    assert decode_overrides(got["overrides"]) == kept
    assert len(notices) == (1 if ignored else 0) and (not ignored or f"Ignored {ignored} per-layer" in notices[0])
    assert decode_overrides(encode_overrides(kept)) == kept


def test_round_to_travels_in_a_link_and_a_bad_one_falls_back():
    from prunekit.app.links import read_settings, to_query
    from prunekit.app.settings import Settings
    from prunekit.core.spec import ROUND_TO_CHOICES

    choices = {
        "model": ["fmnist-cnn"],
        "criterion": ["magnitude"],
        "structure": ["unstructured", "filter"],
        "normalise": ["none"],
        "round_to": [str(r) for r in ROUND_TO_CHOICES],
    }
    want = Settings(structure="filter", round_to=8)
    got, notices = read_settings(to_query(want), Settings(), choices)
    assert got == want and got.spec().round_to == 8 and not notices
    got, notices = read_settings({"round_to": "7"}, Settings(), choices)
    assert got.round_to == 1 and len(notices) == 1 and "round_to" in notices[0]
    assert Settings(round_to=8).spec().round_to == 1  # inert for unstructured pruning, not an error

"""What a server offers and holds: `prunekit app --models PATTERNS` (the picker and links offer only those) and
`--memory-gb` (a model larger than the budget is refused in one sentence and the default shown)."""

from __future__ import annotations

import fnmatch
import gc
import threading
import weakref

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.app import server_state
from prunekit.app.links import read_settings
from prunekit.app.settings import Settings
from prunekit.errors import InvalidArgumentError
from prunekit.models import zoo
from prunekit.service import memory
from prunekit.service.evaluation import EvalService
from prunekit.service.memory import MEMORY_ENV, footprint
from tests.apptest import app, past_loading, rerun
from tests.helpers import page

ALL = zoo.model_names()
DEFAULT = Settings().model


@pytest.fixture
def offered(monkeypatch):
    """A server started with --models 'fmnist-*,resnet18' (caches that read the choice are rebuilt around the test)."""
    monkeypatch.setenv(server_state.MODELS_ENV, "fmnist-*,resnet18")
    server_state.zoo_names.clear()
    yield
    monkeypatch.delenv(server_state.MODELS_ENV)
    server_state.zoo_names.clear()


@settings(max_examples=60, deadline=None)
@given(
    patterns=st.lists(
        st.sampled_from([*ALL, "fmnist-*", "resnet*", "vgg1?", "*_bn", "efficientnet_b[0-3]"]), min_size=1, max_size=4
    )
)
def test_the_offered_models_are_exactly_those_the_patterns_match_and_the_default(patterns):
    offered = server_state.offered_models(",".join(patterns))
    by_hand = {n for n in ALL if any(fnmatch.fnmatchcase(n, p) for p in patterns)} | {DEFAULT}
    assert set(offered) == by_hand and offered == [n for n in ALL if n in by_hand]  # the zoo's order


@settings(max_examples=60, deadline=None)
@given(name=st.one_of(st.sampled_from(ALL), st.text(max_size=20)))
def test_a_link_never_sets_a_model_outside_the_offered_ones(name):
    offered = server_state.offered_models("fmnist-*,resnet18")
    got, notices = read_settings({"model": name}, Settings(), {"model": offered})
    assert got.model in offered
    assert (got.model == name) == (not notices)


@pytest.mark.parametrize("bad", ["nosuchnet", "fmnist-*,vgg99", " , "])
def test_a_pattern_matching_nothing_stops_the_server_before_it_starts(bad):
    with pytest.raises(InvalidArgumentError):
        server_state.offered_models(bad)


def test_the_picker_offers_only_the_chosen_models_and_a_link_to_another_gets_the_default(offered):
    at = app({"model": "vgg16"}).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="w_model").options == [*(f"{n} (bundled, Fashion-MNIST)" for n in zoo.BUNDLED),
                                                   "resnet18 (torchvision)"]  # fmt: skip
    assert at.selectbox(key="w_model").value == DEFAULT
    notices = [w.value for w in at.warning]
    assert any("'vgg16' from the link is not offered on this server" in n for n in notices), notices


@pytest.fixture
def small_budget(monkeypatch):
    """A server whose model budget fits the default (and fmnist-vgg) but not resnet18 (11.7M parameters)."""
    monkeypatch.setenv(MEMORY_ENV, repr((footprint(zoo.param_count("resnet18")) - 1) / 1024**3))
    server_state.loads.clear()
    yield
    monkeypatch.delenv(MEMORY_ENV)
    server_state.loads.clear()


def test_a_model_larger_than_the_budget_is_refused_in_one_sentence_and_the_default_shown(small_budget):
    at = app({"model": "resnet18"}).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="w_model").value == DEFAULT
    refusal = [w.value for w in at.warning if "resnet18 needs about" in w.value]
    assert len(refusal) == 1 and "more than its whole memory budget" in refusal[0], [w.value for w in at.warning]
    assert refusal[0].endswith(f"Showing {DEFAULT} instead.")
    assert "resnet18" not in server_state.labs()
    at.selectbox(key="w_model").set_value("fmnist-vgg")  # a model that fits loads as before
    past_loading(rerun(at))  # on a busy machine the load can outlast the page's first moment
    assert at.selectbox(key="w_model").value == "fmnist-vgg" and "fmnist-vgg" in server_state.labs()
    line = next(c.value for c in at.caption if c.value.startswith("Memory budget for models"))
    assert "fmnist-vgg" in line and DEFAULT in line


@pytest.fixture
def gated_loads(monkeypatch):
    """A server whose zoo loads wait for ``gate`` (so a test sees a load under way), shown after 0.1 s."""
    gate = threading.Event()
    real = server_state._load_zoo_lab

    def gated(name, progress):
        progress(1)
        assert gate.wait(60)
        return real(name, progress)

    monkeypatch.setattr(server_state, "_load_zoo_lab", gated)
    monkeypatch.setattr(server_state, "INLINE_WAIT_S", 0.1)
    server_state.loads.clear()
    yield gate
    gate.set()
    server_state.loads.clear()


def test_a_long_load_shows_its_progress_in_place_of_the_page_and_the_page_once_ready(gated_loads):
    at = app({"model": "resnet18"}).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="w_model").value == "resnet18"  # the picker stays usable
    assert [h.value for h in at.subheader] == ["Loading resnet18"]
    bar = at.get("progress")[0].proto
    assert bar.value == 25 and "step 1 of 4: building the model and reading its weights" in bar.text
    assert "resnet18" not in server_state.labs()
    gated_loads.set()
    assert server_state.loads().get("resnet18") is server_state.labs().get("resnet18")  # the load ends apart
    rerun(at)
    assert "Loading resnet18" not in [h.value for h in at.subheader] and not at.get("progress")
    line = next(c.value for c in at.caption if c.value.startswith("Memory budget for models"))
    assert "resnet18" in line


@pytest.fixture
def room_for_one(monkeypatch):
    """A budget that holds the default beside resnet34 but not beside resnet18 and resnet34, with no minute's grace."""
    fits = footprint(zoo.param_count(DEFAULT)) + footprint(zoo.param_count("resnet34")) + 2**20
    monkeypatch.setenv(MEMORY_ENV, repr(fits / 1024**3))
    monkeypatch.setattr(memory, "IN_USE_S", 0.0)
    dropped = []
    drop = EvalService.drop_model
    monkeypatch.setattr(EvalService, "drop_model", lambda svc, key: (dropped.append(key), drop(svc, key)))
    server_state.loads.clear()
    yield dropped
    monkeypatch.delenv(MEMORY_ENV)
    server_state.loads.clear()


def test_opening_a_model_that_needs_room_evicts_the_least_recently_used_and_the_workers_drop_it(room_for_one, caplog):
    at = past_loading(app({"model": "resnet18"}).run())
    at.switch_page(page("prune"))
    rerun(at)  # the Prune page of resnet18: figures, overlays, the path test's job
    gone = weakref.ref(server_state.labs().get("resnet18"))
    at.selectbox(key="w_model").set_value("resnet34")
    rerun(at)
    assert server_state.loads().get("resnet34") is not None
    assert [n for n, _ in server_state.labs().held() if n != DEFAULT] == ["resnet34"]
    assert room_for_one == ["resnet18"]  # the evaluation workers were told to forget it
    assert any("dropped resnet18, the least recently used model" in r.getMessage() for r in caplog.records)
    gc.collect()
    assert gone() is None, [type(r).__name__ for r in gc.get_referrers(gone())]  # nothing else holds it: freed
    at.switch_page(page("model"))
    rerun(at)
    line = next(c.value for c in at.caption if c.value.startswith("Memory budget for models"))
    assert "resnet34" in line and "resnet18" not in line

"""What a server offers and holds: `prunekit app --models PATTERNS` (the picker and links offer only those) and
`--memory-gb` (a model larger than the budget is refused in one sentence and the default shown)."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.app import server_state
from prunekit.app.links import read_settings
from prunekit.app.settings import Settings
from prunekit.errors import InvalidArgumentError
from prunekit.models import zoo
from prunekit.service.memory import MEMORY_ENV, footprint
from tests.apptest import app, rerun

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
    server_state.labs.clear()
    yield
    monkeypatch.delenv(MEMORY_ENV)
    server_state.labs.clear()


def test_a_model_larger_than_the_budget_is_refused_in_one_sentence_and_the_default_shown(small_budget):
    at = app({"model": "resnet18"}).run()
    assert not at.exception, at.exception
    assert at.selectbox(key="w_model").value == DEFAULT
    refusal = [w.value for w in at.warning if "resnet18 needs about" in w.value]
    assert len(refusal) == 1 and "more than its whole memory budget" in refusal[0], [w.value for w in at.warning]
    assert refusal[0].endswith(f"Showing {DEFAULT} instead.")
    assert "resnet18" not in server_state.labs()
    at.selectbox(key="w_model").set_value("fmnist-vgg")  # a model that fits loads as before
    rerun(at)
    assert at.selectbox(key="w_model").value == "fmnist-vgg" and "fmnist-vgg" in server_state.labs()
    line = next(c.value for c in at.caption if c.value.startswith("Memory budget for models"))
    assert "fmnist-vgg" in line and DEFAULT in line

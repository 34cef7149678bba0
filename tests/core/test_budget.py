"""The budget solver: never over budget, and the same answer as trying every plan."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.core.budget import Costs, LayerCost, Option, Target, frontier, plan, solve
from prunekit.core.sensitivity import SensitivityRow
from prunekit.errors import InvalidArgumentError

layer = st.lists(
    st.builds(
        Option,
        st.sampled_from([0.0, 0.3, 0.5, 0.7, 0.9]),
        st.integers(0, 120),
        st.floats(-0.05, 0.6, allow_nan=False),
    ),
    min_size=1,
    max_size=4,
)
tables = st.lists(layer, min_size=1, max_size=4).map(lambda layers: {f"l{i}": opts for i, opts in enumerate(layers)})


def _every_plan(choices):
    for picked in itertools.product(*choices.values()):
        yield sum(o.cost for o in picked), sum(o.drop for o in picked), picked


@settings(max_examples=300, deadline=None)
@given(tables, st.integers(0, 500))
def test_a_cost_budget_is_never_exceeded_and_the_drop_is_the_least_possible(choices, budget):
    got = solve(choices, budget=budget)
    feasible = [p for p in _every_plan(choices) if p[0] <= budget]
    if not feasible:
        assert got is None
        return
    assert got is not None and sum(o.cost for o in got.values()) <= budget
    assert sum(o.drop for o in got.values()) == pytest.approx(min(p[1] for p in feasible), abs=1e-9)


@settings(max_examples=300, deadline=None)
@given(tables, st.floats(0.0, 1.0, allow_nan=False))
def test_a_drop_budget_is_met_at_the_least_cost(choices, max_drop):
    got = solve(choices, max_drop=max_drop)
    feasible = [p for p in _every_plan(choices) if p[1] <= max_drop + 1e-12]
    if not feasible:
        assert got is None
        return
    assert sum(o.drop for o in got.values()) <= max_drop + 1e-12
    assert sum(o.cost for o in got.values()) == min(p[0] for p in feasible)


@settings(max_examples=100, deadline=None)
@given(tables)
def test_the_frontier_holds_exactly_the_plans_no_other_plan_beats(choices):
    plans = list(_every_plan(choices))
    undominated = {
        (c, d) for c, d, _ in plans if not any((c2 <= c and d2 < d) or (c2 < c and d2 <= d) for c2, d2, _ in plans)
    }
    assert {(c, d) for c, d, _ in frontier(choices)} == undominated  # sums in the same order: exact floats


def test_targets_parse_and_bad_ones_say_what_is_wrong():
    assert Target.parse("macs=0.5") == Target("macs", 0.5)
    for text, needle in [
        ("flops=0.5", "one of macs=X"),
        ("macs=half", "needs a number"),
        ("drop=2", "must be a fraction"),
    ]:
        with pytest.raises(InvalidArgumentError, match=needle):
            Target.parse(text)


def _rows(drops: dict[str, dict[float, float]]) -> list[SensitivityRow]:
    return [
        SensitivityRow(name, s, 0.9 - d, 0.9, 10_000, False) for name, by_s in drops.items() for s, d in by_s.items()
    ]


COSTS = Costs({"a": LayerCost(100, 1000), "b": LayerCost(300, 3000), "c": LayerCost(600, 600)}, 4600, 1100)


def test_a_macs_plan_counts_every_layers_multiply_adds():
    drops = {"a": {0.5: 0.05, 0.9: 0.3}, "b": {0.5: 0.01, 0.9: 0.02}, "c": {0.5: 0.002, 0.9: 0.004}}
    got = plan(COSTS, _rows(drops), Target("macs", 0.5))
    assert got.sparsities == {"a": 0.0, "b": 0.9, "c": 0.0}  # b holds most of the 4,600 MACs and minds least
    assert got.macs_ratio == pytest.approx((1000 + 300 + 600) / 4600) and got.macs_ratio <= 0.5
    assert got.predicted_drop == pytest.approx(0.02)
    assert got.params_ratio == pytest.approx((1100 - 270) / 1100)


def test_a_params_target_leaves_biases_and_norms_in_the_count():
    drops = {"a": {0.9: 0.0}, "b": {0.9: 0.0}}  # c not scanned: it stays dense and counts in full
    with pytest.raises(InvalidArgumentError, match="no plan on the scan's grid meets params=0.3"):
        plan(COSTS, _rows(drops), Target("params", 0.3))  # c alone keeps 600 of 1,100
    got = plan(COSTS, _rows(drops), Target("params", 0.7))  # 770 of 1,100 left: a and b may keep 70
    assert got.params_ratio <= 0.7 and got.sparsities == {"a": 0.9, "b": 0.9}


def test_cli_plan_meets_its_budget_checked_with_torch_prune(capsys):
    import copy
    import json

    from torch.nn.utils import prune as torch_prune

    from prunekit.cli import main
    from prunekit.core.evaluate import accuracy
    from prunekit.core.profile import profile_model
    from prunekit.models import zoo

    args = ["plan", "fmnist-cnn", "--target", "macs=0.5", "--sparsities", "0.3,0.6,0.9", "--json"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    loaded = zoo.load("fmnist-cnn")
    model = copy.deepcopy(loaded.model)
    modules = dict(model.named_modules())
    for name, s in data["plan"].items():
        if s > 0:
            torch_prune.l1_unstructured(modules[name], "weight", amount=s)
    prof = profile_model(loaded.model, loaded.input_spec.shape)
    left = sum(
        x.macs * float(modules[x.name].weight.count_nonzero()) / modules[x.name].weight.numel() for x in prof.prunable()
    )
    assert data["macs_ratio"] == pytest.approx(left / prof.total_macs, abs=1e-6) and data["macs_ratio"] <= 0.5
    assert data["met"] and set(data["plan"]) == {x.name for x in prof.prunable()}
    assert data["accuracy"]["measured"] == accuracy(model, loaded.eval_data()).top1
    assert data["accuracy"]["predicted"] == pytest.approx(data["accuracy"]["dense"] - data["scan"]["predicted_drop"])
    assert data["pruning_ratio_dict"] == {k: v for k, v in data["plan"].items() if v > 0}


def test_cli_plan_says_when_the_grid_cannot_meet_the_target(capsys):
    from prunekit.cli import main

    assert main(["plan", "fmnist-cnn", "--target", "params=0.01", "--sparsities", "0.3"]) == 2
    assert "no plan on the scan's grid meets params=0.01" in capsys.readouterr().err

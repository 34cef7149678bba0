"""``round_to``: channel counts kept to a multiple, in allocation, compaction and export."""

import itertools
import math

import pytest
import torch

from prunekit.core.allocate import ScoreTable, UnitSet, allocate, global_counts, removal_choices
from prunekit.core.lab import Lab
from prunekit.core.spec import Allocation, PruneConfig, PruneSpec, Structure
from prunekit.errors import InvalidArgumentError
from prunekit.models import zoo
from prunekit.service.jobs import EvalJob
from tests.helpers import TinyResNet, tiny_loaded


def _table(sizes: list[int], seed: int) -> ScoreTable:
    gen = torch.Generator().manual_seed(seed)
    sets = []
    for i, n in enumerate(sizes):
        scores = torch.rand(n, generator=gen)
        values, order = scores.sort(stable=True)
        rank = torch.empty(n, dtype=torch.int32)
        rank[order] = torch.arange(n, dtype=torch.int32)
        sets.append(UnitSet(f"c{i}", values, rank, frozenset([f"c{i}"])))
    return ScoreTable("l1", Structure.FILTER, "none", tuple(sets))


def _cost(table: ScoreTable, counts: dict[str, int]) -> float:
    return sum(float(s.sorted_scores[: counts[s.name]].double().sum()) for s in table.sets)


def _allowed(size: int, removed: int, r: int) -> bool:
    kept = size - removed
    return kept == size or kept % r == 0


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("r", [4, 8])
def test_global_total_is_the_nearest_reachable_and_its_removed_scores_the_least(seed, r):
    sizes = [5, 8, 12, 3, 10]
    table = _table(sizes, seed)
    combos = list(itertools.product(*(removal_choices(n, r) for n in sizes)))
    for sparsity in (0.1, 0.33, 0.5, 0.77, 0.95):
        target = round(sparsity * sum(sizes))
        got = allocate(table, PruneConfig(sparsity, "global", round_to=r)).counts
        assert all(_allowed(n, got[f"c{i}"], r) for i, n in enumerate(sizes))
        nearest = min(abs(sum(c) - target) for c in combos)
        assert abs(sum(got.values()) - target) == nearest
        reaching = [c for c in combos if abs(sum(c) - target) == nearest and sum(c) == sum(got.values())]
        least = min(_cost(table, {f"c{i}": k for i, k in enumerate(c)}) for c in reaching)
        assert _cost(table, got) == pytest.approx(least, abs=1e-9)


def test_local_counts_are_each_sets_nearest_multiple():
    sizes = [5, 8, 12, 3, 10, 64]
    table = _table(sizes, 0)
    got = allocate(table, PruneConfig(0.4, "local", round_to=4)).counts
    for i, n in enumerate(sizes):
        want = round(0.4 * n)
        best = min(abs(c - want) for c in removal_choices(n, 4))
        assert abs(got[f"c{i}"] - want) == best and _allowed(n, got[f"c{i}"], 4)
    assert got == {"c0": 1, "c1": 4, "c2": 4, "c3": 0, "c4": 2, "c5": 24}  # worked by hand: 12 -> 7.2 kept -> 8


def test_rounding_to_one_is_the_plain_global_allocation():
    table = _table([7, 9, 16, 30], 3)
    plain = allocate(table, PruneConfig(0.45, "global")).counts
    counts, _ = global_counts(list(table.sets), round(0.45 * 62))
    assert plain == counts
    # the knapsack, asked to round to 1, removes units of the same summed score as the threshold does
    from prunekit.core.allocate import _knapsack

    assert _cost(table, _knapsack(list(table.sets), round(0.45 * 62), 1)) == pytest.approx(_cost(table, plain))


def test_overrides_round_too():
    table = _table([10, 16], 1)
    got = allocate(table, PruneConfig(0.5, "global", overrides={"c0": 0.35}, round_to=4)).counts
    assert got["c0"] == 2  # 3.5 -> 4 removed leaves 6, not a multiple; 2 leaves 8


def test_round_to_needs_whole_channels_and_a_positive_count():
    with pytest.raises(InvalidArgumentError, match="filter structure"):
        PruneSpec("magnitude", "unstructured", round_to=8)
    for bad in (0, -4, 2.5, True, "8"):
        with pytest.raises(InvalidArgumentError, match="round_to"):
            PruneSpec("l1", "filter", round_to=bad)
    assert PruneSpec("l1", "filter", round_to=8).key() != PruneSpec("l1", "filter").key()
    plain = EvalJob("m", PruneSpec("l1", "filter", sparsity=0.5))
    assert plain.key() != EvalJob("m", PruneSpec("l1", "filter", sparsity=0.5, round_to=8)).key()
    assert "round_to" not in str(plain.key())  # results stored before rounding existed keep their keys


def _out_channels(model: torch.nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


@pytest.mark.parametrize(("lab", "r"), [("tiny", 4), ("fmnist-vgg", 8), ("fmnist-resnet", 16)], indirect=["lab"])
def test_compacted_and_exported_widths_are_multiples(lab, r):
    spec = PruneSpec("l1", Structure.FILTER, Allocation("global", "mean"), 0.5, round_to=r)
    pruner = lab.pruner(spec)
    result = pruner.prune(spec)
    compacted = pruner.compact(spec)
    dense = _out_channels(lab.loaded.model)
    widths = _out_channels(compacted.model)
    assert all(w == dense[n] or w % r == 0 for n, w in widths.items()), widths
    assert any(w < dense[n] for n, w in widths.items())
    assert compacted.params_compact == result.nonzero_params
    target = round(0.5 * sum(s.size for s in pruner.table.sets))
    assert abs(result.units_removed - target) <= math.ceil(r / 2) * len(pruner.table.sets)

    from prunekit.deploy.export import build_bundle

    onnx_model = __import__("onnx").load_from_string(build_bundle(pruner, spec).files["model.onnx"])
    conv_widths = sorted(
        int(__import__("onnx").numpy_helper.to_array(t).shape[0])
        for t in onnx_model.graph.initializer
        if len(t.dims) == 4
    )
    assert conv_widths == sorted(widths.values())


@pytest.fixture
def lab(request):
    if request.param == "tiny":
        return Lab(tiny_loaded(TinyResNet))
    return Lab(zoo.load(request.param))


@pytest.mark.parametrize("lab", ["fmnist-resnet"], indirect=True)
def test_removed_outputs_are_what_compaction_takes_away(lab):
    from prunekit.core.analysis import removed_outputs

    spec = PruneSpec("l1", Structure.FILTER, Allocation("global", "mean"), 0.4, round_to=4)
    compacted = lab.pruner(spec).compact(spec)
    dense, widths = _out_channels(lab.loaded.model), _out_channels(compacted.model)
    table = lab.table(*spec.table_key)
    for name, width in dense.items():
        assert width - removed_outputs(table, spec.config(), lab.first_last, name) == widths[name], name

"""LAMP and ERK against implementations written here from the papers' formulas, on tiny seeded models and on
a bundled one; the CLI's --allocation as a user types it."""

from __future__ import annotations

import json

import pytest
import torch

from prunekit.cli import main
from prunekit.core.allocate import erk_counts, erk_densities, lamp_scores
from prunekit.core.lab import Lab
from prunekit.core.spec import ALLOCATIONS, Allocation, PruneConfig, PruneSpec
from prunekit.errors import InvalidArgumentError
from prunekit.models import zoo
from tests.helpers import ROOT, TinyCNN, TinyResNet, tiny_loaded


def _prunable(lab: Lab) -> set[str]:
    return {layer.name for layer in lab.profile.prunable()}


def _lamp_by_the_formula(w: torch.Tensor) -> list[float]:
    """Lee et al. 2021, eq. 2, literally: sort by w² ascending (ties by position); score_u = w_u² / sum_{v >= u} w_v²."""
    squares = [float(x) ** 2 for x in w.reshape(-1).tolist()]
    order = sorted(range(len(squares)), key=lambda i: (squares[i], i))
    scores = [0.0] * len(squares)
    for pos, i in enumerate(order):
        tail = sum(squares[j] for j in order[pos:])
        scores[i] = squares[i] / tail if tail > 0 else 0.0
    return scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lamp_scores_equal_the_formula_ties_and_zeros_included(seed):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 5, generator=gen)
    w[0, :3] = 0.0  # already pruned weights
    w[1, 1] = w[2, 2] = -w[3, 3]  # ties in w²
    assert torch.allclose(
        lamp_scores(w).double().reshape(-1), torch.tensor(_lamp_by_the_formula(w), dtype=torch.float64), rtol=1e-6
    )


def _global_removal(scores: dict[str, list[float]], sparsity: float) -> dict[str, int]:
    """Remove the k lowest scores of all layers together (ties: earlier layers first), counted per layer."""
    flat = [(s, li, i) for li, (name, layer) in enumerate(scores.items()) for i, s in enumerate(layer)]
    k = round(sparsity * len(flat))
    gone = sorted(flat)[:k]
    names = list(scores)
    return {name: sum(1 for _, li, _ in gone if names[li] == name) for name in names}


@pytest.mark.parametrize("model", [TinyCNN, TinyResNet])
def test_lamp_allocation_removes_the_lowest_lamp_scores_of_the_whole_model(model):
    lab = Lab(tiny_loaded(model))
    weights = {n: m.weight.detach() for n, m in lab.loaded.model.named_modules() if n in _prunable(lab)}
    scores = {
        n: [float(torch.tensor(s, dtype=torch.float32)) for s in _lamp_by_the_formula(w)] for n, w in weights.items()
    }
    for sparsity in (0.3, 0.7, 0.95):
        result = lab.pruner(PruneSpec("magnitude", "unstructured", allocation=Allocation(normalise="lamp"))).prune(
            PruneConfig(sparsity, "global")
        )
        expected = _global_removal(scores, sparsity)
        got = {row.name: round(row.sparsity * row.params) for row in result.layers if row.name in expected}
        assert got == expected


def _lamp_by_suffix_sums(w: torch.Tensor) -> list[float]:
    """The same formula for big layers: one pass from the largest square down keeps the running tail sum."""
    squares = [float(x) ** 2 for x in w.reshape(-1).tolist()]
    order = sorted(range(len(squares)), key=lambda i: (squares[i], i))
    scores, tail = [0.0] * len(squares), 0.0
    for i in reversed(order):
        tail += squares[i]
        scores[i] = squares[i] / tail if tail > 0 else 0.0
    return scores


def test_lamp_on_a_bundled_model_removes_the_lowest_lamp_scores_of_the_whole_model():
    lab = Lab(zoo.load("fmnist-cnn"))
    modules = dict(lab.loaded.model.named_modules())
    scores = {
        n: torch.tensor(_lamp_by_suffix_sums(modules[n].weight.detach()), dtype=torch.float32).tolist()
        for n in [x.name for x in lab.profile.prunable()]
    }
    result = lab.pruner(PruneSpec("magnitude", "unstructured", allocation=Allocation(normalise="lamp"))).prune(
        PruneConfig(0.7, "global")
    )
    got = {row.name: round(row.sparsity * row.params) for row in result.layers}
    assert got == _global_removal(scores, 0.7)


def test_lamp_keeps_every_layers_best_weight_even_at_99_percent():
    lab = Lab(zoo.load("fmnist-cnn"))
    pruner = lab.pruner(PruneSpec("magnitude", "unstructured", allocation=Allocation(normalise="lamp")))
    pruner.apply_(PruneConfig(0.99, "global"))
    for name, module in pruner.model.named_modules():
        if name in _prunable(lab):
            original = dict(lab.loaded.model.named_modules())[name].weight.detach()
            best = original.abs().reshape(-1).argmax()
            assert module.weight.detach().reshape(-1)[best] != 0, name


def _erk_by_bisection(shapes: dict[str, tuple[int, ...]], density: float) -> dict[str, float]:
    """Evci et al. 2020: density_l = min(1, eps * (sum of dims) / (product of dims)), with eps such that the
    kept weights are ``density`` of all; found here by bisection on eps (the total is monotone in it)."""
    sizes = {n: float(torch.tensor(s).prod()) for n, s in shapes.items()}
    raw = {n: sum(s) / sizes[n] for n, s in shapes.items()}
    target = density * sum(sizes.values())
    lo, hi = 0.0, 1.0 / min(raw.values())
    for _ in range(200):
        eps = (lo + hi) / 2
        kept = sum(min(1.0, eps * raw[n]) * sizes[n] for n in shapes)
        lo, hi = (eps, hi) if kept < target else (lo, eps)
    return {n: min(1.0, lo * raw[n]) for n in shapes}


SHAPES = {
    "conv1": (16, 3, 3, 3),
    "conv2": (32, 16, 3, 3),
    "conv3": (64, 32, 3, 3),
    "point": (64, 64, 1, 1),
    "fc": (10, 256),
}


@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 0.8, 0.95])
def test_erk_densities_equal_the_formula_solved_by_bisection(density):
    ours, theirs = erk_densities(SHAPES, density), _erk_by_bisection(SHAPES, density)
    assert all(abs(ours[n] - theirs[n]) < 1e-9 for n in SHAPES), (ours, theirs)
    sizes = {n: float(torch.tensor(s).prod()) for n, s in SHAPES.items()}
    assert abs(sum(ours[n] * sizes[n] for n in SHAPES) - density * sum(sizes.values())) < 1e-6


@pytest.mark.parametrize("removed", [1, 1000, 12345, 30000])
def test_erk_counts_remove_exactly_the_target_in_erks_proportions(removed):
    counts = erk_counts(SHAPES, removed)
    total = sum(int(torch.tensor(s).prod()) for s in SHAPES.values())
    densities = _erk_by_bisection(SHAPES, 1 - removed / total)
    assert sum(counts.values()) == removed
    for n, s in SHAPES.items():
        size = int(torch.tensor(s).prod())
        assert abs(counts[n] - (1 - densities[n]) * size) < 1.0 + 1e-6 and 0 <= counts[n] <= size


@pytest.mark.parametrize("name", ["fmnist-cnn", "fmnist-vgg"])
def test_erk_on_a_bundled_model_gives_each_layer_its_erk_density(name):
    lab = Lab(zoo.load(name))
    modules = dict(lab.loaded.model.named_modules())
    shapes = {n: tuple(modules[n].weight.shape) for n in _prunable(lab)}
    densities = _erk_by_bisection(shapes, 0.3)
    result = lab.pruner(PruneSpec("magnitude", "unstructured")).prune(PruneConfig(0.7, "erk"))
    for row in result.layers:
        if row.name in shapes:
            assert abs((1 - row.sparsity) - densities[row.name]) <= 1.0 / row.params + 1e-9, row.name
    assert abs(result.achieved_sparsity - 0.7) < 1e-3


def test_erk_refuses_filters_in_words():
    lab = Lab(tiny_loaded(TinyCNN))
    with pytest.raises(InvalidArgumentError, match="unstructured pruning only"):
        lab.pruner(PruneSpec("l1", "filter")).prune(PruneConfig(0.5, "erk"))


def test_lamp_on_filters_keeps_a_channel_of_every_cluster():
    lab = Lab(tiny_loaded(TinyResNet))
    pruner = lab.pruner(PruneSpec("l2", "filter", allocation=Allocation(normalise="lamp")))
    sets = pruner.table.sets
    total = sum(s.size for s in sets)
    most = (total - len(sets)) / total  # the highest target that leaves one channel per cluster
    alloc = pruner.allocation(PruneConfig(most, "global"))
    assert alloc.removed == total - len(sets) and all(alloc.counts[s.name] == s.size - 1 for s in sets)


def _cli(args, capsys) -> tuple[int, str, str]:
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("allocation", list(ALLOCATIONS))
def test_cli_allocation_prints_each_layers_sparsity(allocation, capsys):
    code, out, _ = _cli(["prune", "fmnist-cnn", "--sparsity", "0.7", "--allocation", allocation, "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    method = ALLOCATIONS[allocation]
    assert (data["allocation"], data["scope"], data["normalise"]) == (allocation, method.scope, method.normalise)
    assert abs(data["achieved_sparsity"] - 0.7) < 1e-3
    off = [abs(r["sparsity"] - 0.7) * r["params"] for r in data["layers"]]  # weights from 70% of the layer
    assert max(off) <= 0.5 if allocation == "local" else max(off) > 1  # uniform but for rounding, or allocated


def test_cli_old_scope_spelling_is_the_same_allocation(capsys):
    _, old, _ = _cli(["prune", "fmnist-cnn", "--sparsity", "0.6", "--scope", "local", "--json"], capsys)
    _, new, _ = _cli(["prune", "fmnist-cnn", "--sparsity", "0.6", "--allocation", "local", "--json"], capsys)
    assert json.loads(old)["layers"] == json.loads(new)["layers"]


def test_cli_allocation_that_contradicts_scope_is_one_line_error(capsys):
    code, _, err = _cli(
        ["prune", "fmnist-cnn", "--sparsity", "0.6", "--allocation", "lamp", "--scope", "local"], capsys
    )
    assert code == 2 and "--allocation lamp is scope 'global' on 'lamp' scores" in err and "--scope local" in err


def test_docs_explain_each_allocation_in_one_line():
    readme = (ROOT / "docs" / "methods.md").read_text()
    for method in ALLOCATIONS.values():
        assert f"- `{method.name}`: {method.description}." in readme, method.name


@pytest.mark.parametrize("kind", ["magnitudes", "signed", "ties and signed zeros", "infinities", "nan"])
def test_the_fast_sort_is_torchs_stable_argsort(kind):
    from prunekit.core.allocate import sorted_ranks

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200_003, generator=gen)
    if kind == "magnitudes":
        x = x.abs()
    elif kind == "ties and signed zeros":
        x = torch.randint(-3, 4, (200_003,), generator=gen).float()
        x[::5] = -0.0
    elif kind == "infinities":
        x[::7], x[::11] = float("inf"), float("-inf")
    elif kind == "nan":
        x[::13] = float("nan")
    values, rank = sorted_ranks(x)
    order = torch.argsort(x, stable=True)
    assert torch.equal(rank.long(), torch.argsort(order)) and rank.dtype == torch.int32
    assert torch.equal(values, x[order]) or (kind == "nan" and torch.equal(values.isnan(), x[order].isnan()))
    if kind == "ties and signed zeros":  # -0.0 and 0.0 tie (the values read 0.0 either way)
        assert torch.equal(values.abs(), x[order].abs())

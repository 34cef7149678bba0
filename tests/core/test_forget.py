"""What pruning forgets: per-class accuracy, flips and McNemar's test against loops written here."""

from __future__ import annotations

import json
import math

import pytest
import torch

from prunekit.cli import main
from prunekit.core.forget import compare, mcnemar, prediction_dtype
from prunekit.core.lab import Lab
from prunekit.core.loaded import ModelSpec
from prunekit.core.spec import PruneConfig, PruneSpec
from prunekit.errors import InvalidArgumentError
from prunekit.models import zoo
from prunekit.service.codec import decode, encode
from prunekit.service.jobs import Predictions, PredictJob
from prunekit.service.runner import JobRunner


def _binomial_two_sided(b: int, c: int) -> float:
    """Two-sided exact binomial test at p = 1/2, by its definition: the chance of a split at least as uneven."""
    n = b + c
    if n == 0:
        return 1.0
    pmf = [math.comb(n, k) / 2**n for k in range(n + 1)]
    observed = pmf[b]
    return min(1.0, sum(p for p in pmf if p <= observed * (1 + 1e-12)))


@pytest.mark.parametrize(("b", "c"), [(0, 0), (3, 0), (0, 3), (10, 2), (7, 7), (25, 12), (1, 40), (100, 80)])
def test_mcnemar_equals_the_exact_binomial_value(b, c):
    assert mcnemar(b, c).p == pytest.approx(_binomial_two_sided(b, c), rel=1e-9)
    assert (mcnemar(b, c).b, mcnemar(b, c).c) == (b, c)


def test_mcnemar_by_hand():
    assert mcnemar(3, 0).p == 0.25  # 2 x (1/2)^3
    assert mcnemar(10, 2).p == pytest.approx(2 * (1 + 12 + 66) / 4096)
    with pytest.raises(InvalidArgumentError, match="non-negative"):
        mcnemar(-1, 2)


def test_per_class_accuracy_and_flips_equal_a_plain_loop():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (500,), generator=gen)
    dense = torch.where(torch.rand(500, generator=gen) < 0.8, labels, torch.randint(0, 4, (500,), generator=gen))
    pruned = torch.where(torch.rand(500, generator=gen) < 0.6, labels, torch.randint(0, 4, (500,), generator=gen))
    got = compare(labels, dense, pruned, ("a", "b", "c", "d"))
    y, d, p = labels.tolist(), dense.tolist(), pruned.tolist()
    for k in range(4):
        mine = [i for i in range(500) if y[i] == k]
        assert got.dense_per_class[k] == sum(d[i] == k for i in mine) / len(mine)
        assert got.pruned_per_class[k] == sum(p[i] == k for i in mine) / len(mine)
    assert list(got.lost) == [i for i in range(500) if d[i] == y[i] and p[i] != y[i]]
    assert list(got.gained) == [i for i in range(500) if d[i] != y[i] and p[i] == y[i]]
    assert list(got.lost_as) == [p[i] for i in got.lost] and list(got.gained_from) == [d[i] for i in got.gained]
    assert got.correct == (sum(d[i] == y[i] for i in range(500)), sum(p[i] == y[i] for i in range(500)))
    assert sum(got.moved.values()) == len(got.lost)
    assert got.moved == {
        (t, q): sum(1 for i in got.lost if (y[i], p[i]) == (t, q))
        for t in range(4)
        for q in range(4)
        if any((y[i], p[i]) == (t, q) for i in got.lost)
    }
    assert got.worst_first()[0] == min(range(4), key=lambda k: (got.change[k], k))
    assert (got.test.b, got.test.c) == (len(got.lost), len(got.gained))


def test_predictions_are_one_byte_per_image_and_survive_the_store():
    assert prediction_dtype(10) == torch.uint8 and prediction_dtype(1000) == torch.int32
    runner = JobRunner()
    runner.load("fmnist-cnn", ModelSpec("prunekit.models.zoo:load", ("fmnist-cnn",)))
    job = PredictJob("fmnist-cnn", PruneSpec("magnitude", sparsity=0.8))
    got = runner.run(job)
    assert isinstance(got, Predictions) and len(got.data) == 10_000
    lab = Lab(zoo.load("fmnist-cnn"))
    pruner = lab.pruner(PruneSpec("magnitude", "unstructured"))
    pruner.apply_(PruneConfig(0.8))
    with torch.no_grad():
        expected = pruner.model(lab.loaded.eval_data().images).argmax(1)
    assert torch.equal(got.tensor(), expected)
    assert decode(job, json.loads(json.dumps(encode(job, got)))) == got


def test_cli_forget_prints_the_same_numbers_as_an_independent_evaluation(capsys):
    assert main(["forget", "fmnist-cnn", "--sparsity", "0.9", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    lab = Lab(zoo.load("fmnist-cnn"))
    data_set = lab.loaded.eval_data()
    pruner = lab.pruner(PruneSpec("magnitude", "unstructured"))
    pruner.apply_(PruneConfig(0.9, "global"))
    with torch.no_grad():
        dense = lab.loaded.model(data_set.images).argmax(1)
        pruned = pruner.model(data_set.images).argmax(1)
    y = data_set.labels
    for k, name in enumerate(data["classes"]):
        assert name == data_set.classes[k]
        images = int((y == k).sum())
        assert data["dense"]["per_class"][k] == int((dense[y == k] == k).sum()) / images
        assert data["pruned"]["per_class"][k] == int((pruned[y == k] == k).sum()) / images
    lost = ((dense == y) & (pruned != y)).nonzero().flatten().tolist()
    assert data["flipped"]["lost"] == lost and data["mcnemar"]["b"] == len(lost)
    assert data["mcnemar"]["c"] == len(data["flipped"]["gained"]) and data["mcnemar"]["p"] < 1e-10


def test_a_p_value_below_floats_range_is_said_as_such_not_as_zero():
    from prunekit.app.forgetting import verdict
    from prunekit.core.forget import McNemar

    assert verdict(mcnemar(7188, 22)) == "p < **1e-300** (unlikely to be chance)"
    assert verdict(mcnemar(10, 2)) == f"p = **{mcnemar(10, 2).p:.3g}** (unlikely to be chance)"
    assert verdict(McNemar(3, 3, 1.0)) == "p = **1** (could well be chance)"

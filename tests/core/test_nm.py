"""N:M semi-structured masks: every group of M consecutive input weights keeps exactly its N best."""

from __future__ import annotations

import json

import pytest
import torch

from prunekit.cli import main
from prunekit.core.importance import ScoreContext, get_criterion
from prunekit.core.lab import Lab
from prunekit.core.spec import PruneConfig, PruneSpec
from prunekit.errors import InvalidArgumentError
from prunekit.models import zoo
from tests.helpers import TinyCNN, TinyResNet, tiny_loaded


def _groups(t: torch.Tensor, m: int) -> list[torch.Tensor]:
    """Every group of ``m`` consecutive input weights of a (out, in, ...) tensor: for each output and kernel
    position, the input channels in order, cut every ``m``."""
    rows = t.movedim(1, -1).reshape(-1, t.shape[1])
    return [row[start : start + m] for row in rows for start in range(0, t.shape[1], m)]


def _check_pattern(lab: Lab, structure: str, n: int, m: int, criterion: str = "magnitude") -> None:
    pruner = lab.pruner(PruneSpec(criterion, structure))
    alloc = pruner.apply_(PruneConfig((m - n) / m))
    masks = pruner.work.keep_masks(alloc)
    scores = get_criterion(criterion).score(
        ScoreContext(lab.loaded.model, lab.loaded.input_spec.shape, lab.calibration()), structure
    )
    fitted = {s.name for s in pruner.table.sets}
    assert fitted, "the pattern fits no layer"
    for name in fitted:
        keep, score = masks[f"{name}.weight"], scores[name]
        for kept, group in zip(_groups(keep, m), _groups(score, m), strict=True):
            assert int(kept.sum()) == n
            best = sorted(range(m), key=lambda i: (-float(group[i]), -i))[:n]  # ties: the later weight stays
            assert sorted(best) == kept.nonzero().flatten().tolist()
    for name in pruner.table.unscored:  # layers the pattern does not fit stay dense
        assert bool(masks.get(f"{name}.weight", torch.ones(1, dtype=torch.bool)).all())


@pytest.mark.parametrize(("structure", "n", "m"), [("2:4", 2, 4), ("4:8", 4, 8)])
@pytest.mark.parametrize("cls", [TinyCNN, TinyResNet])
def test_every_group_keeps_exactly_its_n_best_on_tiny_models(cls, structure, n, m):
    _check_pattern(Lab(tiny_loaded(cls)), structure, n, m)


def test_two_four_on_a_bundled_model_by_a_data_driven_criterion():
    _check_pattern(Lab(zoo.load("fmnist-cnn")), "2:4", 2, 4, criterion="taylor")


def test_layers_the_pattern_does_not_fit_stay_dense_and_are_named():
    lab = Lab(tiny_loaded(TinyCNN))  # conv1 has 1 input channel, conv2 4, fc 96
    assert lab.pruner(PruneSpec("magnitude", "2:4")).table.unscored == ("conv1",)
    assert set(lab.pruner(PruneSpec("magnitude", "4:8")).table.unscored) == {"conv1", "conv2"}
    result = lab.pruner(PruneSpec("magnitude", "2:4")).prune(PruneConfig(0.5))
    sparsity = {row.name: row.sparsity for row in result.layers}
    assert sparsity["conv1"] == 0.0 and sparsity["conv2"] == sparsity["fc"] == 0.5


def test_the_pattern_sets_the_sparsity_not_a_slider():
    pruner = Lab(tiny_loaded(TinyCNN)).pruner(PruneSpec("magnitude", "2:4"))
    with pytest.raises(InvalidArgumentError, match="2:4 pattern removes 2 of every 4 weights: its sparsity is 0.5"):
        pruner.prune(PruneConfig(0.7))
    assert pruner.prune(PruneConfig(0.0)).achieved_sparsity == 0.0


def test_cli_two_four(capsys):
    code = main(["prune", "fmnist-cnn", "--structure", "2:4", "--sparsity", "0.5", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["structure"] == "2:4"
    assert {round(r["sparsity"], 9) for r in data["layers"]} <= {0.0, 0.5} and data["achieved_sparsity"] > 0.4

"""Vectors and kernels: the rungs between weights and filters remove whole units, the lowest summed first."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from prunekit.cli import main
from prunekit.core.lab import Lab
from prunekit.core.spec import Allocation, PruneConfig, PruneSpec, Structure
from prunekit.errors import InvalidArgumentError
from tests.helpers import TinyCNN, TinyResNet, tiny_loaded


class _OneConv(nn.Module):
    """A hand-built layer: 2 output x 2 input channels of 3 x 3 kernels, every weight's magnitude chosen
    (after a 1 x 1 stem that gives it two input channels, and before a 2 x 2 Linear head)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 1, bias=False)
        self.conv = nn.Conv2d(2, 2, 3, bias=False)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            # kernel (o, i) row r, column c: 100 * kernel + 10 * row + column + 1, sign alternating
            grid = torch.arange(2 * 2 * 3 * 3, dtype=torch.float32).reshape(2, 2, 3, 3)
            row, col = (grid % 9) // 3, grid % 3
            value = 100 * torch.tensor([3.0, 0.0, 2.0, 1.0]).reshape(2, 2, 1, 1) + 10 * row + col + 1
            self.conv.weight.copy_(value * torch.where(grid % 2 == 0, 1.0, -1.0))
            self.fc.weight.copy_(torch.tensor([[4.0, -1.0], [2.0, 3.0]]))

    def forward(self, x):
        return self.fc(self.conv(self.stem(x)).mean((2, 3)))


def _lab(module: nn.Module) -> Lab:
    return Lab(tiny_loaded(lambda: module))


def _masks(lab: Lab, structure: str, sparsity: float, allocation: str = "local") -> dict[str, torch.Tensor]:
    pruner = lab.pruner(PruneSpec("magnitude", structure, Allocation(allocation)))
    return pruner.work.keep_masks(pruner.apply_(PruneConfig(sparsity, allocation)))


def test_kernels_go_whole_lowest_summed_magnitude_first():
    keep = _masks(_lab(_OneConv()), "kernel", 0.5)["conv.weight"]
    per_kernel = keep.flatten(2)
    assert bool((per_kernel.all(-1) | ~per_kernel.any(-1)).all())  # each kernel kept or removed whole
    # kernels scaled 300, 0, 200, 100 (+ the same row/column offsets): (0, 1) and (1, 1) go
    assert per_kernel.all(-1).tolist() == [[True, False], [True, False]]


def test_vectors_go_whole_lowest_summed_magnitude_first():
    keep = _masks(_lab(_OneConv()), "vector", 0.25)["conv.weight"]
    assert bool((keep.all(-1) | ~keep.any(-1)).all())  # each row of a kernel kept or removed whole
    removed = (~keep.all(-1)).nonzero().tolist()
    assert removed == [[0, 1, 0], [0, 1, 1], [0, 1, 2]]  # 3 of 12 rows: kernel (0, 1)'s, smallest sums first


def test_a_linear_layer_is_a_one_by_one_convolution_pruned_weight_by_weight():
    for structure in ("vector", "kernel"):
        keep = _masks(_lab(_OneConv()), structure, 0.5)["fc.weight"]
        assert keep.tolist() == [[True, False], [False, True]]  # |w| 4 and 3 of 4, 1, 2, 3 stay


@pytest.mark.parametrize("structure", ["vector", "kernel"])
@pytest.mark.parametrize("allocation", ["global", "local", "lamp"])
@pytest.mark.parametrize("cls", [TinyCNN, TinyResNet])
def test_tiny_models_lose_whole_units_at_the_requested_fraction(cls, allocation, structure):
    lab = Lab(tiny_loaded(cls))
    pruner = lab.pruner(PruneSpec("magnitude", structure, Allocation.named(allocation)))
    alloc = pruner.apply_(PruneConfig(0.6, Allocation.named(allocation).scope))
    masks = pruner.work.keep_masks(alloc)
    dims = {"vector": (-1,), "kernel": (-2, -1)}[structure]
    units = removed = 0
    for name, keep in masks.items():
        if keep.dim() == 4:
            kept, gone = keep.all(dim=dims[-1]), ~keep.any(dim=dims[-1])
            if structure == "kernel":
                kept, gone = kept.all(-1), gone.all(-1)
            assert bool((kept | gone).all()), name
            units += kept.numel()
            removed += int(gone.sum())
        else:
            units += keep.numel()
            removed += int((~keep).sum())
    assert removed == alloc.removed and units == alloc.total
    assert removed == round(0.6 * units) or allocation == "local"
    work = dict(pruner.work.model.named_parameters())
    for name, keep in masks.items():  # the working copy holds exactly those zeros
        assert bool((work[name][~keep] == 0).all())


def test_erk_is_refused_for_vectors_and_kernels():
    pruner = Lab(tiny_loaded(TinyCNN)).pruner(PruneSpec("magnitude", "kernel", Allocation("erk")))
    with pytest.raises(InvalidArgumentError, match="unstructured pruning only, not kernels"):
        pruner.apply_(PruneConfig(0.5, "erk"))


def test_structures_name_their_units():
    assert [Structure(s).units for s in ("unstructured", "vector", "kernel", "filter")] == [
        "weights",
        "vectors",
        "kernels",
        "channels",
    ]


@pytest.mark.parametrize("structure", ["vector", "kernel"])
def test_cli_prunes_vectors_and_kernels(capsys, structure):
    code = main(["prune", "fmnist-cnn", "--structure", structure, "--sparsity", "0.5", "--eval-limit", "200", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["structure"] == structure and 0.3 < data["achieved_sparsity"] < 0.7


def test_cli_exports_kernels_as_masks_with_whole_kernels_removed(tmp_path, capsys):
    out = tmp_path / "kernels"
    argv = ["export", "fmnist-cnn", "--structure", "kernel", "--criterion", "magnitude", "--sparsity", "0.5"]
    code = main([*argv, "--out", str(out), "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and (out / "masks.pt").exists() and (out / "model.onnx").exists(), data
    masks = torch.load(out / "masks.pt", weights_only=True)
    convs = [k for k in masks.values() if k.dim() == 4]
    assert convs and all(bool((k.flatten(2).all(-1) | ~k.flatten(2).any(-1)).all()) for k in convs)

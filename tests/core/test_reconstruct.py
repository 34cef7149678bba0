"""Least-squares recovery: the solved weights equal torch.linalg.lstsq on the layer's rows, pruned entries stay
zero, and no layer's reconstruction error on the calibration images goes up."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunekit.core.lab import Lab
from prunekit.core.masks import apply_masks_
from prunekit.core.reconstruct import reconstruct_
from prunekit.core.spec import Allocation, PruneSpec
from tests.helpers import TinyCNN, TinyResNet, tiny_loaded


def _pruned(cls, sparsity: float = 0.5):
    loaded = tiny_loaded(cls)
    spec = PruneSpec("l1", "filter", Allocation("local"), sparsity=sparsity)
    pruner = Lab(loaded).pruner(spec)
    masks = pruner.work.keep_masks(pruner.apply_(spec))
    pruned = apply_masks_(copy.deepcopy(loaded.model), masks)
    return loaded, pruned, masks


def test_the_first_solved_layer_is_torch_lstsq_on_its_rows():
    loaded, pruned, masks = _pruned(TinyCNN)
    images = loaded.eval_data().images
    conv2 = pruned.conv2
    x = torch.relu(pruned.conv1(images)).detach()  # conv2's input in the pruned model (conv1 is not solved)
    y = loaded.model.conv2(torch.relu(loaded.model.conv1(images))).detach()  # the dense model's conv2 output
    keep = masks["conv2.weight"].reshape(6, -1)
    rows, cols = keep.any(1).nonzero().flatten(), keep[keep.any(1)][0].nonzero().flatten()
    patches = nn.functional.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 4 * 9).double()
    target = (y.flatten(2).transpose(1, 2).reshape(-1, 6) - conv2.bias.detach()).double()
    want = torch.linalg.lstsq(patches[:, cols], target[:, rows]).solution.T
    solved = reconstruct_(pruned, loaded.model, masks, images)
    assert [s.layer for s in solved][0] == "conv2"
    got = pruned.conv2.weight.detach().reshape(6, -1)[rows][:, cols].double()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [TinyCNN, TinyResNet])
def test_no_error_goes_up_and_pruned_entries_stay_zero(cls):
    loaded, pruned, masks = _pruned(cls, 0.4)
    solved = reconstruct_(pruned, loaded.model, masks, loaded.eval_data().images)
    assert solved and all(s.after <= s.before for s in solved) and any(s.after < s.before for s in solved)
    params = dict(pruned.named_parameters())
    assert all(bool((params[n][~k] == 0).all()) for n, k in masks.items())
    assert all(
        p.data_ptr() != q.data_ptr() for p, q in zip(pruned.parameters(), loaded.model.parameters(), strict=True)
    )

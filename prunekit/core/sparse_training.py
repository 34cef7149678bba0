"""Sparse training: a constant-sparsity mask whose connections move during training (Pruning 101, 3.4).

- SET (Mocanu et al. 2018): every update, drop the ``fraction`` of a layer's active weights with the smallest
  magnitudes and regrow as many at random among its inactive ones.
- RigL (Evci et al. 2020): drop the same way, regrow where the dense gradient's magnitude is largest; the
  fraction decays as ``alpha / 2 * (1 + cos(pi * t / t_end))``.

Both start from a random mask with ERK's per-layer densities and keep each layer's count of active weights
exact. A regrown weight starts at zero; a dropped one is zeroed. Candidates to regrow are the weights that
were inactive before the drop, so a weight dropped now is not regrown in the same update.
"""

from __future__ import annotations

import math

import torch

from prunekit.core.allocate import erk_counts


def erk_random_masks(shapes: dict[str, tuple[int, ...]], sparsity: float, gen: torch.Generator) -> dict:
    """Random keep masks with ERK's per-layer removal counts (exactly ``round(sparsity * total)`` removed)."""
    removed = erk_counts(shapes, round(sparsity * sum(math.prod(s) for s in shapes.values())))
    masks = {}
    for name, shape in shapes.items():
        keep = torch.ones(math.prod(shape), dtype=torch.bool)
        keep[torch.randperm(keep.numel(), generator=gen)[: removed[name]]] = False
        masks[name] = keep.reshape(shape)
    return masks


def cosine_fraction(step: int, end: int, alpha: float) -> float:
    """RigL's update fraction at ``step``: alpha / 2 * (1 + cos(pi * step / end)), 0 from ``end`` on."""
    return 0.0 if step >= end else alpha / 2 * (1 + math.cos(math.pi * step / end))


def _drop(weight: torch.Tensor, keep: torch.Tensor, k: int) -> torch.Tensor:
    """Flat indices of the ``k`` active weights of smallest magnitude."""
    active = keep.flatten().nonzero().flatten()
    order = torch.argsort(weight.detach().flatten()[active].abs(), stable=True)
    return active[order[:k]]


def _update(weight: torch.Tensor, keep: torch.Tensor, fraction: float, grow) -> torch.Tensor:
    k = round(fraction * int(keep.sum()))
    inactive = (~keep).flatten().nonzero().flatten()
    k = min(k, inactive.numel())
    if k == 0:
        return keep.clone()
    dropped, grown = _drop(weight, keep, k), grow(inactive, k)
    new = keep.flatten().clone()
    new[dropped], new[grown] = False, True
    moved = torch.zeros_like(new)
    moved[dropped], moved[grown] = True, True
    with torch.no_grad():  # masked_fill_ honours any memory layout (a channels_last weight is no flat view)
        weight.masked_fill_(moved.reshape(keep.shape), 0.0)
    return new.reshape(keep.shape)


def set_update_(weight: torch.Tensor, keep: torch.Tensor, fraction: float, gen: torch.Generator) -> torch.Tensor:
    """SET on one layer, in place on ``weight``; returns the new keep mask (same count of active weights)."""
    return _update(
        weight, keep, fraction, lambda inactive, k: inactive[torch.randperm(len(inactive), generator=gen)[:k]]
    )


def rigl_update_(weight: torch.Tensor, keep: torch.Tensor, grad: torch.Tensor, fraction: float) -> torch.Tensor:
    """RigL on one layer, in place on ``weight``: regrow the inactive weights of largest |dense gradient|."""

    def grow(inactive: torch.Tensor, k: int) -> torch.Tensor:
        order = torch.argsort(grad.flatten()[inactive].abs(), descending=True, stable=True)
        return inactive[order[:k]]

    return _update(weight, keep, fraction, grow)

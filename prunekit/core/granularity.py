"""Vectors and kernels: the rungs of the granularity ladder between single weights and whole filters.

A convolution's weight is (out, in, k_h, k_w). A *kernel* is one k_h x k_w slice of it (one output and one
input channel); a *vector* is one row of a kernel (1 x k_w). A unit scores the sum of its weights' scores and
goes whole. A Linear layer is read as a 1 x 1 convolution, so its kernels and vectors are single weights: it is
pruned weight by weight at both rungs (our choice; a row segment would need a width no Linear layer has).
"""

from __future__ import annotations

import torch

from prunekit.core.spec import Structure


def unit_dims(structure: Structure, ndim: int) -> tuple[int, ...]:
    """The trailing weight dimensions one unit of ``structure`` spans in a weight of ``ndim`` dimensions."""
    if not structure.is_grouped or ndim <= 2:
        return ()
    return (ndim - 1,) if structure is Structure.VECTOR else tuple(range(2, ndim))


def unit_scores(scores: torch.Tensor, structure: Structure) -> torch.Tensor:
    """Per-weight ``scores`` (out, in, k_h, k_w) -> per-unit sums: vector (out, in, k_h), kernel (out, in);
    a 2-D (Linear) score tensor is returned as it is."""
    dims = unit_dims(structure, scores.dim())
    return scores.sum(dim=dims) if dims else scores


def expand_units(per_unit: torch.Tensor, weight_shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """A per-unit tensor broadcast back over the weights of each unit (a view: nothing is copied)."""
    extra = len(weight_shape) - per_unit.dim()
    return per_unit.reshape(*per_unit.shape, *([1] * extra)).expand(*weight_shape)

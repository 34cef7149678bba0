"""N:M semi-structured sparsity: in every group of M consecutive input weights, keep the N that score best.

Groups run along the input channels (a Linear's in_features; a Conv's in_channels at each kernel position,
the layout sparse tensor cores read), so a layer whose input width is not a multiple of M cannot carry the
pattern and stays dense. The pattern fixes every layer's sparsity at (M - N) / M.
"""

from __future__ import annotations

import torch


def pattern_sparsity(pattern: tuple[int, int]) -> float:
    n, m = pattern
    return (m - n) / m


def group_ranks(scores: torch.Tensor, m: int) -> torch.Tensor | None:
    """Each weight's rank within its group of ``m`` consecutive input weights (0 = lowest score; ties by
    position), the shape of ``scores`` (out, in, ...); None when ``in`` is not a multiple of ``m``."""
    if scores.dim() < 2 or scores.shape[1] % m:
        return None
    inputs_last = scores.movedim(1, -1)  # (out, *kernel, in): groups of m consecutive input channels
    grouped = inputs_last.reshape(*inputs_last.shape[:-1], -1, m)
    order = torch.argsort(grouped, dim=-1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(-1, order, torch.arange(m).expand_as(order).contiguous())
    return ranks.reshape(inputs_last.shape).movedim(-1, 1)

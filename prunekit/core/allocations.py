"""How much to prune where: the named allocations a user chooses between, and the two that need math of
their own (LAMP's scores, ERK's densities).

An allocation is a (scope, normalisation) pair of the engine (``prunekit.core.allocate``): global and local
scopes rank by the criterion's scores, LAMP is a global threshold on LAMP-normalised scores, ERK fixes each
layer's density from its shape alone and lets the criterion choose which weights within the layer go.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.errors import UnknownNameError


@dataclass(frozen=True)
class AllocationMethod:
    """A named way of turning one target sparsity into per-layer sparsities."""

    name: str
    scope: str  # PruneConfig.scope
    normalise: str  # ScoreTable normalisation
    title: str
    description: str  # one line, as README and the page say it
    unstructured_only: bool = False


ALLOCATIONS: dict[str, AllocationMethod] = {
    a.name: a
    for a in (
        AllocationMethod(
            "global",
            "global",
            "none",
            "Global (raw scores)",
            "one threshold on the raw scores of every layer (torch.nn.utils.prune.global_unstructured): "
            "layers with small weights lose most",
        ),
        AllocationMethod(
            "global-mean",
            "global",
            "mean",
            "Global (mean-normalised)",
            "one threshold on scores divided by their layer's mean: every layer competes on relative importance",
        ),
        AllocationMethod(
            "local",
            "local",
            "none",
            "Uniform (local)",
            "every layer loses the same fraction (keep-first-last can spare the first and last layer)",
        ),
        AllocationMethod(
            "lamp",
            "global",
            "lamp",
            "LAMP",
            "Lee et al. 2021: a score's square over the sum of the squares at or above it in its layer, then one "
            "global threshold; every layer keeps its best unit while the target leaves one per layer",
        ),
        AllocationMethod(
            "erk",
            "erk",
            "none",
            "ERK",
            "Evci et al. 2020: layer density proportional to (n_in + n_out + k_h + k_w) / (n_in n_out k_h k_w), "
            "scaled to the target; big layers lose most, small ones may stay dense",
            unstructured_only=True,
        ),
    )
}
DEFAULT_PAIR = ("global", "local")  # the two the Prune page shows unless asked for others


def get_allocation(name: str) -> AllocationMethod:
    if name not in ALLOCATIONS:
        raise UnknownNameError("allocation", name, list(ALLOCATIONS))
    return ALLOCATIONS[name]


def allocation_of(scope: str, normalise: str) -> AllocationMethod | None:
    """The named allocation a (scope, normalisation) pair is, or None (e.g. local on mean-normalised scores)."""
    return next((a for a in ALLOCATIONS.values() if (a.scope, a.normalise) == (scope, normalise)), None)


def lamp_scores(scores: torch.Tensor) -> torch.Tensor:
    """LAMP scores of one layer's (or cluster's) scores, any shape -> the same shape: in ascending order of
    s² (ties by position), s_i² divided by the sum of s_j² over the units j at or after i. Monotone in s, so
    the layer's own ranking is kept; its best unit scores 1. Float64 sums: a suffix sum of 10⁶ squares."""
    flat = scores.reshape(-1).double() ** 2
    order = torch.argsort(flat, stable=True)
    ascending = flat[order]
    suffix = ascending.flip(0).cumsum(0).flip(0)
    out = torch.zeros_like(flat)
    out[order] = torch.where(suffix > 0, ascending / suffix.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return out.float().reshape(scores.shape)


def erk_densities(shapes: dict[str, tuple[int, ...]], density: float) -> dict[str, float]:
    """ERK layer densities for weight ``shapes`` (name -> (n_out, n_in, k_h, k_w) or (n_out, n_in)) whose kept
    weights together are ``density`` of all: density_l = eps * sum(shape_l) / prod(shape_l), a layer that
    would exceed 1 kept dense and eps solved again over the rest, until none does."""
    sizes = {n: _numel(s) for n, s in shapes.items()}
    raw = {n: sum(s) / sizes[n] for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        budget = density * sum(sizes.values()) - sum(sizes[n] for n in dense)
        free = [n for n in shapes if n not in dense]
        weight = sum(raw[n] * sizes[n] for n in free)
        eps = budget / weight if weight > 0 else 0.0
        over = [n for n in free if eps * raw[n] > 1.0]
        if not over:
            return {n: 1.0 if n in dense else max(0.0, eps * raw[n]) for n in shapes}
        dense.update(over)


def erk_counts(shapes: dict[str, tuple[int, ...]], removed: int) -> dict[str, int]:
    """Weights to remove per layer so that exactly ``removed`` go in all, in ERK's proportions (the
    largest-remainder rounding of the removal each layer's ERK density gives)."""
    sizes = {n: _numel(s) for n, s in shapes.items()}
    total = sum(sizes.values())
    if removed <= 0 or total == 0:
        return {n: 0 for n in shapes}
    densities = erk_densities(shapes, 1.0 - removed / total)
    wanted = {n: (1.0 - densities[n]) * sizes[n] for n in shapes}
    counts = {n: min(sizes[n], int(wanted[n])) for n in shapes}
    by_remainder = sorted(shapes, key=lambda n: (-(wanted[n] - int(wanted[n])), n))
    for n in by_remainder:
        if sum(counts.values()) >= removed:
            break
        if counts[n] < sizes[n]:
            counts[n] += 1
    return counts


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out

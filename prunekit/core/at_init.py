"""Pruning at initialisation: a mask chosen at theta_0, before any training (Neural Network Pruning 101, 3.3).

- SNIP (Lee et al. 2019): connection sensitivity |g * w|, g the loss gradient on one batch.
- GraSP (Wang et al. 2020): keep the weights whose removal would most reduce the gradient flow g^T g: the
  GraSP score -w * Hg marks weights to remove highest first, so the keep score is w * Hg (shifted by its global
  minimum to be non-negative, which keeps every order).
- SynFlow (Tanaka et al. 2020): data-free path masses of the all-positive linearised twin, recomputed over
  ``rounds`` rounds of an exponential schedule so that no layer collapses.

All three score prunable layers' weights (Conv2d, Linear) and turn scores into keep masks with the engine's
global allocation, so a mask removes exactly the requested fraction of the scored weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from prunekit.core.allocate import allocate, build_table
from prunekit.core.connectivity import PathProbe
from prunekit.core.importance import Scores
from prunekit.core.masks import apply_masks_
from prunekit.core.profile import PRUNABLE_TYPES
from prunekit.core.spec import PruneConfig, Scope, Structure, check_sparsity

Masks = dict[str, torch.Tensor]  # parameter name ('features.0.weight') -> bool keep tensor of its shape


def _weights(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}


def _twin(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model).eval()
    for p in twin.parameters():
        p.requires_grad_(True)
    return twin


def snip_scores(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Scores:
    """|dL/dw * w| per weight of every prunable layer, L the mean cross-entropy of one batch (N, C, H, W)."""
    twin = _twin(model)
    weights = _weights(twin)
    loss = nn.functional.cross_entropy(twin(images), labels)
    grads = torch.autograd.grad(loss, list(weights.values()))
    return {n: (g * w).detach().abs() for (n, w), g in zip(weights.items(), grads, strict=True)}


def grasp_scores(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Scores:
    """Keep scores ``w * Hg`` (shifted to >= 0), H the loss Hessian and g the gradient on one batch, Hg by
    double backward: the gradient of ``g . stop_gradient(g)`` with respect to the weights, halved."""
    twin = _twin(model)
    weights = _weights(twin)
    params = list(weights.values())
    loss = nn.functional.cross_entropy(twin(images), labels)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    flow = sum((g * g.detach()).sum() for g in grads)
    hg = torch.autograd.grad(flow, params)  # d(g . z)/dw = H z with z = g held fixed
    raw = {n: (w * h).detach() for (n, w), h in zip(weights.items(), hg, strict=True)}
    low = min(float(s.min()) for s in raw.values())
    return {n: s - low for n, s in raw.items()}


def masks_from_scores(scores: Scores, sparsity: float, scope: Scope | str = Scope.GLOBAL) -> Masks:
    """Keep masks removing ``sparsity`` of the scored weights, the lowest scores first (global: one threshold
    across layers; local: each layer the same fraction)."""
    table = build_table(scores, Structure.UNSTRUCTURED, "scores")
    removal = allocate(table, PruneConfig(check_sparsity(sparsity), scope))
    return {f"{s.name}.weight": s.rank >= removal.counts[s.name] for s in table.sets}


def synflow_masks(model: nn.Module, input_shape: tuple[int, ...], sparsity: float, rounds: int = 100) -> Masks:
    """Iterative SynFlow: ``rounds`` rounds, round r keeping (1 - sparsity) ** (r / rounds) of the weights by
    the path masses of the model masked so far (float64 twin, no data)."""
    check_sparsity(sparsity)
    masked = copy.deepcopy(model).eval()
    probe = PathProbe(masked, input_shape, rescale=False, dtype=torch.float64)
    masks: Masks = {}
    for r in range(1, rounds + 1):
        probe.load_(masked)
        masks = masks_from_scores(probe.path_scores(), 1.0 - (1.0 - sparsity) ** (r / rounds))
        apply_masks_(masked, masks)
    return masks

"""Read-outs for the filter-importance views: per-cluster scores, removed sets, criteria agreement,
and captum attribution maps of dense against pruned models."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from prunekit.core.allocate import ScoreTable, allocate
from prunekit.core.spec import PruneConfig
from prunekit.core.structure import OUT


@dataclass(frozen=True)
class FilterView:
    """Rows = channel clusters (named by root layer); scores and removed flags per channel."""

    layers: list[str]
    scores: list[list[float]]
    removed: list[list[bool]]


def filter_view(table: ScoreTable, config: PruneConfig, first_last: frozenset[str]) -> FilterView:
    alloc = allocate(table, config, first_last)
    scores, removed = [], []
    for s in table.sets:
        scores.append(s.sorted_scores[s.rank.long()].tolist())  # channel j's score sits at its rank
        removed.append((s.rank < alloc.counts[s.name]).tolist())
    return FilterView([s.name for s in table.sets], scores, removed)


def removed_set(table: ScoreTable, config: PruneConfig, first_last: frozenset[str]) -> set[tuple[str, int]]:
    view = filter_view(table, config, first_last)
    return {
        (name, j) for name, flags in zip(view.layers, view.removed, strict=True) for j, gone in enumerate(flags) if gone
    }


def removed_outputs(table: ScoreTable, config: PruneConfig, first_last: frozenset[str], layer: str) -> int:
    """Output channels of ``layer`` that a filter ``config`` removes (0 for a layer no scored cluster
    produces for: it is never pruned)."""
    alloc = allocate(table, config, first_last)
    gone = 0
    for unit_set, cluster in zip(table.sets, table.clusters, strict=True):
        removed = (unit_set.rank < alloc.counts[unit_set.name]).nonzero().flatten().tolist()
        for member in cluster.members:
            if member.layer == layer and member.role == OUT:
                gone += sum(len(member.index[j]) for j in removed)
    return gone


def jaccard(a: set, b: set) -> float:
    """|a & b| / |a | b|; 1.0 when both are empty."""
    return len(a & b) / len(a | b) if a | b else 1.0


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation of two equal-length score lists (average ranks for ties)."""
    ra, rb = _ranks(torch.tensor(a, dtype=torch.float64)), _ranks(torch.tensor(b, dtype=torch.float64))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denom if denom else 1.0


def _ranks(x: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(len(x), dtype=x.dtype)
    for v in torch.unique(x):  # ties share their average rank
        tied = x == v
        if int(tied.sum()) > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def agreement(
    tables: dict[str, ScoreTable], config: PruneConfig, first_last: frozenset[str]
) -> tuple[list[list[float]], list[list[float]]]:
    """(overlap of removed sets as Jaccard, mean per-layer Spearman) for every pair of criteria."""
    names = list(tables)
    removed = {n: removed_set(t, config, first_last) for n, t in tables.items()}
    views = {n: filter_view(t, config, first_last) for n, t in tables.items()}
    overlap = [[jaccard(removed[a], removed[b]) for b in names] for a in names]
    corr = []
    for a in names:
        row = []
        for b in names:
            common = [i for i, layer in enumerate(views[a].layers) if layer in views[b].layers]
            vals = [
                spearman(views[a].scores[i], views[b].scores[views[b].layers.index(views[a].layers[i])]) for i in common
            ]
            row.append(sum(vals) / len(vals) if vals else float("nan"))
        corr.append(row)
    return overlap, corr


def attribution_map(model: nn.Module, image: torch.Tensor, target: int, steps: int = 32) -> torch.Tensor:
    """captum Integrated Gradients of ``model`` for one image (C, H, W) towards ``target``: (H, W)."""
    import copy

    from captum.attr import IntegratedGradients

    twin = copy.deepcopy(model).eval()  # gradients need requires_grad; the given model stays untouched
    for p in twin.parameters():
        p.requires_grad_(False)
    x = image.unsqueeze(0).clone().requires_grad_(True)
    attr = IntegratedGradients(twin).attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=steps)
    return attr.detach()[0].sum(0)


def first_conv_kernels(model: nn.Module) -> tuple[str, torch.Tensor] | None:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m.weight.detach().cpu()
    return None

"""Compaction: physically remove the filters an allocation pruned, so the model gets smaller and faster.

The choice of channels is ours (the allocation over our clusters); Torch-Pruning's dependency graph
does the surgery (slicing producers, BatchNorms, consumers, depthwise twins and flatten-expanded
linear inputs consistently). The compacted model is checked against the masked one on a batch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.core.allocate import Removal, ScoreTable
from prunekit.core.structure import OUT, Cluster
from prunekit.errors import CompactionError, InvalidArgumentError, LayerCollapseError

CHECK_IMAGES = 16  # images the compacted model is compared on against the masked one
AGREEMENT = 1e-3  # largest relative output difference a compacted model may have (float error is ~1e-6)


@dataclass
class Compacted:
    """A compacted model and how it was checked. ``max_abs_diff`` is against the masked model's outputs."""

    model: nn.Module
    params_dense: int
    params_masked_nonzero: int
    params_compact: int
    max_abs_diff: float
    max_abs_output: float  # the masked outputs' largest magnitude: what ``max_abs_diff`` is relative to
    channels_removed: int

    @property
    def relative_diff(self) -> float:
        return self.max_abs_diff / max(self.max_abs_output, 1e-12)


def removed_channels(table: ScoreTable, alloc: Removal) -> dict[str, list[int]]:
    """Per cluster root: the root layer's output channels the allocation removes (sorted).

    Raises :class:`LayerCollapseError` when a cluster loses every channel: there is nothing left to
    compute that layer's output, the network is cut (layer collapse), and no compact model exists.
    """
    if not table.structure.is_filter:
        raise InvalidArgumentError(
            f"compaction needs a filter allocation, got structure '{table.structure}': unstructured zeros sit "
            "inside dense kernels, so there is nothing whole to remove"
        )
    out: dict[str, list[int]] = {}
    for unit_set, cluster in zip(table.sets, table.clusters, strict=True):
        k = alloc.counts[unit_set.name]
        if k >= cluster.size:
            raise LayerCollapseError(cluster.root, cluster.size)
        if k:
            gone = (unit_set.rank < k).nonzero().flatten().tolist()
            out[cluster.root] = sorted(_root_index(cluster, j) for j in gone)
    return out


def check_groups(model: nn.Module, table: ScoreTable, alloc: Removal) -> None:
    """Refuse an allocation a grouped convolution cannot follow: removing channels unevenly across its
    groups leaves groups of different widths, which ``nn.Conv2d`` cannot express (depthwise ones, one
    channel per group, drop whole groups and are fine)."""
    modules = dict(model.named_modules())
    for unit_set, cluster in zip(table.sets, table.clusters, strict=True):
        k = alloc.counts[unit_set.name]
        if not k:
            continue
        gone = set((unit_set.rank < k).nonzero().flatten().tolist())
        for member in cluster.members:
            conv = modules[member.layer]
            if isinstance(conv, nn.Conv2d) and 1 < conv.groups < conv.in_channels:
                _check_even(member, conv, gone)


def _check_even(member, conv: nn.Conv2d, gone: set[int]) -> None:
    width = (conv.out_channels if member.role == OUT else conv.in_channels) // conv.groups
    per_group = [0] * conv.groups
    for j in gone:
        for channel in member.index[j]:
            per_group[channel // width] += 1
    if len(set(per_group)) > 1:
        side = "filters" if member.role == OUT else "input channels"
        raise CompactionError(
            f"cannot compact: {member.layer!r} is a grouped convolution ({conv.groups} groups) and this allocation "
            f"removes {per_group} of its {side} per group; every group must keep the same number, so the "
            "masked model is what this configuration gives"
        )


def _root_index(cluster: Cluster, j: int) -> int:
    member = next(m for m in cluster.members if m.layer == cluster.root and m.role == OUT)
    assert len(member.index[j]) == 1, "a root layer owns one output channel per cluster channel"
    return member.index[j][0]


def compact(
    masked: nn.Module, removed: dict[str, list[int]], input_shape: tuple[int, ...], check: torch.Tensor | None = None
) -> Compacted:
    """A new model without the ``removed`` channels of ``masked`` (which is not changed).

    ``check``: images (N, C, H, W) the result is compared on; random ones of ``input_shape`` if None.
    """
    model = _surgery(masked, removed, input_shape)
    x = (
        check
        if check is not None
        else torch.randn(CHECK_IMAGES, *input_shape, generator=torch.Generator().manual_seed(0))
    )
    diff, scale = _agreement(masked, model, x)
    return Compacted(
        model=model,
        params_dense=sum(p.numel() for p in masked.parameters()),
        params_masked_nonzero=sum(int(torch.count_nonzero(p)) for p in masked.parameters()),
        params_compact=sum(p.numel() for p in model.parameters()),
        max_abs_diff=diff,
        max_abs_output=scale,
        channels_removed=sum(len(v) for v in removed.values()),
    )


def _agreement(masked: nn.Module, model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """The largest output difference of ``model`` (the surgery's) from ``masked`` on ``x``, and the largest output;
    raises CompactionError, saying why, where they do not agree within ``AGREEMENT``."""
    with torch.no_grad():
        want = masked.eval()(x.to(_device(masked)))
        try:
            got = model(x.to(_device(model)))
        except RuntimeError as exc:  # a parameter the surgery did not follow (e.g. NFNet's per-filter gains)
            raise CompactionError(
                f"cannot compact: the surgery's model does not run ({exc}), so it is not offered"
            ) from None
    if got.shape != want.shape:
        raise CompactionError(
            f"cannot compact: the surgery's model gives outputs of shape {tuple(got.shape)}, the masked one "
            f"{tuple(want.shape)} (it removed channels the output depends on), so it is not offered"
        )
    diff, scale = float((got - want).abs().max()), float(want.abs().max())
    if diff > AGREEMENT * max(scale, 1e-12):
        raise CompactionError(
            f"cannot compact: the surgery's model differs from the masked one (largest output difference {diff:.3g} "
            f"of {scale:.3g}), so it is not offered"
        )
    return diff, scale


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _surgery(masked: nn.Module, removed: dict[str, list[int]], input_shape: tuple[int, ...]) -> nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(masked).cpu().eval().to(memory_format=torch.contiguous_format)
    for p in model.parameters():  # the dependency graph only follows parameters that need grad
        p.requires_grad_(True)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_shape))
    modules = dict(model.named_modules())
    for root, idxs in removed.items():
        module = modules[root]
        how = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels
        group = graph.get_pruning_group(module, how, idxs=idxs)
        group.prune()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.to(_device(masked)).eval()

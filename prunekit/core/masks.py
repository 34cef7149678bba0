"""Masked weights written straight into a working copy; the base model is never touched.

No forward hooks (they cost up to 80% per forward on VGG16): ``WorkingCopy.apply_`` overwrites the
copy's tensors with ``base`` where kept and +0.0 elsewhere, in place, so repeated sparsity changes reuse
one copy. Pruned entries are always +0.0 (never ``-w * 0``), so zeros can be counted on the bits.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn

from prunekit.core.allocate import Removal, ScoreTable
from prunekit.core.structure import OUT, Cluster
from prunekit.errors import InvalidArgumentError


def _removals(table: ScoreTable, alloc: Removal) -> list[tuple[Cluster, list[int]]]:
    """Filter structure: each cluster and the channels ``alloc`` removes from it."""
    return [
        (cluster, (unit_set.rank < alloc.counts[unit_set.name]).nonzero().flatten().tolist())
        for unit_set, cluster in zip(table.sets, table.clusters, strict=True)
    ]


def filter_masks(
    removals: Iterable[tuple[Cluster, list[int]]], modules: dict[str, nn.Module], layers: Iterable[str]
) -> dict[str, torch.Tensor]:
    """Boolean keep masks by parameter name for ``layers`` when each ``(cluster, channels)`` of ``removals``
    loses those channels: filters and biases of producers, BatchNorm entries, consumers' input kernels."""
    out_keep, in_keep = keep_vectors(removals, modules)
    masks = {}
    for name in layers:
        base, o, i = modules[name], out_keep.get(name), in_keep.get(name)
        if isinstance(base, nn.modules.batchnorm._BatchNorm):
            o = o if o is not None else torch.ones(base.num_features, dtype=torch.bool)
            masks[f"{name}.weight"], masks[f"{name}.bias"] = o.clone(), o.clone()
            continue
        masks[f"{name}.weight"] = weight_keep(base, o, i)
        if base.bias is not None:
            masks[f"{name}.bias"] = o.clone() if o is not None else torch.ones_like(base.bias, dtype=torch.bool).cpu()
    return masks


def keep_vectors(removals: Iterable[tuple[Cluster, list[int]]], modules: dict[str, nn.Module]):
    """Per layer, boolean keep vectors over output and input channels (``{layer: (C,)}`` twice) when each
    ``(cluster, channels)`` of ``removals`` loses those cluster channels."""
    out_keep: dict[str, torch.Tensor] = {}
    in_keep: dict[str, torch.Tensor] = {}
    for cluster, removed in removals:
        for member in cluster.members:
            module = modules[member.layer]
            target = out_keep if member.role == OUT else in_keep
            if member.layer not in target:
                size = _channels(module, member.role)
                target[member.layer] = torch.ones(size, dtype=torch.bool)
            for j in removed:
                target[member.layer][list(member.index[j])] = False
    return out_keep, in_keep


def _channels(module: nn.Module, role: str) -> int:
    if isinstance(module, nn.Conv2d):
        return module.out_channels if role == OUT else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if role == OUT else module.in_features
    return module.num_features  # BatchNorm


def weight_keep(module: nn.Module, out_keep: torch.Tensor | None, in_keep: torch.Tensor | None) -> torch.Tensor:
    """Boolean keep mask the shape of ``module.weight`` from per-channel keep vectors."""
    w = module.weight
    mask = torch.ones(w.shape, dtype=torch.bool)
    if out_keep is not None:
        mask &= out_keep.view(-1, *([1] * (w.dim() - 1)))
    if in_keep is not None and w.dim() > 1:
        groups = getattr(module, "groups", 1)
        cin_g = w.shape[1]
        per_out = in_keep.view(groups, cin_g).repeat_interleave(w.shape[0] // groups, dim=0)  # (out, cin_g)
        mask &= per_out.view(*per_out.shape, *([1] * (w.dim() - 2)))
    return mask


class WorkingCopy:
    """A private copy of ``base`` whose prunable tensors are rewritten for each allocation."""

    def __init__(self, base: nn.Module, table: ScoreTable) -> None:
        self.base = base
        self.table = table
        self.model = copy.deepcopy(base).eval()
        self._base = dict(base.named_modules())
        self._work = dict(self.model.named_modules())
        self._base_params = dict(base.named_parameters())
        self._work_params = dict(self.model.named_parameters())
        self.touched = sorted({layer for s in table.sets for layer in s.layers})
        # layers whose dense weight holds a -0.0: the only ones whose zeros are not counted on the bits
        self.signed_zeros = frozenset(
            n for n, m in self._base.items() if _has_negative_zero(getattr(m, "weight", None))
        )

    @torch.no_grad()
    def apply_(self, alloc: Removal) -> nn.Module:
        """Write ``base * keep`` for every layer the table covers; returns the working model."""
        if self.table.structure.is_filter:
            self._apply_filters(alloc)
        else:
            for s in self.table.sets:
                base_w, work_w = self._base[s.name].weight, self._work[s.name].weight
                keep = s.rank.to(base_w.device) >= alloc.counts[s.name]
                torch.where(keep, base_w, torch.zeros((), dtype=base_w.dtype, device=base_w.device), out=work_w)
        return self.model

    @torch.no_grad()
    def reset_(self) -> nn.Module:
        """Write the dense weights back into every tensor the table covers."""
        for name in self.touched:
            for pname, p in self._work[name].named_parameters(recurse=False):
                p.copy_(getattr(self._base[name], pname))
        return self.model

    def keep_masks(self, alloc: Removal) -> dict[str, torch.Tensor]:
        """Boolean keep masks of ``alloc`` by parameter name (``'features.0.weight'``), one per pruned
        tensor (filter structure: also biases and BatchNorm entries); True = kept. Shapes = the parameters'."""
        if not self.table.structure.is_filter:
            return {f"{s.name}.weight": (s.rank >= alloc.counts[s.name]).cpu() for s in self.table.sets}
        return filter_masks(_removals(self.table, alloc), self._base, self.touched)

    def _apply_filters(self, alloc: Removal) -> None:
        for name, keep in self.keep_masks(alloc).items():
            base = self._base_params[name]
            torch.where(keep.to(base.device), base, torch.zeros((), dtype=base.dtype), out=self._work_params[name])


def _has_negative_zero(w: torch.Tensor | None) -> bool:
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        return False
    return bool((torch.signbit(w) & (w == 0)).any())


_SAME_SIZE_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def zero_count(w: torch.Tensor, signed_zeros: bool = True) -> int:
    """Entries of ``w`` equal to zero. With ``signed_zeros=False`` (the caller knows ``w`` holds no -0.0,
    as a working copy's weights do unless their dense weights had one) the bits are counted: 4x faster
    than a float comparison on a 2-core CPU (bench/slider.py), and the same count."""
    if signed_zeros or not w.is_floating_point() or w.element_size() not in _SAME_SIZE_INT:
        return w.numel() - int(torch.count_nonzero(w))
    return w.numel() - int(torch.count_nonzero(w.detach().view(_SAME_SIZE_INT[w.element_size()])))


@torch.no_grad()
def apply_masks_(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Zero ``model``'s parameters where ``masks`` (parameter name -> bool keep tensor) say so, in place."""
    params = dict(model.named_parameters())
    unknown = sorted(set(masks) - set(params))
    if unknown:
        raise InvalidArgumentError(f"mask for {unknown[0]!r} names no parameter of this model")
    for name, keep in masks.items():
        p = params[name]
        if tuple(keep.shape) != tuple(p.shape):
            raise InvalidArgumentError(
                f"mask for {name!r} has shape {tuple(keep.shape)}, the parameter {tuple(p.shape)}"
            )
        p.masked_fill_(~keep.to(device=p.device, dtype=torch.bool), 0)  # +0.0, never -0.0
    return model

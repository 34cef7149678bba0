"""The oracle: the true importance of every channel group, measured, not estimated.

Every criterion estimates how much the loss grows when a filter goes. The oracle measures it: for each channel
of each coupled cluster (what filter pruning removes together: the producing filters and biases, their
BatchNorm entries, the consumers' input kernels), the mean cross-entropy on N images with that channel alone
removed, less the dense model's.

:func:`plain_oracle` does it the obvious way (mask, run the whole network, one forward per channel) and is the
reference. :func:`oracle` gets the same numbers faster: removing channel j makes the producers' outputs at j
exactly zero (a zeroed filter and bias give 0, and a BatchNorm with zero scale and shift maps anything to 0),
and a zero input contributes nothing to a consumer whose kernel for it is zeroed, so zeroing those outputs
with a forward hook is the same removal. The network before the cluster's first producer runs once per
image batch (the dense prefix, ``core.prefix``), and the suffix runs several removals at once: the batch is
repeated, and block k of it has channel j_k zeroed. The two agree to float rounding (different batch sizes
take different kernels); tests check them against each other.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from prunekit.core import prefix
from prunekit.core.allocate import ScoreTable
from prunekit.core.analysis import spearman
from prunekit.core.masks import apply_masks_, filter_masks
from prunekit.core.profile import Profile
from prunekit.core.structure import Cluster, Member
from prunekit.errors import InvalidArgumentError, StoppedError

FORWARD_IMAGES = 256  # images per suffix forward: the batch times the removals run together
SLICE_MACS = 4e10  # a slice of a group (one worker job) removes at most about this much work: ~1 s of a core
Progress = Callable[[int, int], bool]  # (work done, work in all; a channel on one batch is one unit) -> go on?


@dataclass(frozen=True)
class Oracle:
    """Per cluster (named by its root layer, in ``clusters`` order) and channel: the mean cross-entropy's
    increase on ``images`` images when that channel alone is removed; ``dense_loss`` the dense model's."""

    images: int
    dense_loss: float
    groups: list[str]
    increases: list[list[float]]
    seconds: float
    method: str  # "prefix" (the fast path) or "plain" (one whole forward per channel)

    def flat(self) -> list[tuple[str, int, float]]:
        """Every channel as (group, channel index, loss increase)."""
        return [(g, j, v) for g, row in zip(self.groups, self.increases, strict=True) for j, v in enumerate(row)]

    @property
    def channels(self) -> int:
        return sum(len(row) for row in self.increases)

    @classmethod
    def merged(cls, parts: Sequence[Oracle]) -> Oracle:
        """One oracle from parts on the same images (slices of groups, in order): a group's slices are joined."""
        if not parts or len({(p.images, p.dense_loss) for p in parts}) > 1:
            raise InvalidArgumentError("oracle parts to merge must exist and share their images and dense loss")
        rows: dict[str, list[float]] = {}
        for part in parts:
            for group, row in zip(part.groups, part.increases, strict=True):
                rows.setdefault(group, []).extend(row)
        seconds = sum(p.seconds for p in parts)
        return cls(parts[0].images, parts[0].dense_loss, list(rows), list(rows.values()), seconds, parts[0].method)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Oracle:
        return cls(**d)


def channel_slice(cluster: Cluster, start: int, stop: int) -> Cluster:
    """Cluster channels [start, stop) as a cluster of their own (each member's indices for them unchanged)."""
    if not 0 <= start < stop <= cluster.size:
        raise InvalidArgumentError(f"channels [{start}, {stop}) are not within {cluster.root!r}'s {cluster.size}")
    members = tuple(dataclasses.replace(m, index=m.index[start:stop]) for m in cluster.members)
    return dataclasses.replace(cluster, size=stop - start, members=members)


def slices(clusters: Sequence[Cluster], images: int, profile: Profile) -> list[tuple[str, int, int]]:
    """(group, start, stop) slices of every group: the jobs a service shares out. A slice runs the network before
    its group once (the prefix) and the rest once per channel, so it takes enough channels that the prefix is
    at most a fifth of its work, and more while the whole stays under :data:`SLICE_MACS` (MACs from ``profile``,
    the layers in forward order; a group's prefix is every layer before its first member)."""
    order = {layer.name: i for i, layer in enumerate(profile.layers)}
    total = max(1, profile.total_macs)
    out = []
    for c in clusters:
        first = min((order[m.layer] for m in c.members if m.layer in order), default=0)
        before = sum(layer.macs for layer in profile.layers[:first])
        after = max(1, total - before)
        per_slice = max(4 * before // after, int(SLICE_MACS // max(1, images * after)), 1)
        out += [(c.root, a, min(a + per_slice, c.size)) for a in range(0, c.size, per_slice)]
    return out


def check_images(images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.dim() < 2 or len(images) == 0 or len(images) != len(labels):
        raise InvalidArgumentError(
            f"the oracle needs images (N, ...) and N labels, N > 0; got {tuple(images.shape)} and {len(labels)} labels"
        )


@torch.inference_mode()
def dense_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = FORWARD_IMAGES) -> float:
    """Mean cross-entropy of ``model`` on ``images`` (N, ...) with ``labels`` (N,)."""
    total = 0.0
    for start in range(0, len(images), batch):
        logits = model(images[start : start + batch]).float()
        total += float(F.cross_entropy(logits, labels[start : start + batch], reduction="sum").double())
    return total / len(images)


@torch.inference_mode()
def plain_oracle(
    model: nn.Module,
    clusters: Sequence[Cluster],
    images: torch.Tensor,
    labels: torch.Tensor,
    progress: Progress | None = None,
) -> Oracle:
    """The reference: for every channel, a copy of ``model`` with that channel's masks applied, run whole."""
    check_images(images, labels)
    t0, model = time.perf_counter(), copy.deepcopy(model).eval()  # the caller's model keeps its mode
    base = dense_loss(model, images, labels)
    modules = dict(model.named_modules())
    total, done, increases = sum(c.size for c in clusters), 0, []
    for cluster in clusters:
        row = []
        for j in range(cluster.size):
            pruned = apply_masks_(copy.deepcopy(model), filter_masks([(cluster, [j])], modules, cluster.layers()))
            row.append(dense_loss(pruned, images, labels) - base)
            done += 1
            _report(progress, done, total)  # one unit per channel here
        increases.append(row)
    return Oracle(len(images), base, [c.root for c in clusters], increases, time.perf_counter() - t0, "plain")


@torch.inference_mode()
def oracle(
    model: nn.Module,
    clusters: Sequence[Cluster],
    images: torch.Tensor,
    labels: torch.Tensor,
    progress: Progress | None = None,
    forward_images: int = FORWARD_IMAGES,
    dense: float | None = None,
    private: bool = False,
) -> Oracle:
    """Every channel's loss increase, fast (module docstring): ``images`` (N, ...) and ``labels`` (N,) are the
    images it is measured on; ``progress(done, total)`` is told after each image batch of a cluster and stops
    the run (:class:`StoppedError`) by returning False. ``model`` is not changed: a copy is hooked, unless
    ``private`` says the caller owns it (hooks come off at the end). ``dense``: the dense loss on these images,
    when the caller knows it (a worker measuring a model's groups slice by slice)."""
    check_images(images, labels)
    t0 = time.perf_counter()
    if not private:
        model, images = _private(model, images)
    base = dense_loss(model, images, labels) if dense is None else dense
    traced = prefix.trace(model)
    batch = max(1, min(len(images), forward_images // 4))
    starts = range(0, len(images), batch)
    total, done, increases = sum(c.size for c in clusters) * len(starts), 0, []
    for cluster in clusters:
        split = _split(traced, cluster, model, images[:batch])
        removals = max(1, forward_images // batch) if split.batched else 1
        sums = torch.zeros(cluster.size, dtype=torch.float64)
        for start in starts:
            x, y = images[start : start + batch], labels[start : start + batch]
            frontier = split.prefix(x)
            for first in range(0, cluster.size, removals):
                channels = list(range(first, min(first + removals, cluster.size)))
                sums[channels] += _removed_sums(model, split, cluster, channels, frontier, y)
            done += cluster.size
            _report(progress, done, total)
        increases.append((sums / len(images) - base).tolist())
    return Oracle(len(images), base, [c.root for c in clusters], increases, time.perf_counter() - t0, "prefix")


def _private(model: nn.Module, images: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    """A copy of ``model`` to hook (the caller's is never touched), channels_last where it has convolutions
    (1.5x faster on fmnist-vgg, one thread), and the images in the same layout."""
    model = copy.deepcopy(model).eval()
    if images.dim() == 4 and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    return model, images


def _report(progress: Progress | None, done: int, total: int) -> None:
    if progress is not None and progress(done, total) is False:
        raise StoppedError(f"the oracle was stopped after {done} of {total} channels")


@dataclass(frozen=True)
class _Split:
    """How one cluster's removals run: ``prefix(images) -> frontier`` once per batch, ``suffix(*frontier)`` per
    removal block; ``batched``: every frontier value is a per-image tensor, so blocks can be stacked;
    ``zeroed``: per frontier value, the producer (OUT member) whose output it is, to zero there, or None."""

    prefix: Callable[[torch.Tensor], tuple]
    suffix: Callable[..., torch.Tensor]
    batched: bool
    zeroed: tuple[Member | None, ...] = ()


def _split(traced, cluster: Cluster, model: nn.Module, sample: torch.Tensor) -> _Split:
    """The cut after the cluster's producers (they run once per batch, dense, and their outputs are zeroed
    per removal where the rest of the network reads them), or the whole model with hooks."""
    whole = _Split(lambda x: (x,), model, True)
    producers = {m.layer: m for m in cluster.producers()}
    found = prefix.cut(traced, producers, model, after=True) if traced is not None else None
    if found is None:
        return whole
    probe = found.prefix(sample)
    if not all(isinstance(t, torch.Tensor) and t.dim() > 1 and len(t) == len(sample) for t in probe):
        return whole
    return _Split(found.prefix, found.suffix, True, tuple(producers.get(name) for name in found.modules))


def _removed_sums(
    model: nn.Module, split: _Split, cluster: Cluster, channels: list[int], frontier: tuple, labels: torch.Tensor
) -> torch.Tensor:
    """The summed cross-entropy of each removal in ``channels`` on one batch (k removals: k stacked copies)."""
    k, n = len(channels), len(labels)
    stacked = tuple(
        _zeroed(t.repeat(k, *([1] * (t.dim() - 1))), member.index, channels, n)
        if member
        else t.repeat(k, *([1] * (t.dim() - 1)))
        for t, member in zip(frontier, split.zeroed or (None,) * len(frontier), strict=True)
    )
    in_suffix = [m for m in cluster.producers() if m not in split.zeroed]
    handles = [
        model.get_submodule(member.layer).register_forward_hook(_hook(member.index, channels, n))
        for member in in_suffix
    ]
    try:
        logits = split.suffix(*stacked).float()
    finally:
        for h in handles:
            h.remove()
    losses = F.cross_entropy(logits, labels.repeat(k), reduction="none").double()
    return losses.view(k, n).sum(1)


def _hook(index: tuple[tuple[int, ...], ...], channels: list[int], n: int):
    """A forward hook that applies :func:`_zeroed` to a producer's output."""
    return lambda module, inputs, output: _zeroed(output, index, channels, n)


def _zeroed(output: torch.Tensor, index: tuple[tuple[int, ...], ...], channels: list[int], n: int) -> torch.Tensor:
    """``output`` (k blocks of n images) with block b's channels of cluster channel ``channels[b]`` set to +0.0,
    as a masked filter's output is."""
    keep = torch.ones(len(channels), output.shape[1], dtype=torch.bool)
    for b, j in enumerate(channels):
        keep[b, list(index[j])] = False
    keep = keep.repeat_interleave(n, dim=0).view(len(channels) * n, output.shape[1], *([1] * (output.dim() - 2)))
    return torch.where(keep, output, torch.zeros((), dtype=output.dtype))


@dataclass(frozen=True)
class Agreement:
    """How one criterion's filter scores rank channels against the oracle's loss increases (Spearman's rho
    with average ranks for ties; higher score and larger increase both mean keep). ``overall``: every scored
    channel of the model, the criterion's raw scores compared across layers; ``per_group``: within each cluster
    (None where a cluster has one channel, or either side is constant there)."""

    criterion: str
    overall: float | None
    per_group: dict[str, float | None]
    channels: int

    @property
    def median_group(self) -> float | None:
        values = sorted(v for v in self.per_group.values() if v is not None)
        return values[len(values) // 2] if values else None


@dataclass(frozen=True)
class GroupScores:
    """One criterion's score of every channel of every group it scored (a filter table, raw scores), and the
    calibration images its data-driven scores read (0: none)."""

    criterion: str
    scores: dict[str, list[float]]
    images: int = 0

    @classmethod
    def of(cls, table: ScoreTable, images: int = 0) -> GroupScores:
        channel = {
            c.root: s.sorted_scores[s.rank.long()].tolist() for s, c in zip(table.sets, table.clusters, strict=True)
        }
        return cls(table.criterion, channel, images)  # channel j's score sits at its rank

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> GroupScores:
        return cls(**d)


def paired(truth: Oracle, table: ScoreTable | GroupScores) -> dict[str, tuple[list[float], list[float]]]:
    """Per group that both know: (the criterion's score of each channel, its measured loss increase)."""
    scores = table if isinstance(table, GroupScores) else GroupScores.of(table)
    by_root = dict(zip(truth.groups, truth.increases, strict=True))
    return {root: (s, by_root[root]) for root, s in scores.scores.items() if root in by_root}


def agreement(truth: Oracle, table: ScoreTable | GroupScores) -> Agreement:
    """``table`` (one criterion's filter scores, raw) against ``truth``; groups the criterion could not score
    are left out."""
    criterion = table.criterion
    pairs = paired(truth, table)
    scores = [v for s, _ in pairs.values() for v in s]
    increases = [v for _, t in pairs.values() for v in t]
    per_group = {root: rank_correlation(s, t) for root, (s, t) in pairs.items()}
    return Agreement(criterion, rank_correlation(scores, increases), per_group, len(scores))


def rank_correlation(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rho of two equal-length lists (ties share their average rank); None when it is undefined
    (fewer than two values, or one side constant)."""
    if len(a) != len(b):
        raise InvalidArgumentError(f"rank correlation needs lists of one length, got {len(a)} and {len(b)}")
    if len(a) < 2 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    return spearman(list(a), list(b))

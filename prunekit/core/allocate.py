"""From scores to per-layer removal counts: sort once, then every sparsity is a lookup.

A *unit set* is one layer (unstructured: its weights are the units) or one cluster of coupled
channels (filter: its channels are the units). ``ScoreTable`` holds each set's sorted scores and the
rank of every unit; ``allocate`` turns a :class:`PruneConfig` into removal counts per set. Global scope
finds one threshold by bisection over the float bit patterns (exact, O(sets x log n) per call).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from prunekit.core.allocations import erk_counts, lamp_scores
from prunekit.core.importance import FILTER, Scores
from prunekit.core.nm import group_ranks, pattern_of, pattern_sparsity
from prunekit.core.structure import Cluster
from prunekit.errors import InvalidArgumentError, UnknownNameError

SCOPES = ("global", "local", "erk")  # erk: per-layer densities from the layers' shapes (allocations.py)
COMPARED_SCOPES = ("global", "local")  # the two extremes the pages set side by side
NORMALISATIONS = {
    # Global scope compares scores across layers; these say how each set's scores are made comparable.
    "none": "raw scores (as torch.nn.utils.prune.global_unstructured): layers with small weights go first",
    "mean": "each layer's scores divided by their mean: every layer competes on relative importance",
    "lamp": "LAMP (Lee et al. 2021): a score's square over the sum of the squares at or above it in its layer",
}


def check_sparsity(value: float, what: str = "sparsity") -> float:
    """Validate a sparsity: the fraction removed, in [0, 1)."""
    if not isinstance(value, (int, float)) or value != value or not 0.0 <= float(value) < 1.0:
        raise InvalidArgumentError(f"{what} must be a number in [0, 1), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class UnitSet:
    """One layer's weights or one cluster's channels, scores sorted ascending."""

    name: str  # layer name, or the cluster's root layer name
    sorted_scores: torch.Tensor  # (n,) float32 ascending
    rank: torch.Tensor  # int32, the shape of the scored tensor: position of each unit in sorted order
    layers: frozenset[str]  # layers whose weights this set touches

    @property
    def size(self) -> int:
        return int(self.sorted_scores.numel())


@dataclass(frozen=True)
class ScoreTable:
    """Sorted scores of one (model, criterion, structure, normalisation). Shared: never mutated."""

    criterion: str
    structure: str
    normalise: str
    sets: tuple[UnitSet, ...]
    clusters: tuple[Cluster, ...] = ()  # filter structure only, aligned with ``sets``
    unscored: tuple[str, ...] = ()  # clusters the criterion could not score, layers an N:M pattern does not fit (dense)
    pattern: tuple[int, int] | None = None  # N:M: each set's scores are its weights' ranks within their groups

    def by_name(self) -> dict[str, UnitSet]:
        return {s.name: s for s in self.sets}


def _normalised(t: torch.Tensor, how: str) -> torch.Tensor:
    if how == "mean":
        mean = t.mean()
        return t / mean if mean > 0 else t
    if how == "lamp":
        return lamp_scores(t)
    return t


def _unit_set(name: str, scores: torch.Tensor, layers: frozenset[str]) -> UnitSet:
    flat = scores.reshape(-1).float()
    order = torch.argsort(flat, stable=True)  # ties broken by position: deterministic
    rank = torch.empty(flat.numel(), dtype=torch.int32)
    rank[order] = torch.arange(flat.numel(), dtype=torch.int32)
    return UnitSet(name, flat[order].contiguous(), rank.reshape(scores.shape), layers)


def build_table(scores: Scores, structure: str, criterion: str, normalise: str = "none", clusters=()) -> ScoreTable:
    """Sort ``scores`` once. Unstructured: one set per layer. Filter: one set per cluster, a channel's
    score being the sum over the cluster's producing layers (each normalised first)."""
    if normalise not in NORMALISATIONS:
        raise UnknownNameError("normalisation", normalise, list(NORMALISATIONS))
    if pattern_of(structure) is not None:
        return _pattern_table(scores, structure, criterion, normalise)
    if structure != FILTER:
        sets = tuple(_unit_set(n, _normalised(s, normalise), frozenset([n])) for n, s in scores.items())
        return ScoreTable(criterion, structure, normalise, sets)
    sets, kept, unscored = [], [], []
    for cluster in clusters:
        # LAMP ranks a cluster's channels on their summed raw scores: its squares are of the channel's score.
        channel = _cluster_scores(cluster, scores, "none" if normalise == "lamp" else normalise)
        channel = lamp_scores(channel) if normalise == "lamp" and channel is not None else channel
        if channel is None:
            unscored.append(cluster.root)
            continue
        sets.append(_unit_set(cluster.root, channel, frozenset(cluster.layers())))
        kept.append(cluster)
    return ScoreTable(criterion, structure, normalise, tuple(sets), tuple(kept), tuple(unscored))


def _pattern_table(scores: Scores, structure: str, criterion: str, normalise: str) -> ScoreTable:
    """N:M: a layer's units ordered by their rank within their group, so that removing the ``(M - N) / M``
    lowest-ranked units of the layer removes exactly the M - N worst of every group (normalising a layer's
    scores changes no rank within it, so ``normalise`` is only a label here)."""
    pattern = pattern_of(structure)
    sets, unfit = [], []
    for name, layer_scores in scores.items():
        ranks = group_ranks(layer_scores, pattern[1])
        if ranks is None:
            unfit.append(name)
            continue
        sets.append(_unit_set(name, ranks.float(), frozenset([name])))
    return ScoreTable(criterion, structure, normalise, tuple(sets), unscored=tuple(unfit), pattern=pattern)


def _cluster_scores(cluster: Cluster, scores: Scores, normalise: str) -> torch.Tensor | None:
    total, found = torch.zeros(cluster.size), False
    for member in cluster.producers():
        if member.layer not in scores:
            continue
        found = True
        s = _normalised(scores[member.layer], normalise)
        for j, idx in enumerate(member.index):
            total[j] += s[list(idx)].sum()
    return total if found else None


@dataclass(frozen=True)
class PruneConfig:
    """How much to prune and where. ``sparsity`` is the fraction of units removed, in [0, 1)."""

    sparsity: float
    scope: str = "global"
    keep_first_last: bool = False
    overrides: Mapping[str, float] = field(default_factory=dict)  # set name -> its own sparsity

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        if self.scope not in SCOPES:
            raise UnknownNameError("scope", self.scope, list(SCOPES))
        for name, value in self.overrides.items():
            check_sparsity(value, f"override for {name!r}")

    def key(self) -> tuple:
        return (round(self.sparsity, 6), self.scope, self.keep_first_last, tuple(sorted(self.overrides.items())))


@dataclass(frozen=True)
class Allocation:
    """Units removed per set (the lowest-ranked ``counts[name]`` of each)."""

    counts: dict[str, int]
    sizes: dict[str, int]
    dense: frozenset[str]  # sets kept dense by keep_first_last
    threshold: float | None  # global scope: the score at or below which units go

    @property
    def removed(self) -> int:
        return sum(self.counts.values())

    @property
    def total(self) -> int:
        return sum(self.sizes.values())


def allocate(table: ScoreTable, config: PruneConfig, first_last: frozenset[str] = frozenset()) -> Allocation:
    """Removal counts per set for ``config``. ``first_last`` names the first and last prunable layers."""
    unknown = set(config.overrides) - set(table.by_name())
    if unknown:
        raise UnknownNameError("layer", sorted(unknown)[0], [s.name for s in table.sets])
    dense = frozenset(s.name for s in table.sets if config.keep_first_last and s.layers & first_last)
    if table.pattern is not None:
        return _pattern_allocation(table, config, dense)
    counts = {s.name: 0 for s in table.sets}
    for s in table.sets:
        if s.name in config.overrides and s.name not in dense:
            counts[s.name] = round(config.overrides[s.name] * s.size)
    pool = [s for s in table.sets if s.name not in dense and s.name not in config.overrides]
    if config.scope == "erk" and table.structure == FILTER:
        raise InvalidArgumentError("ERK sets per-layer weight densities: it allocates unstructured pruning only")
    pooled, threshold = _POOL_COUNTS[config.scope](pool, config.sparsity)
    counts.update(pooled)
    return Allocation(counts, {s.name: s.size for s in table.sets}, dense, threshold)


def _pattern_allocation(table: ScoreTable, config: PruneConfig, dense: frozenset[str]) -> Allocation:
    """N:M: M - N of every group of M in each layer the pattern fits (the pattern, not a slider, sets it)."""
    fraction = pattern_sparsity(table.pattern)
    if config.sparsity not in (0.0, fraction) or config.overrides:
        raise InvalidArgumentError(
            f"the {table.structure} pattern removes {table.pattern[1] - table.pattern[0]} of every "
            f"{table.pattern[1]} weights: its sparsity is {fraction} (or 0 for the dense model), with no "
            f"per-layer overrides; got sparsity {config.sparsity}"
        )
    removing = config.sparsity > 0
    counts = {s.name: round(fraction * s.size) if removing and s.name not in dense else 0 for s in table.sets}
    return Allocation(counts, {s.name: s.size for s in table.sets}, dense, None)


def _local_counts(pool: list[UnitSet], sparsity: float) -> tuple[dict[str, int], None]:
    return {s.name: round(sparsity * s.size) for s in pool}, None


def _global_counts(pool: list[UnitSet], sparsity: float) -> tuple[dict[str, int], float | None]:
    return global_counts(pool, round(sparsity * sum(s.size for s in pool)))


def _erk_counts(pool: list[UnitSet], sparsity: float) -> tuple[dict[str, int], None]:
    """ERK's removal per layer (from each weight's shape, which ``rank`` has), the criterion's lowest go."""
    removed = round(sparsity * sum(s.size for s in pool))
    return erk_counts({s.name: tuple(s.rank.shape) for s in pool}, removed), None


# How each scope turns the pool's target sparsity into removal counts (and a global threshold).
_POOL_COUNTS = {"local": _local_counts, "global": _global_counts, "erk": _erk_counts}


def _bits(x: float) -> int:
    return int(torch.tensor(x, dtype=torch.float32).view(torch.int32))


def _float(bits: int) -> float:
    return float(torch.tensor(bits, dtype=torch.int32).view(torch.float32))


def global_counts(sets: list[UnitSet], k: int) -> tuple[dict[str, int], float | None]:
    """Remove exactly the ``k`` lowest-scoring units across ``sets`` (ties: earlier sets first).

    Scores are non-negative, so their float32 bit patterns are ordered like the values: bisect on them.
    """
    if k <= 0 or not sets:
        return {s.name: 0 for s in sets}, None
    assert all(float(s.sorted_scores[0]) >= 0 for s in sets if s.size), "scores must be non-negative"

    def at_most(t: torch.Tensor) -> int:
        return sum(int(torch.searchsorted(s.sorted_scores, t, right=True)) for s in sets)

    lo, hi = 0, max(_bits(float(s.sorted_scores[-1])) for s in sets if s.size)
    while lo < hi:  # smallest bit pattern whose value has >= k scores at or below it
        mid = (lo + hi) // 2
        if at_most(torch.tensor(_float(mid))) >= k:
            hi = mid
        else:
            lo = mid + 1
    t = torch.tensor(_float(lo))
    below = {s.name: int(torch.searchsorted(s.sorted_scores, t, right=False)) for s in sets}
    ties_left = k - sum(below.values())
    counts = dict(below)
    for s in sets:  # hand out the units tied at the threshold in set order
        if ties_left <= 0:
            break
        tied = int(torch.searchsorted(s.sorted_scores, t, right=True)) - below[s.name]
        take = min(tied, ties_left)
        counts[s.name] += take
        ties_left -= take
    assert sum(counts.values()) == k
    return counts, float(t)

"""The pruning spec, and the one place every name of it is defined.

A :class:`PruneSpec` says what to prune, how and how much: a criterion, a :class:`Structure`, an
:class:`Allocation` (a :class:`Scope` and the scores' :class:`Normalisation`), a sparsity, whether the first
and last layers stay dense, and per-layer overrides. It is frozen and hashable, so the same spec from two
sessions is the same key everywhere (score tables, results, jobs, the result store, share links).

The structures, scopes, normalisations and named allocations are ``StrEnum`` members: they compare equal to
(and hash like) the strings users type, links carry and the store already holds, so parsing a name is
``Structure("filter")`` and no other module spells one.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from prunekit.errors import InvalidArgumentError, UnknownNameError


def check_sparsity(value: float, what: str = "sparsity") -> float:
    """Validate a sparsity: the fraction removed, in [0, 1)."""
    if not isinstance(value, (int, float)) or value != value or not 0.0 <= float(value) < 1.0:
        raise InvalidArgumentError(f"{what} must be a number in [0, 1), got {value!r}")
    return float(value)


ROUND_TO_CHOICES = (1, 4, 8, 16)  # what the app and the CLI offer (1: no rounding); the engine takes any


def check_round_to(value: object) -> int:
    """A channel multiple: a positive int (bools and floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InvalidArgumentError(f"round_to must be a positive whole number of channels, got {value!r}")
    return int(value)


def _parse(kind: type[StrEnum], what: str, value: object) -> StrEnum:
    try:
        return kind(value)
    except ValueError:
        raise UnknownNameError(what, str(value), [m.value for m in kind]) from None


class Structure(StrEnum):
    """What one unit of pruning is."""

    UNSTRUCTURED = "unstructured"  # every weight
    FILTER = "filter"  # every output channel, coupled channels together
    VECTOR = "vector"  # one row (1 x k_w) of a kernel: per output channel, input channel and kernel row
    KERNEL = "kernel"  # one k_h x k_w kernel: per output and input channel pair
    NM_2_4 = "2:4"  # N:M: the N best of every M consecutive input weights kept
    NM_4_8 = "4:8"

    @classmethod
    def parse(cls, value: object) -> Structure:
        """The structure named ``value``; ``UnknownNameError`` lists the names when it is none."""
        return _parse(cls, "structure", value)

    @property
    def pattern(self) -> tuple[int, int] | None:
        """(N, M) of an N:M structure, None for any other."""
        return _PATTERNS.get(self)

    @property
    def is_filter(self) -> bool:
        return self is Structure.FILTER

    @property
    def is_grouped(self) -> bool:
        """Vectors and kernels: weights removed in whole slices of a kernel, each slice scored by its sum."""
        return self in _GROUPED

    @property
    def label(self) -> str:
        """How a page names it: weights, vectors, kernels, filters, or the pattern."""
        return _LABELS.get(self, f"{self.value} pattern")

    @property
    def units(self) -> str:
        """What its sparsity is a fraction of: channels for filters, vectors, kernels, weights otherwise."""
        return {Structure.FILTER: "channels", Structure.VECTOR: "vectors", Structure.KERNEL: "kernels"}.get(
            self, "weights"
        )


_PATTERNS = {Structure.NM_2_4: (2, 4), Structure.NM_4_8: (4, 8)}
_GROUPED = frozenset({Structure.VECTOR, Structure.KERNEL})
_LABELS = {
    Structure.UNSTRUCTURED: "weights",
    Structure.VECTOR: "vectors",
    Structure.KERNEL: "kernels",
    Structure.FILTER: "filters",
}
STRUCTURES = tuple(Structure)
# Structures with a sparsity slider (an N:M pattern fixes its sparsity), finest to coarsest.
KNOB_STRUCTURES = (Structure.UNSTRUCTURED, Structure.VECTOR, Structure.KERNEL, Structure.FILTER)
# The granularity ladder the Prune page sets side by side: weights, vectors, kernels, N:M, filters.
LADDER = (Structure.UNSTRUCTURED, Structure.VECTOR, Structure.KERNEL, Structure.NM_2_4, Structure.FILTER)


class Scope(StrEnum):
    """Where one target sparsity is spent."""

    GLOBAL = "global"  # one threshold across layers
    LOCAL = "local"  # every layer the same fraction
    ERK = "erk"  # per-layer densities from the layers' shapes

    @classmethod
    def parse(cls, value: object) -> Scope:
        return _parse(cls, "scope", value)


SCOPES = tuple(Scope)
COMPARED_SCOPES = (Scope.GLOBAL, Scope.LOCAL)  # the two extremes the pages set side by side


class Normalisation(StrEnum):
    """How each layer's scores are made comparable before a global threshold."""

    NONE = "none"
    MEAN = "mean"
    LAMP = "lamp"

    @classmethod
    def parse(cls, value: object) -> Normalisation:
        return _parse(cls, "normalisation", value)

    @property
    def description(self) -> str:
        return _NORMALISATION_TEXT[self]


_NORMALISATION_TEXT = {
    Normalisation.NONE: "raw scores (as torch.nn.utils.prune.global_unstructured): layers with small weights go first",
    Normalisation.MEAN: "each layer's scores divided by their mean: every layer competes on relative importance",
    Normalisation.LAMP: "LAMP (Lee et al. 2021): a score's square over the sum of the squares at or above it in its "
    "layer",
}
NORMALISATIONS = tuple(Normalisation)


@dataclass(frozen=True)
class Allocation:
    """How a target sparsity becomes per-layer sparsities: a scope over (normalised) scores."""

    scope: Scope = Scope.GLOBAL
    normalise: Normalisation = Normalisation.NONE

    def __post_init__(self) -> None:
        object.__setattr__(self, "scope", Scope.parse(self.scope))
        object.__setattr__(self, "normalise", Normalisation.parse(self.normalise))

    @classmethod
    def named(cls, name: str) -> Allocation:
        """The allocation registered as ``name`` (global, global-mean, local, lamp, erk)."""
        return get_allocation(name).allocation

    @property
    def method(self) -> AllocationMethod | None:
        """The named allocation this pair is, or None (e.g. local on mean-normalised scores)."""
        return next((a for a in ALLOCATIONS.values() if a.allocation == self), None)


@dataclass(frozen=True)
class AllocationMethod:
    """A named allocation a user chooses between, with the words the pages and docs say it in."""

    name: str
    allocation: Allocation
    title: str
    description: str  # one line, as README and the page say it
    unstructured_only: bool = False

    @property
    def scope(self) -> Scope:
        return self.allocation.scope

    @property
    def normalise(self) -> Normalisation:
        return self.allocation.normalise

    def fits(self, structure: Structure) -> bool:
        return structure.pattern is None and not (self.unstructured_only and structure.is_filter)


ALLOCATIONS: dict[str, AllocationMethod] = {
    a.name: a
    for a in (
        AllocationMethod(
            "global",
            Allocation(Scope.GLOBAL),
            "Global (raw scores)",
            "one threshold on the raw scores of every layer (torch.nn.utils.prune.global_unstructured): "
            "layers with small weights lose most",
        ),
        AllocationMethod(
            "global-mean",
            Allocation(Scope.GLOBAL, Normalisation.MEAN),
            "Global (mean-normalised)",
            "one threshold on scores divided by their layer's mean: every layer competes on relative importance",
        ),
        AllocationMethod(
            "local",
            Allocation(Scope.LOCAL),
            "Uniform (local)",
            "every layer loses the same fraction (keep-first-last can spare the first and last layer)",
        ),
        AllocationMethod(
            "lamp",
            Allocation(Scope.GLOBAL, Normalisation.LAMP),
            "LAMP",
            "Lee et al. 2021: a score's square over the sum of the squares at or above it in its layer, then one "
            "global threshold; every layer keeps its best unit while the target leaves one per layer",
        ),
        AllocationMethod(
            "erk",
            Allocation(Scope.ERK),
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
    """The named allocation a (scope, normalisation) pair is, or None."""
    return Allocation(scope, normalise).method


Overrides = tuple[tuple[str, float], ...]  # (set name, its own sparsity), sorted by name


def _overrides(value: Mapping[str, float] | Overrides) -> Overrides:
    items = value.items() if isinstance(value, Mapping) else value
    return tuple(sorted((str(name), check_sparsity(s, f"override for {name!r}")) for name, s in items))


@dataclass(frozen=True)
class PruneConfig:
    """The part of a spec that allocation reads, once the scores are sorted: how much (``sparsity``, the
    fraction of units removed in [0, 1)) and where (``scope``, first and last layers, per-set overrides)."""

    sparsity: float
    scope: Scope = Scope.GLOBAL
    keep_first_last: bool = False
    overrides: Mapping[str, float] = dataclasses.field(default_factory=dict)  # set name -> its own sparsity
    round_to: int = 1  # filter structure: every cluster keeps a multiple of this many channels (or all of them)

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        object.__setattr__(self, "scope", Scope.parse(self.scope))
        object.__setattr__(self, "round_to", check_round_to(self.round_to))
        for name, value in self.overrides.items():
            check_sparsity(value, f"override for {name!r}")

    def key(self) -> tuple:
        overrides = tuple(sorted(self.overrides.items()))
        return (round(self.sparsity, 6), self.scope, self.keep_first_last, overrides, self.round_to)


@dataclass(frozen=True)
class PruneSpec:
    """One pruning configuration. Strings are accepted for ``structure`` and (a registered name, or an
    :class:`Allocation`) for ``allocation``, and ``overrides`` may be a mapping: all are stored typed.

    ``criterion`` is a name of ``prunekit.CRITERIA`` (checked where it is scored); ``sparsity`` is the
    fraction of units removed in [0, 1); ``overrides`` give named layers (or filter clusters) their own.
    """

    criterion: str = "magnitude"
    structure: Structure = Structure.UNSTRUCTURED
    allocation: Allocation = Allocation()
    sparsity: float = 0.0
    keep_first_last: bool = False
    overrides: Overrides = ()
    round_to: int = 1  # filter structure: channel counts kept to a multiple of this (1: any count)

    def __post_init__(self) -> None:
        object.__setattr__(self, "structure", Structure.parse(self.structure))
        object.__setattr__(self, "round_to", check_round_to(self.round_to))
        if self.round_to > 1 and not self.structure.is_filter:
            raise InvalidArgumentError(
                f"round_to={self.round_to} keeps channel counts to multiples, so it needs the filter structure; "
                f"the {self.structure.value} structure removes no whole channels"
            )
        allocation = self.allocation
        if isinstance(allocation, str):
            allocation = Allocation.named(allocation)
        elif isinstance(allocation, AllocationMethod):
            allocation = allocation.allocation
        if not isinstance(allocation, Allocation):
            raise InvalidArgumentError(f"allocation must be a name or an Allocation, got {allocation!r}")
        object.__setattr__(self, "allocation", allocation)
        object.__setattr__(self, "sparsity", check_sparsity(self.sparsity))
        object.__setattr__(self, "overrides", _overrides(self.overrides))

    @property
    def scope(self) -> Scope:
        return self.allocation.scope

    @property
    def normalise(self) -> Normalisation:
        return self.allocation.normalise

    @property
    def table_key(self) -> tuple[str, Structure, Normalisation]:
        """What the scores are sorted by: one score table per (criterion, structure, normalisation)."""
        return self.criterion, self.structure, self.normalise

    def config(self) -> PruneConfig:
        """What allocation reads of this spec (the table it allocates over is :attr:`table_key`'s)."""
        return PruneConfig(self.sparsity, self.scope, self.keep_first_last, dict(self.overrides), self.round_to)

    def at(self, sparsity: float) -> PruneSpec:
        """This spec at another sparsity."""
        return dataclasses.replace(self, sparsity=sparsity)

    def with_scope(self, scope: Scope | str) -> PruneSpec:
        """This spec with another scope, the same normalisation."""
        return dataclasses.replace(self, allocation=Allocation(scope, self.normalise))

    def with_allocation(self, allocation: Allocation | str) -> PruneSpec:
        return dataclasses.replace(self, allocation=allocation)

    def key(self) -> tuple:
        rounded = (self.round_to,) if self.round_to > 1 else ()  # specs without rounding keep the keys they had
        return (*self.table_key, round(self.sparsity, 6), self.scope, self.keep_first_last, self.overrides, *rounded)

"""A budget solver: per-layer sparsities, each on a sensitivity scan's grid, that meet a budget (remaining
MACs or parameters, or an accuracy drop) with the smallest predicted accuracy drop.

The prediction is additive: each layer's drop as the scan measured it with every other layer dense, summed.
Whether that holds is what measuring the plan shows. The choice is a multiple-choice knapsack (one option per
layer), solved exactly by dynamic programming over Pareto frontiers of (cost, predicted drop): a Lagrangian
search would only reach plans on the convex hull of that frontier and can leave budget unused, while the
frontiers of a CNN's few dozen layers times a grid of about ten stay small enough to keep whole.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from prunekit.core.profile import Profile
from prunekit.core.sensitivity import SensitivityRow
from prunekit.errors import InvalidArgumentError

TARGETS = {
    "macs": "remaining multiply-adds at most this fraction of the dense model's",
    "params": "remaining weights of the prunable layers at most this fraction of theirs",
    "drop": "predicted top-1 drop at most this (0.01 = one point), with the fewest weights left",
}
FRONTIER_CAP = 50_000  # states kept per layer; past it the thinnest-spread are dropped (never over budget)


@dataclass(frozen=True)
class Target:
    """What the plan must meet: ``kind`` in TARGETS, ``value`` a fraction."""

    kind: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Target:
        """``'macs=0.5'``, ``'params=0.3'`` or ``'drop=0.01'``."""
        kind, _, value = text.partition("=")
        if kind not in TARGETS:
            raise InvalidArgumentError(f"a target is one of {', '.join(k + '=X' for k in TARGETS)}, got {text!r}")
        try:
            number = float(value)
        except ValueError:
            raise InvalidArgumentError(f"the target {kind!r} needs a number, got {value!r}") from None
        if not 0.0 <= number <= 1.0 or number != number:
            raise InvalidArgumentError(f"the target {kind}={value} must be a fraction in [0, 1]")
        return cls(kind, number)

    def text(self) -> str:
        return f"{self.kind}={self.value:g}"

    def met_by(self, macs_ratio: float, params_ratio: float, drop: float) -> bool:
        """Whether measured ratios (or a drop) meet this target."""
        return {"macs": macs_ratio, "params": params_ratio, "drop": drop}[self.kind] <= self.value + 1e-12


@dataclass(frozen=True)
class Option:
    """One layer at one sparsity: what it leaves (``cost``, in the target's unit) and its predicted drop."""

    sparsity: float
    cost: int
    drop: float


@dataclass(frozen=True)
class Plan:
    """The solver's choice: per layer its sparsity, and what it predicts and leaves."""

    target: Target
    sparsities: dict[str, float]
    predicted_drop: float
    macs_ratio: float  # remaining / dense, over the profile's multiply-adds
    params_ratio: float  # remaining / dense, over every parameter


@dataclass(frozen=True)
class LayerCost:
    """What one prunable layer holds: its weights and the multiply-adds they do per image."""

    weights: int
    macs: int

    def left(self, sparsity: float, unit: str) -> int:
        """Weights (``unit='params'``) or MACs a ``sparsity`` leaves, rounded as the engine rounds them."""
        kept = self.weights - round(sparsity * self.weights)
        return kept if unit == "params" else round(self.macs * kept / self.weights)


@dataclass(frozen=True)
class Costs:
    """The model as the budget counts it: each prunable layer, and the totals the ratios are over."""

    layers: dict[str, LayerCost]
    total_macs: int
    total_params: int

    @classmethod
    def of(cls, profile: Profile, model: nn.Module) -> Costs:
        """From a model's profile and its prunable layers' weights."""
        modules = dict(model.named_modules())
        layers = {x.name: LayerCost(modules[x.name].weight.numel(), x.macs) for x in profile.layers if x.prunable}
        return cls(layers, profile.total_macs, profile.total_params)

    def total(self, unit: str) -> int:
        return self.total_macs if unit == "macs" else self.total_params

    def ratios(self, sparsities: Mapping[str, float]) -> tuple[float, float]:
        """(remaining MACs, remaining parameters) over the dense model's, for ``sparsities`` per layer."""
        macs = sum(c.left(sparsities.get(n, 0.0), "macs") for n, c in self.layers.items())
        removed = sum(c.weights - c.left(sparsities.get(n, 0.0), "params") for n, c in self.layers.items())
        return macs / self.total_macs, (self.total_params - removed) / self.total_params


def options(costs: Costs, rows: Sequence[SensitivityRow], unit: str) -> dict[str, list[Option]]:
    """Per scanned layer its options: dense (no drop) and each scanned sparsity, costing what it leaves in
    ``unit`` ('macs' or 'params'). A negative drop (pruning one layer scored higher: noise, mostly, on an
    estimate's subset) counts as none, so the solver never prunes for it."""
    out: dict[str, list[Option]] = {}
    for row in rows:
        if row.layer not in costs.layers:
            raise InvalidArgumentError(f"the scan's layer {row.layer!r} is not a prunable layer of this model")
        layer = costs.layers[row.layer]
        out.setdefault(row.layer, [Option(0.0, layer.left(0.0, unit), 0.0)])
        out[row.layer].append(Option(row.sparsity, layer.left(row.sparsity, unit), max(0.0, row.drop)))
    return out


def frontier(choices: Mapping[str, Sequence[Option]], budget: float | None = None) -> list[tuple[int, float, tuple]]:
    """Every plan not beaten on both cost and drop, as (cost, drop, options in layer order), cheapest first;
    ``budget``: only plans whose cost can still end within it."""
    names = list(choices)
    floor = [sum(min(o.cost for o in choices[n]) for n in names[i + 1 :]) for i in range(len(names))]
    states: list[tuple[int, float, tuple]] = [(0, 0.0, ())]
    for i, name in enumerate(names):
        grown = [
            (cost + o.cost, drop + o.drop, picked + (o,))
            for cost, drop, picked in states
            for o in choices[name]
            if budget is None or cost + o.cost + floor[i] <= budget
        ]
        states = _pareto(grown)
    return states


def _pareto(states: list[tuple[int, float, tuple]]) -> list[tuple[int, float, tuple]]:
    """Cheapest first, keeping a state only when it predicts less drop than every cheaper one."""
    kept, best = [], float("inf")
    for state in sorted(states, key=lambda s: (s[0], s[1])):
        if state[1] < best:
            kept.append(state)
            best = state[1]
    if len(kept) > FRONTIER_CAP:  # thin evenly; every kept state is still a real, in-budget plan
        step = len(kept) / FRONTIER_CAP
        kept = [kept[int(k * step)] for k in range(FRONTIER_CAP)]
    return kept


def solve(
    choices: Mapping[str, Sequence[Option]], budget: float | None = None, max_drop: float | None = None
) -> dict[str, Option] | None:
    """One option per layer: with a cost ``budget``, the smallest predicted drop whose cost is within it;
    with ``max_drop``, the least cost whose predicted drop is within that. None when nothing on the grid fits."""
    if (budget is None) == (max_drop is None):
        raise InvalidArgumentError("solve takes a cost budget or a drop budget, exactly one")
    if max_drop is not None:
        fitting = [s for s in frontier(choices) if s[1] <= max_drop + 1e-12]
        best = min(fitting, key=lambda s: (s[0], s[1]), default=None)
    else:
        fitting = [s for s in frontier(choices, budget) if s[0] <= budget]
        best = min(fitting, key=lambda s: (s[1], s[0]), default=None)
    return None if best is None else dict(zip(choices, best[2], strict=True))


def plan(costs: Costs, rows: Sequence[SensitivityRow], target: Target) -> Plan:
    """Solve ``target`` over a sensitivity scan's ``rows`` (unstructured: one row per layer and sparsity).
    A MACs or parameter budget is over the whole model: what the scanned layers may keep is the budget
    less what everything else (unscanned layers; biases and norms, for parameters) keeps."""
    unit = "macs" if target.kind == "macs" else "params"
    choices = options(costs, rows, unit)
    scanned = sum(costs.layers[name].left(0.0, unit) for name in choices)
    if target.kind == "drop":
        picked = solve(choices, max_drop=target.value)
    else:
        picked = solve(choices, budget=target.value * costs.total(unit) - (costs.total(unit) - scanned))
    if picked is None:
        raise InvalidArgumentError(
            f"no plan on the scan's grid meets {target.text()}: even the sparsest layers it scanned leave too "
            "much; scan higher sparsities"
        )
    sparsities = {name: o.sparsity for name, o in picked.items()}
    return Plan(target, sparsities, sum(o.drop for o in picked.values()), *costs.ratios(sparsities))

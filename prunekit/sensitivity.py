"""Per-layer sensitivity: prune one layer (or one channel cluster) at a time, everything else dense."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prunekit.allocate import PruneConfig, check_sparsity
from prunekit.evaluate import accuracy
from prunekit.lab import Lab


@dataclass(frozen=True)
class SensitivityConfig:
    criterion: str = "magnitude"
    structure: str = "unstructured"
    sparsities: tuple[float, ...] = (0.3, 0.6, 0.9)
    eval_limit: int | None = None  # score the first N eval images only (an estimate)

    def __post_init__(self) -> None:
        for s in self.sparsities:
            check_sparsity(s)


@dataclass(frozen=True)
class SensitivityRow:
    layer: str  # the pruned layer (filter structure: the cluster's root layer)
    sparsity: float
    accuracy: float
    dense_accuracy: float
    images: int
    estimate: bool

    @property
    def drop(self) -> float:
        return self.dense_accuracy - self.accuracy


def sensitivity_scan(lab: Lab, config: SensitivityConfig) -> Iterator[SensitivityRow]:
    """Yield one row per (layer, sparsity) as soon as it is measured, layer by layer."""
    data = lab.loaded.eval_data()
    dense = accuracy(lab.loaded.model, data, limit=config.eval_limit)
    pruner = lab.pruner(config.criterion, config.structure)
    for unit_set in pruner.table.sets:
        for s in config.sparsities:
            pruner.apply_(PruneConfig(0.0, "local", overrides={unit_set.name: s}))
            acc = accuracy(pruner.model, data, limit=config.eval_limit)
            yield SensitivityRow(unit_set.name, s, acc.top1, dense.top1, acc.n, acc.is_estimate)

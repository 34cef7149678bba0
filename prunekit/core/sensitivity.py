"""Per-layer sensitivity: prune one layer (or one channel cluster) at a time, everything else dense.

The scan's points are evaluation jobs (``prunekit.service.fanout.sensitivity_jobs``), so the app, the CLI and
a Ray cluster measure them the same way; a row is one measured point."""

from __future__ import annotations

from dataclasses import dataclass


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

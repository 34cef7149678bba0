"""What one pruning configuration measures: :class:`PruneResult` (the whole model) and its :class:`LayerResult`
rows, every figure counted on the pruned tensors themselves (by :class:`prunekit.core.lab.Pruner`)."""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

from prunekit.core.connectivity import Connectivity
from prunekit.core.spec import Normalisation, Scope, Structure


@dataclass(frozen=True)
class LayerResult:
    name: str
    type: str
    params: int  # weight parameters of the layer
    macs: int
    sparsity: float  # fraction of the layer's weights that are zero
    effective_sparsity: float | None  # fraction zero or on no surviving path; None: probe not available
    remaining_macs: int


@dataclass
class PruneResult:
    """Everything the UI and CLI show for one configuration; fractions in [0, 1]."""

    model: str
    criterion: str
    structure: Structure
    scope: Scope
    normalise: Normalisation
    sparsity: float  # requested
    achieved_sparsity: float  # zeros among prunable weights, measured
    layers: list[LayerResult]
    total_params: int
    nonzero_params: int
    total_macs: int
    remaining_macs: int
    effective_sparsity: float | None  # None when the path probe cannot represent the model (see probe_note)
    collapse: bool | None
    collapsed_layers: list[str]  # layers with every weight pruned
    disconnected_layers: list[str]  # layers with no weight on a surviving path
    units_removed: int  # weights (unstructured) or channels (filter) removed
    units_total: int
    dense_layers: list[str] = field(default_factory=list)
    unscored: list[str] = field(default_factory=list)
    pretrained: bool = True
    accuracy: dict | None = None
    probe_note: str | None = None  # why effective sparsity and collapse are not reported, if they are not
    round_to: int = 1  # channel counts kept to multiples of this (filter structure)

    @property
    def paths_pending(self) -> bool:
        """The path test was left out of this result (to be measured apart) and no reason is given."""
        return self.effective_sparsity is None and self.probe_note is None

    @property
    def compression_ratio(self) -> float:
        return self.total_params / max(self.nonzero_params, 1)

    @property
    def macs_ratio(self) -> float:
        """The fraction of the dense model's MACs left."""
        return self.remaining_macs / self.total_macs

    @property
    def params_ratio(self) -> float:
        """The fraction of the dense model's parameters left non-zero."""
        return self.nonzero_params / self.total_params

    @property
    def theoretical_speedup(self) -> float:
        return self.total_macs / self.remaining_macs if self.remaining_macs else float("inf")

    def layer_sparsities(self) -> dict[str, float]:
        return {layer.name: layer.sparsity for layer in self.layers}

    def with_paths(self, conn: Connectivity) -> PruneResult:
        """This result with the path test's figures (measured apart, e.g. by an evaluation worker)."""
        layers = [
            dataclasses.replace(r, effective_sparsity=conn.effective_layer_sparsity.get(r.name, r.sparsity))
            for r in self.layers
        ]
        return dataclasses.replace(
            self,
            layers=layers,
            effective_sparsity=conn.effective_sparsity,
            collapse=conn.collapsed,
            disconnected_layers=conn.disconnected_layers,
        )

    def to_json(self) -> dict:
        out = asdict(self)
        out["compression_ratio"] = self.compression_ratio
        out["theoretical_speedup"] = self.theoretical_speedup if self.remaining_macs else None
        return out

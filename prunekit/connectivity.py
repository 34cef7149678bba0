"""Layer collapse and effective sparsity, by the all-ones path test (Tanaka et al. 2020; Vysogorets & Kempe 2021).

A *linearised twin* of the model: every weight replaced by its absolute value, every additive
constant dropped, and activations, gates, pooling and normalisations made path-exact (see
``linearise``). Fed an all-ones image, its output is zero iff every input-output path is cut; the
gradient of the summed output with respect to a weight is the total mass of the paths through it,
so a non-zero weight with zero gradient is disconnected: pruned in effect though not in fact. A
model with an operation the twin cannot represent raises :class:`ProbeUnsupportedError` when its
probe is built, and no number is reported for it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.linearise import Linearised
from prunekit.profile import PRUNABLE_TYPES


def _is_shift(name: str) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return leaf in ("bias", "running_mean")


class PathProbe:
    """A float64, all-positive linearised twin of a model; ``load_`` copies (masked) weights in.

    Raises :class:`ProbeUnsupportedError` at construction when the model has an operation the twin
    cannot represent exactly.
    """

    def __init__(
        self, model: nn.Module, input_shape: tuple[int, ...], rescale: bool = True, validate: bool = True
    ) -> None:
        self.rescale = rescale
        self.net = copy.deepcopy(model).cpu().double().eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.input_shape = tuple(input_shape)
        self.prunable = {n: m for n, m in self.net.named_modules() if isinstance(m, PRUNABLE_TYPES)}
        self._tensors = dict(self.net.named_parameters()) | dict(self.net.named_buffers())
        self.load_(model)
        if validate:  # fail now, at construction, on an operation the twin cannot represent
            self.output_mass()

    @torch.no_grad()
    def load_(self, model: nn.Module) -> None:
        """Copy ``model``'s parameters in as absolute values, shifts zeroed (in place on the twin)."""
        source = dict(model.named_parameters()) | dict(model.named_buffers())
        for name, t in self._tensors.items():
            if not t.is_floating_point():
                continue
            if _is_shift(name):
                t.zero_()
            else:
                t.copy_(source[name].detach().abs())

    def _forward(self) -> torch.Tensor:
        x = torch.ones((1, *self.input_shape), dtype=torch.float64)
        with Linearised(list(self._tensors.values()), self.rescale):
            return self.net(x)

    def output_mass(self) -> float:
        """Sum of the all-ones output: 0.0 exactly when no input-output path survives."""
        with torch.no_grad():
            return float(self._forward().sum())

    def path_scores(self) -> dict[str, torch.Tensor]:
        """Per prunable layer: ``|w| * d(sum output)/d|w|``, the mass of paths through each weight."""
        return self.trace()[1]

    def trace(self) -> tuple[float, dict[str, torch.Tensor]]:
        """One forward and backward: the output mass and the per-layer path scores (see ``path_scores``)."""
        weights = [m.weight for m in self.prunable.values()]
        for w in weights:
            w.requires_grad_(True)
        try:
            out = self._forward().sum()
            grads = torch.autograd.grad(out, weights, allow_unused=True) if out.requires_grad else [None] * len(weights)
        finally:
            for w in weights:
                w.requires_grad_(False)
        scores = {  # a layer with no gradient never runs in forward (an auxiliary head): not on any path.
            name: g.mul_(w.detach())  # in place: the gradients are ours, and a giant's twin is 5 GB of them
            for (name, w), g in zip(((n, m.weight) for n, m in self.prunable.items()), grads, strict=True)
            if g is not None
        }
        return float(out.detach()), scores


@dataclass(frozen=True)
class Connectivity:
    """What survives a mask: collapse, effective sparsity, and per-layer disconnected fractions."""

    collapsed: bool  # no input-output path survives
    effective_sparsity: float  # fraction of prunable weights that are zero OR on no surviving path
    effective_layer_sparsity: dict[str, float]
    disconnected_layers: list[str]  # layers none of whose weights lie on a surviving path


def connectivity(probe: PathProbe, model: nn.Module) -> Connectivity:
    """Run the path test on ``model`` (a masked working copy) through ``probe``."""
    probe.load_(model)
    mass, scores = probe.trace()
    alive_total, total, per_layer = 0, 0, {}
    for name, s in scores.items():
        alive = int((s > 0).sum())
        per_layer[name] = (s.numel() - alive) / s.numel()  # a count over a count, like the weight sparsity
        alive_total += alive
        total += s.numel()
    return Connectivity(
        collapsed=mass == 0.0,
        effective_sparsity=(total - alive_total) / total if total else 0.0,
        effective_layer_sparsity=per_layer,
        disconnected_layers=[n for n, v in per_layer.items() if v >= 1.0],
    )

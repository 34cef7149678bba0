"""Importance criteria: a registry of scorers. Higher score = keep.

Each criterion declares the structures it supports (a weight scorer serves unstructured and N:M, a filter
scorer every output channel) and whether it needs data. Data-driven criteria read a fixed calibration
batch (``ScoreContext.calib``); scoring always works on a private copy, never on the given model.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.core.connectivity import PathProbe
from prunekit.core.profile import PRUNABLE_TYPES
from prunekit.core.spec import STRUCTURES, Structure
from prunekit.errors import InvalidArgumentError, ProbeUnsupportedError, UnknownNameError

Scores = dict[str, torch.Tensor]  # module name -> per-weight (weight shape) or per-channel (out,) scores


@dataclass(frozen=True)
class ScoreContext:
    """What a criterion may read. ``model`` is shared: criteria copy it before any gradient work."""

    model: nn.Module
    input_shape: tuple[int, ...]
    calib: tuple[torch.Tensor, torch.Tensor] | None = None  # images (N, C, H, W), labels (N,)
    seed: int = 0
    batch_size: int = 64
    layers: frozenset[str] | None = None  # the prunable layers that run in forward (None: every Conv/Linear)

    def prunable(self) -> dict[str, nn.Module]:
        """Conv/Linear modules to score; heads unused at inference (GoogLeNet's auxiliaries) left out."""
        return {
            n: m
            for n, m in self.model.named_modules()
            if isinstance(m, PRUNABLE_TYPES) and (self.layers is None or n in self.layers)
        }

    def batches(self):
        if self.calib is None:
            raise InvalidArgumentError("this criterion needs calibration data, and none was given")
        images, labels = self.calib
        for start in range(0, len(labels), self.batch_size):
            yield images[start : start + self.batch_size], labels[start : start + self.batch_size]


@dataclass(frozen=True)
class Criterion:
    """A named scorer. ``weight`` gives per-weight scores; ``filter`` per-output-channel scores."""

    name: str
    title: str
    description: str
    needs_data: bool
    weight: Callable[[ScoreContext], Scores] | None = None
    filter: Callable[[ScoreContext], Scores] | None = None

    @property
    def structures(self) -> tuple[Structure, ...]:
        return tuple(s for s in STRUCTURES if self._scorer(s) is not None)

    def supports(self, structure: Structure | str) -> bool:
        return Structure.parse(structure) in self.structures

    def _scorer(self, structure: Structure) -> Callable[[ScoreContext], Scores] | None:
        return self.filter if structure.is_filter else self.weight

    def score(self, ctx: ScoreContext, structure: Structure | str) -> Scores:
        """Scores for ``structure`` (per weight for unstructured and N:M); raises if it is not supported."""
        structure = Structure.parse(structure)
        fn = self._scorer(structure)
        if fn is None:
            supported = ", ".join(self.structures)
            raise InvalidArgumentError(
                f"criterion {self.name!r} does not support structure '{structure}' (supports: {supported})"
            )
        scores = fn(ctx)
        bad = [n for n, s in scores.items() if not torch.isfinite(s).all()]
        assert not bad, f"{self.name} produced non-finite scores in {bad}"
        return {n: s.detach().float().cpu() for n, s in scores.items()}


CRITERIA: dict[str, Criterion] = {}


def register(criterion: Criterion) -> Criterion:
    CRITERIA[criterion.name] = criterion
    return criterion


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise UnknownNameError("criterion", name, list(CRITERIA))
    return CRITERIA[name]


def per_filter(scores: Scores) -> Scores:
    """Sum per-weight scores over everything but the output channel: (out, ...) -> (out,)."""
    return {n: s.reshape(s.shape[0], -1).sum(1) for n, s in scores.items()}


def _grad_copy(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model).eval()
    for p in twin.parameters():
        p.requires_grad_(True)
    return twin


# --- data-free ---------------------------------------------------------------------------------


def _magnitude(ctx: ScoreContext) -> Scores:
    return {n: m.weight.detach().abs() for n, m in ctx.prunable().items()}


def _filter_norm(p: int) -> Callable[[ScoreContext], Scores]:
    def fn(ctx: ScoreContext) -> Scores:
        return {n: m.weight.detach().reshape(m.weight.shape[0], -1).norm(p=p, dim=1) for n, m in ctx.prunable().items()}

    return fn


def _random_weights(ctx: ScoreContext) -> Scores:
    gen = torch.Generator().manual_seed(ctx.seed)
    return {n: torch.rand(m.weight.shape, generator=gen) for n, m in ctx.prunable().items()}


def _random_filters(ctx: ScoreContext) -> Scores:
    gen = torch.Generator().manual_seed(ctx.seed)
    return {n: torch.rand(m.weight.shape[0], generator=gen) for n, m in ctx.prunable().items()}


def _bn_scale(ctx: ScoreContext) -> Scores:
    scores = {n: m.weight.detach().abs() for n, m in ctx.model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    if not scores:
        raise InvalidArgumentError("criterion 'bn-scale' needs BatchNorm layers, and this model has none")
    return scores


def _synflow(ctx: ScoreContext) -> Scores:
    """Path masses of the unscaled linearised twin (Tanaka et al. 2020): the definition, not a rescaled copy."""
    try:
        scores = PathProbe(ctx.model, ctx.input_shape, rescale=False, dtype=torch.float64).path_scores()
    except ProbeUnsupportedError as exc:
        raise InvalidArgumentError(
            f"criterion 'synflow' needs the path probe: {exc.operation} is not representable"
        ) from None
    if not all(bool(torch.isfinite(s).all()) for s in scores.values()):
        raise InvalidArgumentError("criterion 'synflow': path masses overflow float64 on this model (too deep)")
    return scores


def _fpgm(ctx: ScoreContext) -> Scores:
    """He et al. 2019: a filter's summed Euclidean distance to its layer's other filters. The filter nearest
    the geometric median has the smallest sum: the others can stand in for it, so it scores lowest."""
    out = {}
    for n, m in ctx.prunable().items():
        flat = m.weight.detach().reshape(m.weight.shape[0], -1).double()
        out[n] = torch.cdist(flat[None], flat[None])[0].sum(1)
    return out


# --- data-driven -------------------------------------------------------------------------------


def _taylor_weights(ctx: ScoreContext) -> Scores:
    """|w * g| with g the loss gradient accumulated over the calibration set (Molchanov et al. 2019)."""
    twin = _grad_copy(ctx.model)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    for images, labels in ctx.batches():
        loss_fn(twin(images), labels).backward()
    return {n: (m.weight * m.weight.grad).abs() for n, m in twin.named_modules() if isinstance(m, PRUNABLE_TYPES)}


def _obd_weights(ctx: ScoreContext) -> Scores:
    """Optimal Brain Damage (LeCun et al. 1989): 1/2 * H_ii * w_i², the loss increase a second-order expansion
    predicts for removing w_i alone. H_ii is estimated as Torch-Pruning's Hessian importance does: the mean
    over calibration images of the squared per-image loss gradient (the empirical Fisher's diagonal), one
    backward pass per image."""
    twin = _grad_copy(ctx.model)
    modules = {n: m for n, m in twin.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    fisher = {n: torch.zeros_like(m.weight) for n, m in modules.items()}
    loss_fn, count = nn.CrossEntropyLoss(), 0
    for images, labels in ctx.batches():
        for image, label in zip(images, labels, strict=True):
            twin.zero_grad(set_to_none=False)
            loss_fn(twin(image[None]), label[None]).backward()
            for n, m in modules.items():
                if m.weight.grad is not None:
                    fisher[n] += m.weight.grad.detach() ** 2
            count += 1
    return {n: 0.5 * (fisher[n] / count) * m.weight.detach() ** 2 for n, m in modules.items()}


def _taylor_filters(ctx: ScoreContext) -> Scores:
    """Mean over images of |sum over positions of activation x gradient| per output channel (Molchanov 2017)."""
    twin = _grad_copy(ctx.model)
    modules = {n: m for n, m in twin.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    totals: Scores = {}
    outputs: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_module, _inputs, output):
            output.retain_grad()
            outputs[name] = output

        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in modules.items()]
    try:
        loss_fn = nn.CrossEntropyLoss(reduction="sum")
        count = 0
        for images, labels in ctx.batches():
            outputs.clear()
            loss_fn(twin(images), labels).backward()
            for name, out in outputs.items():
                contrib = (out * out.grad).reshape(out.shape[0], out.shape[1], -1).sum(2).abs().sum(0)
                totals[name] = totals.get(name, 0) + contrib.detach()
            count += len(labels)
    finally:
        for h in handles:
            h.remove()
    return {n: t / count for n, t in totals.items()}


def _captum_filters(ctx: ScoreContext) -> Scores:
    """captum LayerGradientXActivation towards the true class, per channel: mean |sum over positions|."""
    from captum.attr import LayerGradientXActivation

    twin = _grad_copy(ctx.model)
    names, modules = zip(*[(n, m) for n, m in twin.named_modules() if isinstance(m, PRUNABLE_TYPES)], strict=True)
    attributor = LayerGradientXActivation(twin, list(modules))
    totals: list[torch.Tensor | int] = [0] * len(names)
    count = 0
    for images, labels in ctx.batches():
        attrs = attributor.attribute(images, target=labels)
        for i, a in enumerate(attrs):
            totals[i] = totals[i] + a.detach().reshape(a.shape[0], a.shape[1], -1).sum(2).abs().sum(0)
        count += len(labels)
    return {n: t / count for n, t in zip(names, totals, strict=True)}


register(
    Criterion(
        "magnitude",
        "Weight magnitude |w|",
        "Absolute value of each weight; per filter, the L1 norm (sum of |w|).",
        False,
        weight=_magnitude,
        filter=lambda c: per_filter(_magnitude(c)),
    )
)
register(
    Criterion("l1", "Filter L1 norm", "Sum of |w| over each filter (Li et al. 2017).", False, filter=_filter_norm(1))
)
register(Criterion("l2", "Filter L2 norm", "Euclidean norm of each filter.", False, filter=_filter_norm(2)))
register(
    Criterion(
        "random",
        "Random (seeded)",
        "Uniform random scores: the baseline every criterion must beat.",
        False,
        weight=_random_weights,
        filter=_random_filters,
    )
)
register(
    Criterion(
        "bn-scale",
        "BatchNorm scale |gamma|",
        "Network slimming (Liu et al. 2017): a channel whose BN scale is small contributes little.",
        False,
        filter=_bn_scale,
    )
)
register(
    Criterion(
        "taylor",
        "First-order Taylor",
        "Molchanov et al.: |w x g| per weight, |activation x gradient| per filter, from calibration batches.",
        True,
        weight=_taylor_weights,
        filter=_taylor_filters,
    )
)
register(
    Criterion(
        "captum-gxa",
        "captum Gradient x Activation",
        "captum LayerGradientXActivation towards the true class, per filter, from calibration batches.",
        True,
        filter=_captum_filters,
    )
)
register(
    Criterion(
        "fpgm",
        "FPGM (geometric median)",
        "He et al. 2019: filters nearest their layer's geometric median are the most replaceable and go first "
        "(score: summed distance to the layer's other filters).",
        False,
        filter=_fpgm,
    )
)
register(
    Criterion(
        "obd",
        "Second order (OBD)",
        "Optimal Brain Damage: 1/2 x H_ii x w_i², H_ii the mean squared per-image gradient over the calibration "
        "images (as Torch-Pruning's Hessian importance); per filter, summed.",
        True,
        weight=_obd_weights,
        filter=lambda c: per_filter(_obd_weights(c)),
    )
)
register(
    Criterion(
        "synflow",
        "SynFlow (data-free)",
        "Tanaka et al. 2020: |w| x gradient of the all-ones path mass; per filter, summed.",
        False,
        weight=_synflow,
        filter=lambda c: per_filter(_synflow(c)),
    )
)

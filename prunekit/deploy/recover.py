"""Recovery after pruning: BatchNorm recalibration and a short fine-tune with the masks held fixed,
after one-shot pruning or along an iterative or AGP (Zhu & Gupta's cubic) schedule.

Every schedule spends the same fine-tuning budget (``epochs`` over the training images) and ends at the
same final sparsity; a multi-step schedule re-scores the fine-tuned weights before each step, and a
unit pruned once stays pruned. ``pruned`` and ``recalibrated`` are one-shot baselines without training.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from prunekit.core.data import EvalData
from prunekit.core.evaluate import Accuracy, accuracy_of, stratified_indices
from prunekit.core.lab import Lab
from prunekit.core.masks import apply_masks_
from prunekit.core.spec import PruneSpec
from prunekit.deploy.engine import EngineKind, engine_accuracy
from prunekit.errors import DataNotFoundError, InvalidArgumentError, UnknownNameError
from prunekit.models.datasets import FMNIST_CLASSES, fashion_mnist, fashion_mnist_size

CURVE_IMAGES = 1000  # the live curve's points are estimates on this many stratified test images
CURVE_POINTS = 10  # about this many points per fine-tune


def _one_shot(final: float, steps: int) -> list[float]:
    return [final]


def _iterative(final: float, steps: int) -> list[float]:
    return [final * (i + 1) / steps for i in range(steps)]


def _agp(final: float, steps: int) -> list[float]:
    # Zhu & Gupta (2017): s_t = s_f + (s_0 - s_f) (1 - t/n)^3 with s_0 = 0
    return [final * (1 - (1 - (i + 1) / steps) ** 3) for i in range(steps)]


SCHEDULES: dict[str, Callable[[float, int], list[float]]] = {
    "one-shot": _one_shot,
    "iterative": _iterative,
    "agp": _agp,
}


@dataclass(frozen=True)
class Recipe:
    """How to recover. ``train_images=None``: the whole training split; ``bn_images=0``: no recalibration."""

    bn_images: int = 1024
    epochs: float = 1.0
    train_images: int | None = None
    schedule: str = "one-shot"
    steps: int = 1  # pruning steps of an iterative or AGP schedule
    lr: float = 1e-3
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise UnknownNameError("schedule", self.schedule, list(SCHEDULES))
        if self.bn_images < 0 or self.epochs < 0 or self.lr <= 0 or self.batch_size <= 0:
            raise InvalidArgumentError(
                f"bn_images and epochs must be >= 0, lr and batch_size > 0; got {self.bn_images}, {self.epochs}, "
                f"{self.lr}, {self.batch_size}"
            )
        if self.steps < 1 or (self.schedule == "one-shot" and self.steps != 1):
            raise InvalidArgumentError(f"steps must be >= 1 (exactly 1 for one-shot), got {self.steps}")
        if self.train_images is not None and self.train_images <= 0:
            raise InvalidArgumentError(f"train_images must be positive or None, got {self.train_images}")

    def sparsities(self, final: float) -> list[float]:
        return SCHEDULES[self.schedule](final, self.steps)


@dataclass(frozen=True)
class CurvePoint:
    epoch: float  # fine-tuning epochs done (over the training images used)
    sparsity: float  # the schedule's sparsity at that point
    top1: float  # an estimate on ``n`` stratified test images
    n: int


@dataclass
class Recovery:
    """What recovery measured; accuracies are on the full evaluation split."""

    accuracy: dict[str, Accuracy | None]  # dense, pruned, recalibrated, finetuned
    curve: list[CurvePoint] = field(default_factory=list)
    step: int = 0  # optimizer steps done
    total_steps: int = 0
    stopped: bool = False
    seconds: float = 0.0
    train_images: int = 0
    model: nn.Module | None = field(default=None, repr=False, compare=False)  # the recovered model, in process

    def without_weights(self) -> Recovery:
        """A copy to send or store: no model, its own list of curve points."""
        return dataclasses.replace(self, model=None, curve=list(self.curve))

    def to_json(self) -> dict:
        """Plain data (no model): accuracies as top-1 fractions."""
        out = dataclasses.asdict(dataclasses.replace(self, model=None, accuracy={}))
        out.pop("model")
        out["accuracy"] = {k: (v.top1 if v else None) for k, v in self.accuracy.items()}
        return out


Report = Callable[[Recovery], bool]  # called as work progresses; returning False stops the fine-tune


def has_training_split(loaded) -> bool:
    """Whether ``loaded`` has training images here (its own, or Fashion-MNIST's), without reading them."""
    if loaded.train_data is not None:
        return True
    return tuple(loaded.classes) == FMNIST_CLASSES and tuple(loaded.input_spec.shape) == (1, 28, 28)


def training_images(loaded) -> int | None:
    """How many training images ``loaded`` has here (None: none), without reading them."""
    if loaded.train_data is not None:
        return len(loaded.train_data)
    return fashion_mnist_size("train") if has_training_split(loaded) else None


def training_split(lab: Lab) -> EvalData:
    """The training images of ``lab``'s task; only Fashion-MNIST has one on this machine."""
    loaded = lab.loaded
    if loaded.train_data is not None:
        return loaded.train_data
    if not has_training_split(loaded):
        raise DataNotFoundError(
            f"recovery needs {loaded.name}'s training data; only Fashion-MNIST models (the bundled ones and "
            "uploads of their architectures) have a training split here, and your own model the train_data you give"
        )
    return fashion_mnist("train")


@torch.no_grad()
def recalibrate_bn_(model: nn.Module, images: torch.Tensor, batch_size: int = 128) -> nn.Module:
    """Re-estimate every BatchNorm's running mean and variance on ``images`` (N, C, H, W), in place.

    Statistics are reset and averaged over all batches (momentum None); nothing else is trained."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return model
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    device = next(model.parameters()).device
    for start in range(0, images.shape[0], batch_size):
        model(images[start : start + batch_size].to(device))
    for m, momentum in zip(norms, saved, strict=True):
        m.momentum = momentum
    return model.eval()


@dataclass
class _Run:
    """State of one recovery as it goes."""

    lab: Lab
    spec: PruneSpec
    recipe: Recipe
    train: EvalData
    report: Report | None
    result: Recovery
    curve_images: tuple[torch.Tensor, torch.Tensor]
    engine: EngineKind = EngineKind.EAGER
    started: float = field(default_factory=time.perf_counter)

    def accuracy(self, model: nn.Module, data: EvalData) -> Accuracy:
        return engine_accuracy(model, data, self.engine)

    def tell(self) -> bool:
        self.result.seconds = time.perf_counter() - self.started
        return self.report(self.result) if self.report else True


def recover(
    lab: Lab,
    spec: PruneSpec,
    recipe: Recipe,
    report: Report | None = None,
    train: EvalData | None = None,
    engine: EngineKind = EngineKind.EAGER,
) -> Recovery:
    """Prune ``lab``'s model by ``spec``, then recover by ``recipe``.

    ``report`` sees the growing :class:`Recovery` (its curve, its step count) and may stop the fine-tune
    by returning False; the result then has ``stopped=True`` and the accuracy of the model as it was.
    ``train``: the training images (default: the task's training split, see :func:`training_split`).
    ``engine``: what the full-split accuracies run on (a worker passes the engine it measured faster for the
    model; :func:`prunekit.deploy.engine.engine_accuracy`: the same figures as eager).
    """
    train = train if train is not None else training_split(lab)
    if recipe.train_images is not None:
        train = _first(train, recipe.train_images)
    test = lab.loaded.eval_data()
    idx = stratified_indices(test.labels, CURVE_IMAGES)
    run = _Run(lab, spec, recipe, train, report, Recovery({}), (test.images[idx], test.labels[idx]), engine)
    run.result.train_images = len(train)
    run.result.accuracy["dense"] = run.accuracy(lab.loaded.model, test)
    model, masks = _one_shot_baselines(run, test)
    if recipe.schedule != "one-shot":
        model, masks = _trainable(lab.loaded.model), None
    _fine_tune_schedule(run, model, masks)
    run.result.accuracy["finetuned"] = run.accuracy(model.eval(), test) if recipe.epochs else None
    for p in model.parameters():
        p.requires_grad_(False)
    run.result.model = model.to(memory_format=torch.contiguous_format)
    run.tell()
    return run.result


def _first(data: EvalData, n: int) -> EvalData:
    idx = stratified_indices(data.labels, min(n, len(data)))
    return dataclasses.replace(data, images=data.images[idx], labels=data.labels[idx])


def _trainable(model: nn.Module) -> nn.Module:
    copy_ = copy.deepcopy(model).to(memory_format=torch.channels_last)
    for p in copy_.parameters():
        p.requires_grad_(True)
    return copy_


def _one_shot_baselines(run: _Run, test: EvalData) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The pruned model (masks applied to the dense weights) and its BN-recalibrated twin's accuracies."""
    model, masks = _pruned(run, run.lab.loaded.model, run.spec, None)
    run.result.accuracy["pruned"] = run.accuracy(model, test)
    if run.recipe.bn_images:
        recalibrate_bn_(model, run.train.images[: run.recipe.bn_images], run.recipe.batch_size)
        run.result.accuracy["recalibrated"] = run.accuracy(model, test)
    else:
        run.result.accuracy["recalibrated"] = None
    run.tell()
    return model, masks


def _pruned(
    run: _Run, model: nn.Module, spec: PruneSpec, previous: dict[str, torch.Tensor] | None
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A trainable copy of ``model`` pruned by ``spec``. Without ``previous`` masks, ``model`` is the
    dense base and its shared scores are used; otherwise ``model``'s current weights are scored, and the
    units ``previous`` removed stay removed."""
    lab = run.lab
    if previous is not None:
        frozen = copy.deepcopy(model).eval()
        for p in frozen.parameters():
            p.requires_grad_(False)
        lab = Lab(dataclasses.replace(run.lab.loaded, model=frozen))
    pruner = lab.pruner(spec)
    masks = pruner.work.keep_masks(pruner.apply_(spec))
    if previous is not None:
        masks = {k: v & previous[k] if k in previous else v for k, v in masks.items()}
    out = _trainable(model)
    apply_masks_(out, masks)
    return out.eval(), masks


def _fine_tune_schedule(run: _Run, model: nn.Module, masks: dict[str, torch.Tensor] | None) -> None:
    recipe = run.recipe
    per_epoch = math.ceil(len(run.train) / recipe.batch_size)
    run.result.total_steps = round(recipe.epochs * per_epoch)
    targets = recipe.sparsities(run.spec.sparsity)
    bounds = [round(run.result.total_steps * (i + 1) / len(targets)) for i in range(len(targets))]
    opt = torch.optim.AdamW([p for p in model.parameters()], lr=recipe.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / max(run.result.total_steps, 1)))
    )
    gen = torch.Generator().manual_seed(recipe.seed)
    for target, end in zip(targets, bounds, strict=True):
        if recipe.schedule != "one-shot":  # one-shot arrives pruned and recalibrated
            pruned, masks = _pruned(run, model, run.spec.at(target), masks)
            model.load_state_dict(pruned.state_dict())
            if recipe.bn_images:
                recalibrate_bn_(model, run.train.images[: recipe.bn_images], recipe.batch_size)
        if not _train_until(run, model, masks, opt, sched, gen, end, target):
            run.result.stopped = True
            return


def _train_until(run, model, masks, opt, sched, gen, end: int, sparsity: float) -> bool:
    """Optimizer steps until ``end``, masks re-applied after each; False if the report asked to stop."""
    loss_fn = nn.CrossEntropyLoss()
    per_epoch = math.ceil(len(run.train) / run.recipe.batch_size)
    every = max(1, run.result.total_steps // CURVE_POINTS)
    order = torch.empty(0, dtype=torch.long)
    while run.result.step < end:
        pos = run.result.step % per_epoch
        if pos == 0 or order.numel() == 0:
            order = torch.randperm(len(run.train), generator=gen)
        idx = order[pos * run.recipe.batch_size : (pos + 1) * run.recipe.batch_size]
        model.train()
        x = run.train.images[idx].contiguous(memory_format=torch.channels_last)
        loss = loss_fn(model(x), run.train.labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        apply_masks_(model, masks)
        run.result.step += 1
        if run.result.step % every == 0 or run.result.step == run.result.total_steps:
            _curve_point(run, model, sparsity)
        if not run.tell():  # every step: a stop is honoured within one batch
            return False
    return True


def _curve_point(run: _Run, model: nn.Module, sparsity: float) -> None:
    images, labels = run.curve_images
    est = accuracy_of(model.eval(), images, labels, len(labels))
    per_epoch = math.ceil(len(run.train) / run.recipe.batch_size)
    run.result.curve.append(CurvePoint(run.result.step / per_epoch, sparsity, est.top1, est.n))

"""Training around masks, shared by every method: the budget, the result, the starting points (theta_T, theta_0,
theta_k) and one masked training loop.

Masks are held through every step: the masked weights' gradients are zeroed before the optimizer step and the
masks re-applied after it, so neither a gradient nor weight decay revives a pruned weight. SET and RigL move
connections inside the loop, keeping each layer's count of active weights.
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

from prunekit.core.at_init import Masks, masks_from_scores
from prunekit.core.data import EvalData
from prunekit.core.evaluate import Accuracy, accuracy_of
from prunekit.core.lab import Lab
from prunekit.core.masks import apply_masks_
from prunekit.core.penalties import distillation_loss, slimming_penalty
from prunekit.core.profile import PRUNABLE_TYPES
from prunekit.core.sparse_training import cosine_fraction, rigl_update_, set_update_
from prunekit.errors import InvalidArgumentError
from prunekit.models import train as recipes

FINE_TUNE_LR = 1e-3  # the fine-tunes' AdamW rate, cosine-decayed (as the Prune page's recovery)
SCRATCH_LR = 3e-3  # training from theta_0 or theta_k: the bundled recipes' one-cycle peak
WEIGHT_DECAY = 1e-4
KD_TEMPERATURE, KD_WEIGHT = 4.0, 0.9  # Hinton et al. 2015: soft targets at T = 4 carry 90% of the loss
SLIMMING_STRENGTH = 1e-4  # Liu et al. 2017's lambda for L1 on BatchNorm scales
SPARSE_FRACTION = 0.3  # SET's zeta and RigL's alpha
SPARSE_END = 0.75  # SET and RigL stop moving connections at 75% of training (Evci et al. 2020)
SPARSE_UPDATES = 10  # connection updates over that stretch


@dataclass(frozen=True)
class Budget:
    """The final training every method gets: ``epochs`` over ``train_images`` (None: the whole training
    split) in batches of ``batch_size``; ``rounds`` of iterative magnitude pruning (lottery ticket, rewinding),
    each as long as the final training; the lottery ticket rewinds to ``rewind_step`` (0: Frankle & Carbin's
    original experiment)."""

    epochs: float = 1.0
    train_images: int | None = None
    batch_size: int = 128
    rounds: int = 3
    rewind_step: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0 or self.rounds < 1 or self.rewind_step < 0:
            raise InvalidArgumentError(
                f"a budget needs epochs > 0, batch_size > 0, rounds >= 1 and rewind_step >= 0; got {self}"
            )
        if self.train_images is not None and self.train_images <= 0:
            raise InvalidArgumentError(f"train_images must be positive or None, got {self.train_images}")

    def steps(self, images: int) -> int:
        """Optimizer steps of one training on ``images`` training images."""
        return max(1, round(self.epochs * math.ceil(images / self.batch_size)))


@dataclass
class MethodResult:
    """What a method produced: the full test split's top-1, the training curve (step, estimate top-1 on
    CURVE_IMAGES stratified test images), the cost in steps, images and seconds, the masks and weights."""

    method: str
    sparsity: float
    budget: Budget
    paper: str = ""  # the method's paper, as the pages and files name it
    accuracy: Accuracy | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)
    steps: int = 0  # every optimizer step the method took, its search and replay included
    total_steps: int = 0  # the steps it will take in all (for progress)
    seconds: float = 0.0
    train_images: int = 0
    weight_sparsity: float = 0.0  # zeros among the prunable layers' weights, counted on the result
    stopped: bool = False
    folder: str = ""  # where the trained weights were written (model.safetensors, masks.pt), when they were
    candidates: list[float] = field(default_factory=list)  # sub-model sampling: each candidate's estimate top-1
    heuristics: dict[str, float] = field(default_factory=dict)  # sub-model sampling: named allocations, scored alike
    masks: Masks = field(default_factory=dict, repr=False)  # while it runs: the masks held now
    model: nn.Module | None = field(default=None, repr=False, compare=False)  # while it runs: the model training now

    def without_weights(self) -> MethodResult:
        """A copy to send or store: no model, no masks, its own lists."""
        return dataclasses.replace(
            self,
            model=None,
            masks={},
            curve=list(self.curve),
            candidates=list(self.candidates),
            heuristics=dict(self.heuristics),
        )

    @property
    def images(self) -> int:
        """Training images seen (steps x batch size)."""
        return self.steps * self.budget.batch_size

    def to_json(self) -> dict:
        """Plain data: no weights, no masks."""
        return {
            "method": self.method,
            "paper": self.paper,
            "sparsity": self.sparsity,
            "weight_sparsity": self.weight_sparsity,
            "accuracy": self.accuracy.top1 if self.accuracy else None,
            "test_images": self.accuracy.n if self.accuracy else None,
            "curve": [list(p) for p in self.curve],
            "steps": self.steps,
            "images": self.images,
            "seconds": round(self.seconds, 2),
            "train_images": self.train_images,
            "budget": dataclasses.asdict(self.budget),
            "stopped": self.stopped,
            "candidates": self.candidates,
            "heuristics": self.heuristics,
        }


Report = Callable[[MethodResult], bool]  # told as the method goes; returning False stops it


class Stopped(Exception):
    pass


@dataclass
class Run:
    lab: Lab
    sparsity: float
    budget: Budget
    train: EvalData
    result: MethodResult
    report: Report | None
    curve_images: tuple[torch.Tensor, torch.Tensor]
    started: float = field(default_factory=time.perf_counter)

    @property
    def final_steps(self) -> int:
        return self.budget.steps(len(self.train))

    def tell(self) -> None:
        self.result.seconds = time.perf_counter() - self.started
        if self.report is not None and not self.report(self.result):
            raise Stopped


# --- starting points ------------------------------------------------------------------------------


def _trainable(model: nn.Module) -> nn.Module:
    out = copy.deepcopy(model).to(memory_format=torch.channels_last)
    for p in out.parameters():
        p.requires_grad_(True)
    return out


def trained(lab: Lab) -> nn.Module:
    """theta_T: a trainable copy of the lab's model."""
    return _trainable(lab.loaded.model)


def _has_recipe(lab: Lab) -> bool:
    return lab.loaded.name in recipes.RECIPES and lab.loaded.family == "bundled"


def initialisation(lab: Lab, seed: int | None = None) -> nn.Module:
    """theta_0: the bundled model's own initialisation (``seed`` None) or a fresh one: every module's
    ``reset_parameters`` under ``seed`` (also for a model without a recorded recipe)."""
    if seed is None and _has_recipe(lab):
        return _trainable(recipes.initial(lab.loaded.name))
    model = copy.deepcopy(lab.loaded.model)
    torch.manual_seed(0 if seed is None else seed)
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return _trainable(model)


def rewound(lab: Lab, run: Run) -> nn.Module:
    """theta_k: the recipe replayed ``rewind_step`` steps on the run's training images (theta_0 for k = 0)."""
    k = min(run.budget.rewind_step, recipes.recipe_steps(lab.loaded.name, len(run.train)))
    if k == 0 or not _has_recipe(lab):
        return initialisation(lab)
    model = recipes.replay(lab.loaded.name, k, run.train)
    run.result.steps += k
    return _trainable(model)


# --- masks ------------------------------------------------------------------------------------------


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    return {f"{n}.weight": m.weight for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}


def magnitude_masks(model: nn.Module, sparsity: float, keep: Masks | None = None) -> Masks:
    """Global magnitude masks removing ``sparsity`` of the prunable weights; weights ``keep`` already
    removed score zero, so they stay removed (iterative magnitude pruning)."""
    weights = prunable_weights(model)
    scores = {n[: -len(".weight")]: w.detach().abs() * (keep[n] if keep else 1) for n, w in weights.items()}
    return masks_from_scores(scores, sparsity)


def imp_targets(sparsity: float, rounds: int) -> list[float]:
    """Iterative magnitude pruning's sparsity after each round: the same fraction of survivors each time."""
    return [1.0 - (1.0 - sparsity) ** (r / rounds) for r in range(1, rounds + 1)]


def zero_fraction(model: nn.Module) -> float:
    weights = prunable_weights(model).values()
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


# --- training ---------------------------------------------------------------------------------------


@dataclass
class Training:
    """One training phase: its length, optimizer settings, loss and per-step hooks."""

    steps: int
    lr: float
    schedule: str  # "one-cycle" (from scratch or a rewind) or "cosine" (a fine-tune)
    teacher: nn.Module | None = None
    penalty: float = 0.0
    moving: str | None = None  # "set" or "rigl": connections move during training
    curve: bool = True


def _optimizer(model: nn.Module, phase: Training):
    opt = torch.optim.AdamW(model.parameters(), lr=phase.lr, weight_decay=WEIGHT_DECAY)
    if phase.schedule == "one-cycle" and phase.steps > 1:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=phase.lr, total_steps=phase.steps)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * t / phase.steps)))
    return opt, sched


def _mask_gradients_(model: nn.Module, masks: Masks) -> None:
    params = dict(model.named_parameters())
    for name, keep in masks.items():
        grad = params[name].grad
        if grad is not None:
            grad.masked_fill_(~keep, 0.0)


def _move_connections_(model: nn.Module, masks: Masks, phase: Training, step: int, gen) -> None:
    """SET or RigL at ``step`` (every 1/SPARSE_UPDATES of the first SPARSE_END of training); RigL reads
    the dense gradients, which the weights hold before they are masked."""
    end = max(1, round(SPARSE_END * phase.steps))
    every = max(1, end // SPARSE_UPDATES)
    if step % every or step >= end:
        return
    params = dict(model.named_parameters())
    for name, keep in masks.items():
        w = params[name]
        if phase.moving == "set":
            masks[name] = set_update_(w.data, keep, SPARSE_FRACTION, gen)
        else:
            masks[name] = rigl_update_(w.data, keep, w.grad, cosine_fraction(step, end, SPARSE_FRACTION))


def train_masked_(run: Run, model: nn.Module, masks: Masks, phase: Training) -> nn.Module:
    """Train ``model`` in place for ``phase.steps`` steps with ``masks`` held (moved by SET or RigL)."""
    apply_masks_(model, masks)
    opt, sched = _optimizer(model, phase)
    gen = torch.Generator().manual_seed(run.budget.seed)
    data, batch = run.train, run.budget.batch_size
    every = max(1, phase.steps // 10)
    order, pos = torch.randperm(len(data), generator=gen), 0
    for step in range(1, phase.steps + 1):
        if pos >= len(order):
            order, pos = torch.randperm(len(data), generator=gen), 0
        idx = order[pos : pos + batch]
        pos += batch
        model.train()
        x, y = data.images[idx].contiguous(memory_format=torch.channels_last), data.labels[idx]
        logits = model(x)
        if phase.teacher is not None:
            with torch.no_grad():
                soft = phase.teacher(x)
            loss = distillation_loss(logits, soft, y, KD_TEMPERATURE, KD_WEIGHT)
        else:
            loss = nn.functional.cross_entropy(logits, y)
        if phase.penalty:
            loss = loss + slimming_penalty(model, phase.penalty)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if phase.moving:
            _move_connections_(model, masks, phase, step, gen)
        _mask_gradients_(model, masks)
        opt.step()
        sched.step()
        apply_masks_(model, masks)
        run.result.steps += 1
        if phase.curve and (step % every == 0 or step == phase.steps):
            images, labels = run.curve_images
            run.result.curve.append((run.result.steps, accuracy_of(model.eval(), images, labels, len(labels)).top1))
        run.result.model, run.result.masks = model, masks  # the live ones: a report may look, a stop keeps them
        run.tell()
    return model.eval()

"""When and how to prune: the seeds' methods as recipes on one training budget.

Every method ends with the same training of its sparse network, :class:`Budget` (epochs over N training
images), so their accuracies compare; what a method spends before it (the lottery ticket's rounds and replay,
learning-rate rewinding's rounds, slimming's penalised phase) is counted in the result's steps and seconds, never
hidden. Masks are held through every step: the masked weights' gradients are zeroed before the optimizer step
and the masks re-applied after it, so neither a gradient nor weight decay revives a pruned weight.

Starting points: theta_T (the trained model), theta_0 (its initialisation before the recipe's first step; a
fresh seeded initialisation for a model without a recorded recipe) and theta_k (the recipe replayed k steps).
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

from prunekit.core.at_init import Masks, grasp_scores, masks_from_scores, snip_scores, synflow_masks
from prunekit.core.data import EvalData
from prunekit.core.evaluate import Accuracy, accuracy, accuracy_of, stratified_indices
from prunekit.core.lab import Lab
from prunekit.core.masks import apply_masks_
from prunekit.core.penalties import distillation_loss, slimming_penalty
from prunekit.core.profile import PRUNABLE_TYPES
from prunekit.core.sparse_training import cosine_fraction, erk_random_masks, rigl_update_, set_update_
from prunekit.core.spec import Allocation, PruneSpec, Structure, check_sparsity
from prunekit.deploy.recover import CURVE_IMAGES, training_split
from prunekit.errors import InvalidArgumentError, UnknownNameError
from prunekit.models import train as recipes

FINE_TUNE_LR = 1e-3  # the fine-tunes' AdamW rate, cosine-decayed (as the Prune page's recovery)
SCRATCH_LR = 3e-3  # training from theta_0 or theta_k: the bundled recipes' one-cycle peak
WEIGHT_DECAY = 1e-4
KD_TEMPERATURE, KD_WEIGHT = 4.0, 0.9  # Hinton et al. 2015: soft targets at T = 4 carry 90% of the loss
SLIMMING_STRENGTH = 1e-4  # Liu et al. 2017's lambda for L1 on BatchNorm scales
SPARSE_FRACTION = 0.3  # SET's zeta and RigL's alpha
SPARSE_END = 0.75  # SET and RigL stop moving connections at 75% of training (Evci et al. 2020)
SPARSE_UPDATES = 10  # connection updates over that stretch
SYNFLOW_ROUNDS = 100  # Tanaka et al. 2020's iterative rounds (data-free, a forward and backward each)


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
    accuracy: Accuracy | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)
    steps: int = 0  # every optimizer step the method took, its search and replay included
    total_steps: int = 0  # the steps it will take in all (for progress)
    seconds: float = 0.0
    train_images: int = 0
    weight_sparsity: float = 0.0  # zeros among the prunable layers' weights, counted on the result
    stopped: bool = False
    masks: Masks = field(default_factory=dict, repr=False)  # while it runs: the masks held now
    model: nn.Module | None = field(default=None, repr=False, compare=False)  # while it runs: the model training now

    @property
    def images(self) -> int:
        """Training images seen (steps x batch size)."""
        return self.steps * self.budget.batch_size

    def to_json(self) -> dict:
        """Plain data: no weights, no masks."""
        return {
            "method": self.method,
            "paper": METHODS[self.method].paper,
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
        }


Report = Callable[[MethodResult], bool]  # told as the method goes; returning False stops it


class _Stopped(Exception):
    pass


@dataclass
class _Run:
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
            raise _Stopped


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


def rewound(lab: Lab, run: _Run) -> nn.Module:
    """theta_k: the recipe replayed ``rewind_step`` steps on the run's training images (theta_0 for k = 0)."""
    k = min(run.budget.rewind_step, recipes.recipe_steps(lab.loaded.name, len(run.train)))
    if k == 0 or not _has_recipe(lab):
        return initialisation(lab)
    model = recipes.replay(lab.loaded.name, k, run.train)
    run.result.steps += k
    return _trainable(model)


# --- masks ------------------------------------------------------------------------------------------


def _prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    return {f"{n}.weight": m.weight for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}


def magnitude_masks(model: nn.Module, sparsity: float, keep: Masks | None = None) -> Masks:
    """Global magnitude masks removing ``sparsity`` of the prunable weights; weights ``keep`` already
    removed score zero, so they stay removed (iterative magnitude pruning)."""
    weights = _prunable_weights(model)
    scores = {n[: -len(".weight")]: w.detach().abs() * (keep[n] if keep else 1) for n, w in weights.items()}
    return masks_from_scores(scores, sparsity)


def _imp_targets(sparsity: float, rounds: int) -> list[float]:
    """Iterative magnitude pruning's sparsity after each round: the same fraction of survivors each time."""
    return [1.0 - (1.0 - sparsity) ** (r / rounds) for r in range(1, rounds + 1)]


def _weight_sparsity(model: nn.Module) -> float:
    weights = _prunable_weights(model).values()
    total = sum(w.numel() for w in weights)
    return sum(int((w == 0).sum()) for w in weights) / total if total else 0.0


# --- training ---------------------------------------------------------------------------------------


@dataclass
class _Training:
    """One training phase: its length, optimizer settings, loss and per-step hooks."""

    steps: int
    lr: float
    schedule: str  # "one-cycle" (from scratch or a rewind) or "cosine" (a fine-tune)
    teacher: nn.Module | None = None
    penalty: float = 0.0
    moving: str | None = None  # "set" or "rigl": connections move during training
    curve: bool = True


def _optimizer(model: nn.Module, phase: _Training):
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


def _move_connections_(model: nn.Module, masks: Masks, phase: _Training, step: int, gen) -> None:
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


def train_masked_(run: _Run, model: nn.Module, masks: Masks, phase: _Training) -> nn.Module:
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


# --- the methods ------------------------------------------------------------------------------------


def _prune_fine_tune(run: _Run, teacher: bool = False) -> tuple[nn.Module, Masks]:
    model = trained(run.lab)
    masks = magnitude_masks(model, run.sparsity)
    dense = run.lab.loaded.model if teacher else None
    return train_masked_(run, model, masks, _Training(run.final_steps, FINE_TUNE_LR, "cosine", teacher=dense)), masks


def _lottery_masks(run: _Run) -> tuple[nn.Module, Masks]:
    """Iterative magnitude pruning with rewinding: train from theta_k, prune the round's share of the
    survivors, rewind the survivors to theta_k; returns (theta_k, the final mask)."""
    start = rewound(run.lab, run)
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in _prunable_weights(start).items()}
    for target in _imp_targets(run.sparsity, run.budget.rounds):
        model = train_masked_(
            run, copy.deepcopy(start), masks, _Training(run.final_steps, SCRATCH_LR, "one-cycle", curve=False)
        )
        masks = magnitude_masks(model, target, masks)
    return start, masks


def _lottery(run: _Run) -> tuple[nn.Module, Masks]:
    start, masks = _lottery_masks(run)
    return train_masked_(run, start, masks, _Training(run.final_steps, SCRATCH_LR, "one-cycle")), masks


def _lottery_reinit(run: _Run) -> tuple[nn.Module, Masks]:
    _, masks = _lottery_masks(run)
    fresh = initialisation(run.lab, seed=run.budget.seed + 1)
    return train_masked_(run, fresh, masks, _Training(run.final_steps, SCRATCH_LR, "one-cycle")), masks


def _rewind_lr(run: _Run) -> tuple[nn.Module, Masks]:
    model = trained(run.lab)
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in _prunable_weights(model).items()}
    for target in _imp_targets(run.sparsity, run.budget.rounds):
        masks = magnitude_masks(model, target, masks)
        model = train_masked_(run, model, masks, _Training(run.final_steps, SCRATCH_LR, "one-cycle"))
    return model, masks


def _at_init(score: str) -> Callable[[_Run], tuple[nn.Module, Masks]]:
    def run_(run: _Run) -> tuple[nn.Module, Masks]:
        model = initialisation(run.lab)
        if score == "synflow":
            masks = synflow_masks(model, run.lab.loaded.input_spec.shape, run.sparsity, SYNFLOW_ROUNDS)
        else:
            n = min(run.budget.batch_size, len(run.train))
            x, y = run.train.images[:n], run.train.labels[:n]
            scores = (snip_scores if score == "snip" else grasp_scores)(model, x, y)
            masks = masks_from_scores(scores, run.sparsity)
        return train_masked_(run, model, masks, _Training(run.final_steps, SCRATCH_LR, "one-cycle")), masks

    return run_


def _sparse_training(kind: str) -> Callable[[_Run], tuple[nn.Module, Masks]]:
    def run_(run: _Run) -> tuple[nn.Module, Masks]:
        model = initialisation(run.lab)
        weights = _prunable_weights(model)
        gen = torch.Generator().manual_seed(run.budget.seed)
        masks = erk_random_masks({n: tuple(w.shape) for n, w in weights.items()}, run.sparsity, gen)
        phase = _Training(run.final_steps, SCRATCH_LR, "one-cycle", moving=kind)
        return train_masked_(run, model, masks, phase), masks

    return run_


def _slimming(run: _Run) -> tuple[nn.Module, Masks]:
    """L1 on BatchNorm scales while training, then the lowest scales' filters pruned (``sparsity`` of the
    channels, globally), then a fine-tune."""
    model = trained(run.lab)
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise InvalidArgumentError(f"network slimming needs BatchNorm layers, and {run.lab.loaded.name} has none")
    none: Masks = {}
    model = train_masked_(
        run, model, none, _Training(run.final_steps, FINE_TUNE_LR, "cosine", penalty=SLIMMING_STRENGTH)
    )
    frozen = copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    lab = Lab(dataclasses.replace(run.lab.loaded, model=frozen))
    spec = PruneSpec("bn-scale", Structure.FILTER, Allocation("global"), sparsity=run.sparsity)
    pruner = lab.pruner(spec)
    masks = pruner.work.keep_masks(pruner.apply_(spec))
    return train_masked_(run, model, masks, _Training(run.final_steps, FINE_TUNE_LR, "cosine")), masks


@dataclass(frozen=True)
class Method:
    """A named way to reach a sparse network, with its paper and what it starts from."""

    name: str
    title: str
    paper: str
    starts_from: str  # "theta_T", "theta_0" or "theta_k"
    run: Callable[[_Run], tuple[nn.Module, Masks]]


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("ft", "Train, prune, fine-tune", "Han et al. 2015", "theta_T", _prune_fine_tune),
        Method(
            "kd",
            "Prune, then distil from the dense model",
            "Hinton et al. 2015",
            "theta_T",
            lambda run: _prune_fine_tune(run, teacher=True),
        ),
        Method(
            "lth", "Lottery ticket (late rewinding)", "Frankle & Carbin 2019; Frankle et al. 2020", "theta_k", _lottery
        ),
        Method(
            "lth-reinit",
            "Lottery ticket mask, random re-initialisation",
            "Frankle & Carbin 2019",
            "theta_0",
            _lottery_reinit,
        ),
        Method("lrr", "Learning-rate rewinding", "Renda et al. 2020", "theta_T", _rewind_lr),
        Method("snip", "SNIP at initialisation", "Lee et al. 2019", "theta_0", _at_init("snip")),
        Method("grasp", "GraSP at initialisation", "Wang et al. 2020", "theta_0", _at_init("grasp")),
        Method(
            "synflow",
            "SynFlow at initialisation (iterative, data-free)",
            "Tanaka et al. 2020",
            "theta_0",
            _at_init("synflow"),
        ),
        Method("set", "Sparse evolutionary training (SET)", "Mocanu et al. 2018", "theta_0", _sparse_training("set")),
        Method("rigl", "Rigged lottery (RigL)", "Evci et al. 2020", "theta_0", _sparse_training("rigl")),
        Method("slimming", "Network slimming (L1 on BatchNorm scales)", "Liu et al. 2017", "theta_T", _slimming),
    )
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UnknownNameError("method", name, list(METHODS))
    return METHODS[name]


def _planned_steps(name: str, budget: Budget, final: int) -> int:
    """About how many steps ``name`` takes (for progress; the result counts the steps it took)."""
    if name in ("lth", "lth-reinit"):
        return budget.rewind_step + (budget.rounds + 1) * final
    if name == "lrr":
        return budget.rounds * final
    return 2 * final if name == "slimming" else final


def train_sparse(
    lab: Lab,
    method: str,
    sparsity: float,
    budget: Budget = Budget(),
    report: Report | None = None,
    train: EvalData | None = None,
    test: EvalData | None = None,
) -> MethodResult:
    """Reach ``sparsity`` by ``method`` on ``lab``'s model with ``budget``; the result holds the trained sparse
    model, its masks, its top-1 on the whole test split and its cost. ``report`` sees the result grow and may stop
    it (returning False): the result then says ``stopped``, with its cost so far and the model as it was, but no
    accuracy.
    ``train``, ``test``: training and test images (default: the task's training split, the lab's test set)."""
    chosen = get_method(method)
    check_sparsity(sparsity)
    train = train if train is not None else training_split(lab)
    if budget.train_images is not None and budget.train_images < len(train):
        idx = stratified_indices(train.labels, budget.train_images)
        train = dataclasses.replace(train, images=train.images[idx], labels=train.labels[idx])
    test = test if test is not None else lab.loaded.eval_data()
    idx = stratified_indices(test.labels, CURVE_IMAGES)
    result = MethodResult(method, sparsity, budget, train_images=len(train))
    run = _Run(lab, sparsity, budget, train, result, report, (test.images[idx], test.labels[idx]))
    result.total_steps = _planned_steps(chosen.name, budget, run.final_steps)
    try:
        model, masks = chosen.run(run)
    except _Stopped:
        result.stopped = True
        return result
    model = model.to(memory_format=torch.contiguous_format).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    result.model, result.masks = model, masks
    result.weight_sparsity = _weight_sparsity(model)
    result.accuracy = accuracy(model, test)
    run.tell()
    return result

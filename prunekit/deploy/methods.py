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
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from prunekit.core.at_init import Masks, grasp_scores, masks_from_scores, snip_scores, synflow_masks
from prunekit.core.data import EvalData
from prunekit.core.evaluate import accuracy, accuracy_of, stratified_indices
from prunekit.core.lab import Lab
from prunekit.core.masks import apply_masks_
from prunekit.core.reconstruct import reconstruct_
from prunekit.core.sparse_training import erk_random_masks
from prunekit.core.spec import ALLOCATIONS, Allocation, PruneSpec, Structure, check_sparsity
from prunekit.deploy.export import safetensors_bytes
from prunekit.deploy.recover import CURVE_IMAGES, recalibrate_bn_, training_split
from prunekit.deploy.training import (
    FINE_TUNE_LR,
    SCRATCH_LR,
    SLIMMING_STRENGTH,
    Budget,
    MethodResult,
    Report,
    Run,
    Stopped,
    Training,
    imp_targets,
    initialisation,
    magnitude_masks,
    prunable_weights,
    rewound,
    train_masked_,
    trained,
    zero_fraction,
)
from prunekit.errors import InvalidArgumentError, PrunekitError, UnknownNameError

SYNFLOW_ROUNDS = 100  # Tanaka et al. 2020's iterative rounds (data-free, a forward and backward each)
CALIBRATION = 1024  # training images for BatchNorm recalibration and least squares (no training step)
SUBMODELS = 8  # sub-model sampling: random per-layer allocations drawn at the target
CHANNEL_MAX = 0.95  # the channel methods' search for a weight sparsity stops at this share of channels
SUBMODEL_MAX = 0.9  # no layer of a sampled allocation loses more than this fraction of its channels
FILTER_SPEC = PruneSpec("l1", Structure.FILTER, Allocation("global", "mean"))  # the filter methods' pruning


# --- the methods ------------------------------------------------------------------------------------


def _prune_fine_tune(run: Run, teacher: bool = False) -> tuple[nn.Module, Masks]:
    model = trained(run.lab)
    masks = magnitude_masks(model, run.sparsity)
    dense = run.lab.loaded.model if teacher else None
    return train_masked_(run, model, masks, Training(run.final_steps, FINE_TUNE_LR, "cosine", teacher=dense)), masks


def _lottery_masks(run: Run) -> tuple[nn.Module, Masks]:
    """Iterative magnitude pruning with rewinding: train from theta_k, prune the round's share of the
    survivors, rewind the survivors to theta_k; returns (theta_k, the final mask)."""
    start = rewound(run.lab, run)
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in prunable_weights(start).items()}
    for target in imp_targets(run.sparsity, run.budget.rounds):
        model = train_masked_(
            run, copy.deepcopy(start), masks, Training(run.final_steps, SCRATCH_LR, "one-cycle", curve=False)
        )
        masks = magnitude_masks(model, target, masks)
    return start, masks


def _lottery(run: Run) -> tuple[nn.Module, Masks]:
    start, masks = _lottery_masks(run)
    return train_masked_(run, start, masks, Training(run.final_steps, SCRATCH_LR, "one-cycle")), masks


def _lottery_reinit(run: Run) -> tuple[nn.Module, Masks]:
    _, masks = _lottery_masks(run)
    fresh = initialisation(run.lab, seed=run.budget.seed + 1)
    return train_masked_(run, fresh, masks, Training(run.final_steps, SCRATCH_LR, "one-cycle")), masks


def _rewind_lr(run: Run) -> tuple[nn.Module, Masks]:
    model = trained(run.lab)
    masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in prunable_weights(model).items()}
    for target in imp_targets(run.sparsity, run.budget.rounds):
        masks = magnitude_masks(model, target, masks)
        model = train_masked_(run, model, masks, Training(run.final_steps, SCRATCH_LR, "one-cycle"))
    return model, masks


def _at_init(score: str) -> Callable[[Run], tuple[nn.Module, Masks]]:
    def run_(run: Run) -> tuple[nn.Module, Masks]:
        model = initialisation(run.lab)
        if score == "synflow":
            masks = synflow_masks(model, run.lab.loaded.input_spec.shape, run.sparsity, SYNFLOW_ROUNDS)
        else:
            n = min(run.budget.batch_size, len(run.train))
            x, y = run.train.images[:n], run.train.labels[:n]
            scores = (snip_scores if score == "snip" else grasp_scores)(model, x, y)
            masks = masks_from_scores(scores, run.sparsity)
        return train_masked_(run, model, masks, Training(run.final_steps, SCRATCH_LR, "one-cycle")), masks

    return run_


def _sparse_training(kind: str) -> Callable[[Run], tuple[nn.Module, Masks]]:
    def run_(run: Run) -> tuple[nn.Module, Masks]:
        model = initialisation(run.lab)
        weights = prunable_weights(model)
        gen = torch.Generator().manual_seed(run.budget.seed)
        masks = erk_random_masks({n: tuple(w.shape) for n, w in weights.items()}, run.sparsity, gen)
        phase = Training(run.final_steps, SCRATCH_LR, "one-cycle", moving=kind)
        return train_masked_(run, model, masks, phase), masks

    return run_


def _slimming(run: Run) -> tuple[nn.Module, Masks]:
    """L1 on BatchNorm scales while training, then the lowest scales' filters pruned (globally, channels enough
    to remove ``sparsity`` of the weights), then a fine-tune."""
    model = trained(run.lab)
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise InvalidArgumentError(f"network slimming needs BatchNorm layers, and {run.lab.loaded.name} has none")
    none: Masks = {}
    model = train_masked_(
        run, model, none, Training(run.final_steps, FINE_TUNE_LR, "cosine", penalty=SLIMMING_STRENGTH)
    )
    frozen = copy.deepcopy(model).to(memory_format=torch.contiguous_format).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    lab = Lab(dataclasses.replace(run.lab.loaded, model=frozen))
    spec = matched_channels(lab, PruneSpec("bn-scale", Structure.FILTER, Allocation("global")), run.sparsity)
    pruner = lab.pruner(spec)
    masks = pruner.work.keep_masks(pruner.apply_(spec))
    return train_masked_(run, model, masks, Training(run.final_steps, FINE_TUNE_LR, "cosine")), masks


def _removed_share(masks: Masks) -> float:
    return sum(int((~k).sum()) for k in masks.values()) / max(1, sum(k.numel() for k in masks.values()))


def matched_channels(lab: Lab, spec: PruneSpec, target: float) -> PruneSpec:
    """``spec`` (a filter spec) at the channel sparsity whose masks remove ``target`` of the prunable weights (the
    smallest that removes at least that much, to 1/1024), so that a channel method compares with the weight
    methods at the same weight sparsity. A channel and its coupled inputs go together, so a channel share well
    below ``target`` already reaches it (about 1 - sqrt(1 - target) between two pruned layers)."""
    pruner = lab.pruner(spec)
    lo, hi = 0.0, CHANNEL_MAX
    for _ in range(10):
        mid = (lo + hi) / 2
        try:
            reached = _removed_share(pruner.work.keep_masks(pruner.apply_(spec.at(mid)))) >= target
        except PrunekitError:  # a share that empties a layer is past any reachable target
            reached = True
        lo, hi = (lo, mid) if reached else (mid, hi)
    return spec.at(hi)


def _filter_pruned(run: Run, spec: PruneSpec) -> tuple[nn.Module, Masks]:
    """A trainable copy of the trained model pruned by the filter ``spec`` (its masks applied)."""
    pruner = run.lab.pruner(spec)
    masks = pruner.work.keep_masks(pruner.apply_(spec))
    return apply_masks_(trained(run.lab), masks).eval(), masks


def _calibration(run: Run) -> torch.Tensor:
    return run.train.images[:CALIBRATION]


def _recalibrated(run: Run) -> tuple[nn.Module, Masks]:
    """Filter pruning, then BatchNorm statistics re-estimated: no training step."""
    model, masks = _filter_pruned(run, matched_channels(run.lab, FILTER_SPEC, run.sparsity))
    return recalibrate_bn_(model, _calibration(run), run.budget.batch_size), masks


def _least_squares(run: Run) -> tuple[nn.Module, Masks]:
    """Filter pruning, then each next layer solved by least squares to match the dense outputs: no training."""
    model, masks = _filter_pruned(run, matched_channels(run.lab, FILTER_SPEC, run.sparsity))
    with torch.no_grad():
        reconstruct_(model, run.lab.loaded.model, masks, _calibration(run).contiguous(), seed=run.budget.seed)
    return model.eval(), masks


def random_allocation(sizes: dict[str, int], sparsity: float, gen: torch.Generator) -> dict[str, float]:
    """Per-set sparsities drawn at random whose removed units add up to ``round(sparsity * sum(sizes))``
    exactly: each set's share drawn uniformly, the target spread in proportion and capped at SUBMODEL_MAX of a
    set, what rounding and the caps leave handed out one unit at a time to random sets with room."""
    target = round(sparsity * sum(sizes.values()))
    caps = {n: int(SUBMODEL_MAX * size) for n, size in sizes.items()}
    if target > sum(caps.values()):
        raise InvalidArgumentError(f"no allocation removes {sparsity:.0%} with at most {SUBMODEL_MAX:.0%} per layer")
    share = dict(zip(sizes, torch.rand(len(sizes), generator=gen).tolist(), strict=True))
    weight = sum(share[n] * sizes[n] for n in sizes)
    counts = {n: min(caps[n], int(target * share[n] * sizes[n] / weight)) for n in sizes}
    while sum(counts.values()) < target:
        room = [n for n in sizes if counts[n] < caps[n]]
        counts[room[int(torch.randint(len(room), (1,), generator=gen))]] += 1
    return {n: counts[n] / sizes[n] for n in sizes}


def _scored_candidate(run: Run, spec: PruneSpec) -> tuple[float, nn.Module, Masks]:
    """Filter ``spec`` applied, BatchNorm recalibrated, scored on the curve's stratified test images."""
    model, masks = _filter_pruned(run, spec)
    recalibrate_bn_(model, _calibration(run), run.budget.batch_size)
    images, labels = run.curve_images
    return accuracy_of(model, images, labels, len(labels)).top1, model, masks


def _submodel_sampling(run: Run) -> tuple[nn.Module, Masks]:
    """EagleEye (Li et al. 2020): SUBMODELS random per-layer allocations at the target, each BatchNorm-
    recalibrated and scored on the curve's stratified test images; the best is fine-tuned. The candidates'
    estimates are kept in the result (``candidates``), beside the named allocations' scored the same way
    (``heuristics``: global, local, LAMP... on the same filter criterion), so the spread compares."""
    table = run.lab.table(FILTER_SPEC.criterion, Structure.FILTER, FILTER_SPEC.normalise)
    sizes = {s.name: s.size for s in table.sets}
    gen = torch.Generator().manual_seed(run.budget.seed)
    best: tuple[float, nn.Module, Masks] | None = None
    channels = matched_channels(run.lab, FILTER_SPEC, run.sparsity).sparsity  # the random draws' channel share
    for _ in range(SUBMODELS):
        overrides = random_allocation(sizes, channels, gen)
        scored = _scored_candidate(run, dataclasses.replace(FILTER_SPEC.at(channels), overrides=overrides))
        run.result.candidates.append(scored[0])
        if best is None or scored[0] > best[0]:
            best = scored
        run.tell()
    for named in ALLOCATIONS.values():
        if not named.unstructured_only:
            spec = matched_channels(
                run.lab, dataclasses.replace(FILTER_SPEC, allocation=named.allocation), run.sparsity
            )
            run.result.heuristics[named.name] = _scored_candidate(run, spec)[0]
    _, model, masks = best
    return train_masked_(run, model, masks, Training(run.final_steps, FINE_TUNE_LR, "cosine")), masks


def _replay_and_rounds(budget: Budget, final: int) -> int:
    return budget.rewind_step + (budget.rounds + 1) * final


def _no_training(budget: Budget, final: int) -> int:
    return 0


@dataclass(frozen=True)
class Method:
    """A named way to reach a sparse network, with its paper and what it starts from."""

    name: str
    title: str
    paper: str
    starts_from: str  # "theta_T", "theta_0" or "theta_k"
    run: Callable[[Run], tuple[nn.Module, Masks]]
    # About how many steps it takes, from the budget and one final training's steps (for progress only: the
    # result counts the steps it took). Most methods train once.
    planned: Callable[[Budget, int], int] = lambda budget, final: final

    @property
    def needs_trained(self) -> bool:
        """Whether it starts from the trained weights (an untrained model gives it nothing to start from)."""
        return self.starts_from == "theta_T"


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
            "lth",
            "Lottery ticket (late rewinding)",
            "Frankle & Carbin 2019; Frankle et al. 2020",
            "theta_k",
            _lottery,
            _replay_and_rounds,
        ),
        Method(
            "lth-reinit",
            "Lottery ticket mask, random re-initialisation",
            "Frankle & Carbin 2019",
            "theta_0",
            _lottery_reinit,
            _replay_and_rounds,
        ),
        Method(
            "lrr",
            "Learning-rate rewinding",
            "Renda et al. 2020",
            "theta_T",
            _rewind_lr,
            lambda budget, final: budget.rounds * final,
        ),
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
        Method(
            "slimming",
            "Network slimming (L1 on BatchNorm scales)",
            "Liu et al. 2017",
            "theta_T",
            _slimming,
            lambda budget, final: 2 * final,  # the penalised phase, then the fine-tune
        ),
        Method("submodels", "Sub-model sampling (EagleEye)", "Li et al. 2020", "theta_T", _submodel_sampling),
        Method(
            "bn-recal",
            "Filter pruning + BatchNorm recalibration (no training)",
            "Ioffe & Szegedy 2015",
            "theta_T",
            _recalibrated,
            _no_training,
        ),
        Method(
            "lsq",
            "Filter pruning + least squares (no training)",
            "He et al. 2017; Luo et al. 2017",
            "theta_T",
            _least_squares,
            _no_training,
        ),
    )
}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UnknownNameError("method", name, list(METHODS))
    return METHODS[name]


def train_sparse(
    lab: Lab,
    method: str,
    sparsity: float,
    budget: Budget | None = None,
    report: Report | None = None,
    train: EvalData | None = None,
    test: EvalData | None = None,
) -> MethodResult:
    """Reach ``sparsity`` by ``method`` on ``lab``'s model with ``budget``; the result holds the trained sparse
    model, its masks, its top-1 on the whole test split and its cost. ``report`` sees the result grow and may stop
    it (returning False): the result then says ``stopped``, with its cost so far and the model as it was, but no
    accuracy.
    ``train``, ``test``: training and test images (default: the task's training split, the lab's test set)."""
    chosen, budget = get_method(method), budget or Budget()
    check_sparsity(sparsity)
    train = train if train is not None else training_split(lab)
    if budget.train_images is not None and budget.train_images < len(train):
        idx = stratified_indices(train.labels, budget.train_images)
        train = dataclasses.replace(train, images=train.images[idx], labels=train.labels[idx])
    test = test if test is not None else lab.loaded.eval_data()
    idx = stratified_indices(test.labels, CURVE_IMAGES)
    result = MethodResult(method, sparsity, budget, train_images=len(train), paper=chosen.paper)
    run = Run(lab, sparsity, budget, train, result, report, (test.images[idx], test.labels[idx]))
    result.total_steps = chosen.planned(budget, run.final_steps)
    try:
        model, masks = chosen.run(run)
    except Stopped:
        result.stopped = True
        return result
    model = model.to(memory_format=torch.contiguous_format).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    result.model, result.masks = model, masks
    result.weight_sparsity = zero_fraction(model)
    result.accuracy = accuracy(model, test)
    run.tell()
    return result


FILES = {
    "model.safetensors": "the trained sparse weights (pruned entries exactly zero)",
    "masks.pt": "the keep masks by parameter name (torch.load(..., weights_only=True))",
    "result.json": "top-1 on the test split, the training curve, the cost and the budget",
}


def write_result(result: MethodResult, model_name: str, out: Path) -> dict[str, Path]:
    """Write FILES for a finished ``result`` into the folder ``out`` (created); returns their paths."""
    if result.model is None or result.accuracy is None:
        raise InvalidArgumentError(f"the {result.method} run was stopped: there is no trained model to write")
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in FILES}
    meta = {"prunekit_model": model_name, "method": result.method, "sparsity": str(result.sparsity)}
    paths["model.safetensors"].write_bytes(safetensors_bytes(result.model, meta))
    torch.save({k: v.clone() for k, v in result.masks.items()}, paths["masks.pt"])
    paths["result.json"].write_text(json.dumps({"model": model_name, **result.to_json()}, indent=2) + "\n")
    return paths

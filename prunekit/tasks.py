"""The use cases: what a user runs on a model, the same from Python, the CLI and the pages.

``load`` and ``list_models`` open the zoo; a :class:`Lab` (the engine's lab with these verbs) scans per-layer
sensitivity, plans per-layer sparsities for a budget, sweeps sparsities, exports, recovers and shows what
pruning forgets. Accuracies are measured by evaluation jobs, in this process or where :class:`RunOptions`
says (local worker processes, a Ray cluster): the figures are the same wherever they run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prunekit.core import lab as engine
from prunekit.core.budget import Costs, Plan, Target, plan
from prunekit.core.evaluate import Accuracy
from prunekit.core.forget import Forgetting, compare
from prunekit.core.importance import CRITERIA, get_criterion
from prunekit.core.oracle import Agreement, Oracle, agreement
from prunekit.core.result import PruneResult
from prunekit.core.sensitivity import SensitivityRow
from prunekit.core.spec import PruneSpec, Structure
from prunekit.deploy.export import Bundle, build_bundle, export_report, write_bundle
from prunekit.deploy.latency import LatencyConfig
from prunekit.deploy.methods import Budget, MethodResult, get_method
from prunekit.deploy.methods import train_sparse as train_sparse_model
from prunekit.deploy.recover import Recipe, Recovery
from prunekit.deploy.recover import recover as recover_model
from prunekit.errors import InvalidArgumentError, PrunekitError, UntrainedModelError
from prunekit.models import custom, zoo
from prunekit.progress import Bar
from prunekit.service.codec import Outcome
from prunekit.service.fanout import (
    Backend,
    Progress,
    oracle_jobs,
    plan_job,
    run_jobs,
    run_sharded,
    sensitivity_jobs,
    sensitivity_rows,
    sweep_jobs,
)
from prunekit.service.jobs import ESTIMATE_IMAGES, EvalJob, JobError, PredictJob

SCAN_GRID = (0.3, 0.6, 0.9)  # a sensitivity scan's sparsities per layer
PLAN_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # the plan's scan: dense is always an option
SWEEP_GRID = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass(frozen=True)
class RunOptions:
    """Where evaluation jobs run and how their progress is told: ``backend`` (this process by default),
    ``shard_size`` images per job on an ImageFolder, ``progress(done, total)`` as points finish (by default a
    tqdm bar: a widget in a notebook, a bar on a terminal, a plain line now and then in a log; None: silent)."""

    backend: Backend = field(default_factory=Backend)
    shard_size: int = 1000
    progress: Progress | None = field(default_factory=lambda: Bar("evaluating"))


def list_models() -> list[zoo.ZooEntry]:
    """Every model the zoo offers (name, family, data set, parameters, whether its weights are here)."""
    return zoo.list_models()


def load(name: str, download: bool = False, eval_folder: str | Path | None = None) -> Lab:
    """The zoo's model ``name`` as a lab: a bundled one, a torchvision name, or ``timm/<name>`` (``prunekit
    list``), evaluated on ``eval_folder`` (an ImageFolder, e.g. :func:`prunekit.imagenette_folder`) when given.
    ``download`` lets torchvision or timm fetch missing weights (online); without them a model is untrained."""
    if eval_folder is None:
        return Lab(zoo.load(name, download=download))
    return Lab(zoo.load_on_folder(name, str(eval_folder), download))


def require_trained(lab: engine.Lab) -> None:
    """Refuse accuracy work on a model whose weights are random (its accuracy means nothing)."""
    if not lab.loaded.pretrained:
        raise UntrainedModelError(
            f"model '{lab.loaded.name}' is untrained (no cached weights), so its accuracy means nothing; "
            "download its weights when online or put them in the torch hub cache"
        )


def measure(lab: engine.Lab, jobs: list[EvalJob], run: RunOptions | None = None) -> dict[EvalJob, Outcome]:
    """Every job's outcome, where ``run`` says; raises :class:`PrunekitError` naming the first failed point."""
    run = run or RunOptions()
    spec = lab.loaded.spec or custom.portable(lab.loaded).spec  # your own model travels as cloudpickle bytes
    folder = lab.loaded.eval_folder
    if folder is None:
        outcomes = run_jobs(jobs, spec, lab.fingerprint, run.backend, run.progress)
    else:
        outcomes = run_sharded(
            jobs, len(folder), run.shard_size, lambda p: run_jobs(p, spec, lab.fingerprint, run.backend, run.progress)
        )
    failed = [o.message for o in outcomes.values() if isinstance(o, JobError)]
    if failed:
        raise PrunekitError(f"{len(failed)} of {len(jobs)} points failed; the first: {failed[0]}")
    return outcomes


def _check_images(lab: engine.Lab, images: int | None) -> None:
    if images is not None and lab.loaded.eval_folder is not None:
        raise InvalidArgumentError(
            "an image limit and an evaluation folder do not go together: a folder is scored whole"
        )


def sensitivity(
    lab: engine.Lab,
    criterion: str = "magnitude",
    structure: Structure | str = Structure.UNSTRUCTURED,
    sparsities: Sequence[float] = SCAN_GRID,
    images: int | None = None,
    run: RunOptions | None = None,
) -> list[SensitivityRow]:
    """Each layer (or filter cluster) pruned alone to each of ``sparsities``, the rest dense: its accuracy
    on the first ``images`` of a stratified subset (None: the whole split) beside the dense model's."""
    require_trained(lab)
    _check_images(lab, images)
    if Structure.parse(structure).pattern is not None:
        raise InvalidArgumentError(f"an N:M pattern fixes its sparsity: scan '{Structure.UNSTRUCTURED}' or 'filter'")
    template = EvalJob(lab.loaded.name, PruneSpec(criterion, structure), subset=images)
    jobs = sensitivity_jobs(lab, template, sparsities)
    got = measure(lab, jobs, run)
    return sensitivity_rows(jobs, [got[job] for job in jobs])


@dataclass(frozen=True)
class PlanReport:
    """A budget's plan, measured: the pruned tensors' ratios and the full split's accuracy beside the
    scan's prediction (dense accuracy less the layers' drops, added up)."""

    model: str
    target: Target
    plan: Plan
    result: PruneResult  # the plan's weights, measured
    dense: Accuracy
    measured: Accuracy
    scan_images: int
    scan_estimate: bool

    @property
    def macs_ratio(self) -> float:
        return self.result.macs_ratio

    @property
    def params_ratio(self) -> float:
        return self.result.params_ratio

    @property
    def ratio_dict(self) -> dict[str, float]:
        """Torch-Pruning's ``pruning_ratio_dict``: the pruned layers by dotted name."""
        return {name: s for name, s in self.plan.sparsities.items() if s > 0}

    @property
    def met(self) -> bool:
        return self.target.met_by(self.macs_ratio, self.params_ratio, self.dense.top1 - self.measured.top1)

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "target": self.target.text(),
            "met": self.met,
            "plan": self.plan.sparsities,
            "pruning_ratio_dict": self.ratio_dict,
            "macs_ratio": self.macs_ratio,
            "params_ratio": self.params_ratio,
            "accuracy": {
                "dense": self.dense.top1,
                "predicted": self.dense.top1 - self.plan.predicted_drop,
                "measured": self.measured.top1,
                "measured_interval": self.measured.interval(),
                "images": self.measured.n,
            },
            "scan": {
                "images": self.scan_images,
                "estimate": self.scan_estimate,
                "predicted_drop": self.plan.predicted_drop,
            },
            "solver": "exact multiple-choice knapsack over Pareto frontiers; drops added up, negative ones as 0",
        }


def plan_for(
    lab: engine.Lab,
    target: Target | str,
    criterion: str = "magnitude",
    sparsities: Sequence[float] = PLAN_GRID,
    images: int | None = ESTIMATE_IMAGES,
    run: RunOptions | None = None,
) -> PlanReport:
    """Per-layer sparsities that meet ``target`` (``macs=0.5``, ``params=0.3``, ``drop=0.01``) with the least
    predicted accuracy drop: a sensitivity scan on ``images``, an exact knapsack over its rows, then the plan
    measured on the pruned tensors and the full split. Raises when the scan's grid cannot meet the target."""
    target = Target.parse(target) if isinstance(target, str) else target
    rows = sensitivity(lab, criterion, Structure.UNSTRUCTURED, sparsities, images, run)
    chosen = plan(Costs.of(lab.profile, lab.loaded.model), rows, target)
    template = EvalJob(lab.loaded.name, PruneSpec(criterion))
    dense, planned = EvalJob(lab.loaded.name), plan_job(template, chosen.sparsities)
    got = measure(lab, [dense, planned], run)
    result = lab.pruner(planned.spec).prune(planned.spec, paths=False)
    first = rows[0]
    return PlanReport(lab.loaded.name, target, chosen, result, got[dense], got[planned], first.images, first.estimate)


@dataclass(frozen=True)
class SweepReport:
    """One spec at several sparsities: each result (with its accuracy) and where its scope collapses."""

    results: list[PruneResult]
    accuracies: list[tuple[Accuracy, Accuracy]]  # (dense, pruned) per result
    collapse_point: float | None
    probe_note: str | None


def sweep(
    lab: engine.Lab,
    spec: PruneSpec,
    sparsities: Sequence[float] = SWEEP_GRID,
    images: int | None = None,
    run: RunOptions | None = None,
) -> SweepReport:
    """``spec`` at each of ``sparsities``: the pruning figures, the accuracy (on ``images`` of a stratified
    subset, None: the whole split) and the smallest sparsity at which the scope collapses the network."""
    require_trained(lab)
    _check_images(lab, images)
    jobs = sweep_jobs(EvalJob(lab.loaded.name, spec.at(0.0), subset=images), sparsities)
    got = measure(lab, jobs, run)
    pruner = lab.pruner(spec)
    results = [pruner.prune(job.spec) for job in jobs[1:]]
    accuracies = [(got[jobs[0]], got[job]) for job in jobs[1:]]
    return SweepReport(results, accuracies, pruner.collapse_point(spec), lab.probe_unavailable)


@dataclass(frozen=True)
class ExportReport:
    """The export files of one spec, what they measure (latency, ratios) and where they were written."""

    bundle: Bundle
    report: dict
    files: dict[str, Path]


def export(
    lab: engine.Lab, spec: PruneSpec, out: str | Path | None = None, latency: LatencyConfig | None = None
) -> ExportReport:
    """Masks, the per-layer ratio dict, a loading snippet, safetensors and ONNX of ``spec`` (the compacted model
    for filters, checked against the masked one), timed; written into the folder ``out`` when given."""
    bar = Bar("export", unit="step")
    bar.update(0, 3, "masks, compaction, ONNX")
    pruner = lab.pruner(spec)
    bundle = build_bundle(pruner, spec)
    bar.update(1, 3, "writing files" if out is not None else "")
    files = write_bundle(bundle, Path(out)) if out is not None else {}
    bar.update(2, 3, "timing latency")
    report = export_report(lab, pruner, bundle, latency)
    bar.update(3, 3)
    return ExportReport(bundle, report, files)


def recovery_bar(desc: str = "fine-tune") -> Callable[[Recovery], bool]:
    """A recovery's ``progress`` drawn as a tqdm bar of optimizer steps, the last estimate beside it."""
    bar = Bar(desc, unit="step")

    def show(r: Recovery) -> bool:
        if r.total_steps:
            bar.update(r.step, r.total_steps, f"estimate {r.curve[-1].top1:.2%}" if r.curve else "")
        return True

    return show


def method_bar() -> Callable[[MethodResult], bool]:
    """A training method's ``progress`` drawn as a tqdm bar of steps (the total is the method's own estimate)."""
    bar = Bar("training", unit="step")

    def show(r: MethodResult) -> bool:
        if r.total_steps:
            bar.desc = r.method
            bar.update(min(r.steps, r.total_steps), r.total_steps, f"estimate {r.curve[-1][1]:.2%}" if r.curve else "")
        return True

    return show


def recover(
    lab: engine.Lab,
    spec: PruneSpec,
    recipe: Recipe | None = None,
    progress: Callable[[Recovery], bool] | None = None,
) -> Recovery:
    """``spec`` applied, then recovered by ``recipe`` (BatchNorm recalibration, a masked fine-tune, one-shot,
    iterative or AGP): the accuracies before and after, the fine-tune's curve and the recovered model.
    ``progress`` sees the recovery as it grows and may stop it by returning False (None: a tqdm bar of steps)."""
    require_trained(lab)
    return recover_model(lab, spec, recipe or Recipe(), progress or recovery_bar())


def train_sparse(
    lab: engine.Lab,
    method: str,
    sparsity: float,
    budget: Budget | None = None,
    progress: Callable[[MethodResult], bool] | None = None,
) -> MethodResult:
    """Reach ``sparsity`` by ``method`` (see ``prunekit.deploy.methods.METHODS``: lottery ticket, learning-rate
    rewinding, SNIP, GraSP, SynFlow, SET, RigL, slimming, distillation, train-prune-fine-tune), its final training
    ``budget`` the same for every method: the trained sparse model, its masks, its top-1 on the test split and its
    cost. ``progress`` sees the run as it grows and may stop it by returning False (None: a tqdm bar of steps)."""
    if get_method(method).needs_trained:
        require_trained(lab)
    return train_sparse_model(lab, method, sparsity, budget or Budget(), progress or method_bar())


def forget(lab: engine.Lab, spec: PruneSpec, run: RunOptions | None = None) -> Forgetting:
    """What ``spec`` makes the model forget: per-class accuracy against the dense model's, the images it now
    gets wrong and where they go, and McNemar's exact test (every image of the evaluation set)."""
    require_trained(lab)
    if lab.loaded.eval_folder is not None:
        raise InvalidArgumentError("forget compares every image's prediction in memory: not on an evaluation folder")
    dense, pruned = PredictJob(lab.loaded.name), PredictJob(lab.loaded.name, spec)
    got = measure(lab, [dense, pruned], run)
    labels = lab.loaded.eval_data().labels
    return compare(labels, got[dense].tensor(), got[pruned].tensor(), lab.loaded.classes)


@dataclass(frozen=True)
class OracleReport:
    """The oracle of a model (every channel's measured loss increase) and each criterion against it;
    ``skipped``: criteria that could not score this model's filters, and why."""

    model: str
    truth: Oracle
    agreements: list[Agreement]
    skipped: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "oracle": self.truth.to_json(),
            "criteria": [
                {"criterion": a.criterion, "overall": a.overall, "median_per_layer": a.median_group}
                | {"per_layer": a.per_group, "channels": a.channels}
                for a in self.agreements
            ],
            "skipped": self.skipped,
        }


def oracle(
    lab: engine.Lab,
    images: int | None = None,
    criteria: Sequence[str] | None = None,
    run: RunOptions | None = None,
) -> OracleReport:
    """Every channel group's true importance (``prunekit.core.oracle``) on a stratified subset of ``images``
    evaluation images (None: the whole split), and every filter criterion (or ``criteria``) against it. The
    groups are measured in slices, in this process or by ``run``'s workers or Ray cluster, with its progress."""
    require_trained(lab)
    if lab.loaded.eval_folder is not None:
        raise InvalidArgumentError("the oracle scores its images in memory: not on an evaluation folder")
    if images is not None and images <= 0:
        raise InvalidArgumentError(f"images must be a positive count or None (the whole split), got {images}")
    names = list(criteria) if criteria is not None else [n for n, c in CRITERIA.items() if c.supports(Structure.FILTER)]
    for name in names:
        get_criterion(name)  # an unknown name fails before the long part
    jobs = oracle_jobs(lab, lab.loaded.name, images)
    got = measure(lab, jobs, run)
    truth = Oracle.merged([got[job] for job in jobs])
    agreements, skipped = [], {}
    for name in names:
        try:
            agreements.append(agreement(truth, lab.table(name, Structure.FILTER)))
        except PrunekitError as exc:
            skipped[name] = str(exc)
    return OracleReport(lab.loaded.name, truth, agreements, skipped)


class Lab(engine.Lab):
    """The engine's lab (profile, score tables, ``prune``, ``result``, ``pruner``) with the use cases as
    methods; ``prunekit.load`` and ``prunekit.Lab.from_model`` give one."""

    def sensitivity(self, criterion: str = "magnitude", structure: Structure | str = Structure.UNSTRUCTURED,
                    sparsities: Sequence[float] = SCAN_GRID, images: int | None = None,
                    run: RunOptions | None = None) -> list[SensitivityRow]:  # fmt: skip
        """See :func:`prunekit.tasks.sensitivity`."""
        return sensitivity(self, criterion, structure, sparsities, images, run)

    def plan(self, target: Target | str, criterion: str = "magnitude", sparsities: Sequence[float] = PLAN_GRID,
             images: int | None = ESTIMATE_IMAGES, run: RunOptions | None = None) -> PlanReport:  # fmt: skip
        """See :func:`prunekit.tasks.plan_for`."""
        return plan_for(self, target, criterion, sparsities, images, run)

    def sweep(self, spec: PruneSpec, sparsities: Sequence[float] = SWEEP_GRID, images: int | None = None,
              run: RunOptions | None = None) -> SweepReport:  # fmt: skip
        """See :func:`prunekit.tasks.sweep`."""
        return sweep(self, spec, sparsities, images, run)

    def export(
        self, spec: PruneSpec, out: str | Path | None = None, latency: LatencyConfig | None = None
    ) -> ExportReport:
        """See :func:`prunekit.tasks.export`."""
        return export(self, spec, out, latency)

    def recover(self, spec: PruneSpec, recipe: Recipe | None = None,
                progress: Callable[[Recovery], bool] | None = None) -> Recovery:  # fmt: skip
        """See :func:`prunekit.tasks.recover`."""
        return recover(self, spec, recipe, progress)

    def forget(self, spec: PruneSpec, run: RunOptions | None = None) -> Forgetting:
        """See :func:`prunekit.tasks.forget`."""
        return forget(self, spec, run)

    def oracle(self, images: int | None = None, criteria: Sequence[str] | None = None,
               run: RunOptions | None = None) -> OracleReport:  # fmt: skip
        """See :func:`prunekit.tasks.oracle`."""
        return oracle(self, images, criteria, run)

    def train_sparse(self, method: str, sparsity: float, budget: Budget | None = None,
                     progress: Callable[[MethodResult], bool] | None = None) -> MethodResult:  # fmt: skip
        """See :func:`prunekit.tasks.train_sparse`."""
        return train_sparse(self, method, sparsity, budget, progress)

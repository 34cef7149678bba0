"""What a page can show of accuracies while the evaluation service works: for each figure a
:class:`Reading` (the full-split value, a marked estimate, an error, or nothing yet). Pages poll
these; nothing here waits for an evaluation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field

from prunekit.core.connectivity import Connectivity
from prunekit.core.evaluate import Accuracy
from prunekit.core.lab import Lab
from prunekit.core.oracle import GroupScores, Oracle, agreement
from prunekit.core.result import PruneResult
from prunekit.core.sensitivity import SensitivityRow
from prunekit.core.spec import PruneSpec, Structure
from prunekit.deploy.recover import Recovery
from prunekit.deploy.training import MethodResult
from prunekit.service.codec import Outcome
from prunekit.service.evaluation import EvalService
from prunekit.service.fanout import oracle_jobs, sensitivity_jobs, sensitivity_rows
from prunekit.service.jobs import (
    Collapse,
    CollapseJob,
    EvalJob,
    JobError,
    MethodJob,
    PathJob,
    RecoverJob,
    ScoresJob,
)
from prunekit.service.queue import ASKED, LIVE_ESTIMATE, LIVE_FULL, curve_grid


@dataclass(frozen=True)
class Reading:
    """What is known of one accuracy: the full-split figure, a marked estimate, or an error."""

    full: Accuracy | None = None
    estimate: Accuracy | None = None
    error: str | None = None

    @property
    def best(self) -> Accuracy | None:
        return self.full or self.estimate

    @property
    def pending(self) -> bool:
        return self.full is None and self.error is None


def reading(full: Outcome | None, estimate: Outcome | None = None) -> Reading:
    """Combine the outcomes of a full-split job and its estimate (either may still be missing)."""
    errors = [v.message for v in (full, estimate) if isinstance(v, JobError)]
    good = [v if isinstance(v, Accuracy) else None for v in (full, estimate)]
    return Reading(good[0], good[1], errors[0] if errors else None)


@dataclass(frozen=True)
class PointView:
    """The accuracies at the slider: dense and each scope."""

    dense: Reading
    scopes: dict[str, Reading]
    jobs: dict[str, tuple[EvalJob | None, EvalJob]] = field(default_factory=dict)  # "dense" or a scope -> (est, full)

    @property
    def pending(self) -> bool:
        return any(r.pending for r in (self.dense, *self.scopes.values()))


def read_point(
    svc: EvalService,
    template: EvalJob,
    scopes: Iterable[str],
    estimate: int | None,
    session: str,
    ask: bool = True,
) -> PointView:
    """Dense and per-scope readings at ``template.sparsity``; estimates on ``estimate`` images first.

    ``ask=True`` sends them as this session's live request (replacing its previous one); ``ask=False``
    only reads what is known."""
    points = {"dense": EvalJob(template.model)} | {s: template.with_scope(s) for s in scopes}
    asked = [(job, LIVE_FULL) for job in points.values()]
    asked += [(job.with_subset(estimate), LIVE_ESTIMATE) for job in points.values()] if estimate else []
    known = svc.request(asked, session) if ask else {job.canonical(): svc.lookup(job) for job, _ in asked}

    def read(job: EvalJob) -> Reading:
        est = known.get(job.with_subset(estimate).canonical()) if estimate else None
        return reading(known.get(job.canonical()), est)

    readings = {name: read(job) for name, job in points.items()}
    jobs = {name: (job.with_subset(estimate) if estimate else None, job) for name, job in points.items()}
    return PointView(readings.pop("dense"), readings, jobs)


def with_paths(svc: EvalService, template: EvalJob, results: dict[str, PruneResult], session: str) -> dict:
    """Each scope's result (measured without the path test) with the path test an evaluation worker
    measures for it: as it is while the test runs (``paths_pending``), with ``probe_note`` if it failed."""
    jobs = {scope: PathJob.like(template.with_scope(scope), subset=None, shard=None) for scope in results}
    known = svc.request([(job, LIVE_ESTIMATE) for job in jobs.values()], session)
    out = {}
    for scope, r in results.items():
        got = known[jobs[scope]]
        if isinstance(got, Connectivity):
            out[scope] = r.with_paths(got)
        elif isinstance(got, JobError):
            out[scope] = dataclasses.replace(r, probe_note=f"the path test failed: {got.message}")
        else:
            out[scope] = r
    return out


def read_curves(svc: EvalService, template: EvalJob, scopes: Iterable[str]) -> dict[str, dict[float, float]]:
    """Per scope: sparsity -> full-split top-1 known so far on the slider's grid."""
    return {
        scope: {s: acc.top1 for s, acc in sorted(svc.curve(template.with_scope(scope)).items())} for scope in scopes
    }


def curve_points() -> int:
    """Grid points per scope on a complete curve."""
    return len(curve_grid())


def tradeoff(
    svc: EvalService, lab: Lab, template: EvalJob, recipes: list[PruneSpec], sparsities, session: str
) -> dict[PruneSpec, dict]:
    """Per recipe (a spec whose sparsity the curve varies): sparsity, theoretical speedup and top-1 (None
    while pending) on ``template``'s subset, errors, and the scope's collapse point (``collapse_pending`` while
    an evaluation worker bisects it, on models too big to do it in a rerun). Asks for what is missing."""
    jobs = {(recipe, s): dataclasses.replace(template, spec=recipe.at(s)) for recipe in recipes for s in sparsities}
    collapses = {} if lab.paths_inline or lab.probe_unavailable else {r: _collapse_job(template, r) for r in recipes}
    asked = [(job, LIVE_FULL) for job in jobs.values()] + [(job, LIVE_FULL) for job in collapses.values()]
    known = svc.request(asked, session)
    return {
        recipe: _recipe_curve(
            lab, template, recipe, sparsities, [known[jobs[(recipe, s)].canonical()] for s in sparsities]
        )
        | _collapse(lab, template, recipe, known.get(collapses.get(recipe)), recipe in collapses)
        for recipe in recipes
    }


def _collapse_job(template: EvalJob, recipe: PruneSpec) -> CollapseJob:
    return CollapseJob.like(template, spec=recipe.at(0.0), subset=None)


def _collapse(lab: Lab, template: EvalJob, recipe: PruneSpec, outcome, apart: bool) -> dict:
    """The recipe's collapse point: measured here on a small model, by a worker (``apart``) on a big one."""
    if not apart:
        return {"collapse_point": lab.collapse_point(recipe.at(0.0))}
    point = outcome.point if isinstance(outcome, Collapse) else None
    errors = [f"collapse point: {outcome.message}"] if isinstance(outcome, JobError) else []
    return {"collapse_point": point, "collapse_pending": outcome is None, "collapse_errors": errors}


def _recipe_curve(lab: Lab, template: EvalJob, recipe: PruneSpec, sparsities, outcomes: list) -> dict:
    return {
        "sparsity": list(sparsities),
        "speedup": [lab.result(recipe.at(s), paths=False).theoretical_speedup for s in sparsities],
        "accuracy": [o.top1 if isinstance(o, Accuracy) else None for o in outcomes],
        "interval": [o.interval() if isinstance(o, Accuracy) else None for o in outcomes],  # 95% Wilson
        "errors": [o.message for o in outcomes if isinstance(o, JobError)],
    }


@dataclass(frozen=True)
class SensitivityView:
    """A sensitivity scan as far as it has come: rows measured so far, in scan order."""

    rows: list[SensitivityRow]
    done: int
    total: int
    errors: list[str]

    @property
    def complete(self) -> bool:
        return self.done == self.total


def read_sensitivity(
    svc: EvalService, lab: Lab, template: EvalJob, sparsities: Iterable[float], session: str
) -> SensitivityView:
    """Ask for every point of the scan (one job per layer and sparsity, spread over the workers or
    the Ray cluster) and read what has landed."""
    jobs = sensitivity_jobs(lab, template, sparsities)
    known = svc.request([(job, LIVE_FULL) for job in jobs], session)
    outcomes = [known[job.canonical()] for job in jobs]
    errors = [o.message for o in outcomes if isinstance(o, JobError)]
    done = sum(o is not None for o in outcomes)
    return SensitivityView(sensitivity_rows(jobs, outcomes), done, len(jobs), errors)


def read_recovery(
    svc: EvalService, job: RecoverJob, session: str, start: bool
) -> tuple[Outcome | None, Recovery | None]:
    """(outcome if finished, progress if running). ``start`` queues ``job`` as the session's request for
    its schedule (requests for other schedules and for accuracies are not superseded by it)."""
    outcome = svc.request([(job, LIVE_FULL)], f"{session}:recover:{job.recipe.schedule}")[job] if start else None
    return outcome or svc.lookup(job), svc.progress(job)


@dataclass(frozen=True)
class ScheduleView:
    """The schedules' comparison: a table row and a curve per schedule, and whether any still runs."""

    rows: list[dict]
    curves: dict[str, list]
    baseline: Recovery | None  # a run whose dense and recalibrated accuracies are the baselines
    running: bool


def read_schedules(svc: EvalService, jobs: Iterable[RecoverJob], session: str, start: bool) -> ScheduleView:
    rows, curves, baseline, running = [], {}, None, False
    for job in jobs:
        outcome, progress = read_recovery(svc, job, session, start)
        label = f"{job.recipe.schedule} ({job.recipe.steps} step{'s' if job.recipe.steps > 1 else ''})"
        r = outcome if isinstance(outcome, Recovery) else progress
        running |= outcome is None
        rows.append(_schedule_row(label, outcome, r))
        if r is not None:
            curves[label], baseline = r.curve, baseline or r
    return ScheduleView(rows, curves, baseline, running)


def _schedule_row(label: str, outcome: Outcome | None, r: Recovery | None) -> dict:
    acc = r.accuracy.get("finetuned") if isinstance(outcome, Recovery) else None
    status = outcome.message if isinstance(outcome, JobError) else "done" if acc else "running" if r else "queued"
    return {
        "schedule": label,
        "fine-tuned top-1": f"{acc.top1:.2%} ({acc.interval_label()})" if acc else "",
        "steps done": f"{r.step} / {r.total_steps}" if r else "",
        "status": status,
    }


@dataclass(frozen=True)
class MethodReading:
    """One method job as a page shows it: its finished outcome, or its progress while it trains."""

    job: MethodJob
    outcome: Outcome | None
    progress: MethodResult | None

    @property
    def result(self) -> MethodResult | None:
        """The finished result, else the latest progress (None: queued, or not asked for)."""
        return self.outcome if isinstance(self.outcome, MethodResult) else self.progress

    @property
    def running(self) -> bool:
        return self.outcome is None and self.progress is not None


def read_methods(svc: EvalService, jobs: Iterable[MethodJob], session: str, start: bool) -> list[MethodReading]:
    """Each method job's outcome (stored results are found without running anything); ``start`` asks for the
    missing ones as ``session``'s request."""
    jobs = list(jobs)
    known = svc.request([(job, LIVE_FULL) for job in jobs], f"{session}:methods") if start else {}
    return [MethodReading(job, known.get(job) or svc.lookup(job), svc.progress(job)) for job in jobs]


@dataclass(frozen=True)
class OracleView:
    """The oracle of one model on one image set as far as it is measured: ``truth`` once every slice is in
    (None before), the channels measured so far of ``total``, and the first failure's words."""

    truth: Oracle | None
    done: int
    total: int
    error: str | None = None

    @property
    def running(self) -> bool:
        return self.truth is None and self.error is None and self.done < self.total


def read_oracle(svc: EvalService, lab: Lab, model: str, images: int | None, session: str, start: bool) -> OracleView:
    """The oracle's slices (``fanout.oracle_jobs``) as known; ``start`` asks for the missing ones (at
    :data:`ASKED`, after every live figure of the room), otherwise only what is stored is read."""
    jobs = oracle_jobs(lab, model, images)
    known = svc.request([(job, ASKED) for job in jobs], f"{session}:oracle") if start else {}
    got = {job: known.get(job) or svc.lookup(job) for job in jobs}
    error = next((o.message for o in got.values() if isinstance(o, JobError)), None)
    done = [o for o in got.values() if isinstance(o, Oracle)]
    measured = sum(o.channels for o in done)
    total = sum(job.channels[1] - job.channels[0] for job in jobs)
    truth = Oracle.merged([got[job] for job in jobs]) if len(done) == len(jobs) else None
    return OracleView(truth, measured, total, error)


def read_calibration(
    svc: EvalService,
    model: str,
    truth: Oracle,
    criteria: Iterable[str],
    sizes: Iterable[int | None],
    session: str,
    start: bool,
) -> dict[str, list[tuple[int | None, float | None, bool]]]:
    """Per criterion and calibration size: (size, its Spearman with ``truth`` or None, still measuring?).
    ``start`` asks the workers for the scores not known yet (at :data:`ASKED`)."""
    jobs = {(c, n): ScoresJob(model, PruneSpec(c, Structure.FILTER), subset=n) for c in criteria for n in sizes}
    known = svc.request([(job, ASKED) for job in jobs.values()], f"{session}:calibration") if start else {}
    out: dict[str, list[tuple[int | None, float | None, bool]]] = {}
    for (criterion, n), job in jobs.items():
        got = known.get(job) or svc.lookup(job)
        rho = agreement(truth, got).overall if isinstance(got, GroupScores) else None
        out.setdefault(criterion, []).append((n, rho, got is None))
    return out

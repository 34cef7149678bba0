"""Sweeps and sensitivity scans as many small evaluation jobs, run in this process, on local worker
processes or on a Ray cluster; the results are the same whichever runs them.

Through the evaluation service (local workers or Ray), every finished point lands in the result store,
so a sweep interrupted as a whole resumes from the points already measured.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prunekit.core.evaluate import Accuracy, combine
from prunekit.core.lab import Lab
from prunekit.core.loaded import ModelSpec
from prunekit.core.oracle import slices
from prunekit.core.sensitivity import SensitivityRow
from prunekit.core.spec import Allocation, Scope
from prunekit.errors import InvalidArgumentError
from prunekit.service.codec import Outcome
from prunekit.service.evaluation import EvalService, open_service
from prunekit.service.jobs import EvalJob, JobError, OracleJob
from prunekit.service.protocol import Status
from prunekit.service.queue import LIVE_FULL
from prunekit.service.runner import JobRunner
from prunekit.service.store import ResultStore
from prunekit.service.worker import answer

Progress = Callable[[int, int], None]  # (points done, points in all)
POLL_S = 0.05


@dataclass(frozen=True)
class Backend:
    """Where jobs run: ``ray`` (an address, 'auto' or 'local'), else ``workers`` local processes, else
    (``workers=0``) this process."""

    ray: str | None = None
    workers: int = 0
    store: ResultStore | None = None

    @property
    def in_process(self) -> bool:
        return not self.ray and self.workers == 0


def sweep_jobs(template: EvalJob, sparsities: Iterable[float]) -> list[EvalJob]:
    """The dense job, then ``template`` at each sparsity."""
    return [EvalJob(template.model, subset=template.subset)] + [template.at(s) for s in sparsities]


def sensitivity_jobs(lab: Lab, template: EvalJob, sparsities: Iterable[float]) -> list[EvalJob]:
    """The dense job, then one job per (unit set, sparsity): that set pruned locally, everything else dense."""
    sets = lab.table(*template.spec.table_key).sets
    points = [_alone(template, ((unit_set.name, s),)) for unit_set in sets for s in sparsities]
    return [EvalJob(template.model, subset=template.subset), *points]


def oracle_jobs(lab: Lab, model: str, images: int | None) -> list[OracleJob]:
    """The oracle of ``lab``'s model as slices of its channel groups (``core.oracle.slices``), on a stratified
    subset of ``images`` evaluation images (None: the whole split); ``model`` is its key in the service."""
    count = len(lab.loaded.eval_data()) if images is None else images
    return [
        OracleJob(model, subset=images, group=group, channels=(start, stop))
        for group, start, stop in slices(lab.clusters, count, lab.profile)
    ]


def _alone(template: EvalJob, overrides: tuple[tuple[str, float], ...]) -> EvalJob:
    """``template`` pruning only the sets ``overrides`` names, each to its own sparsity (the rest dense)."""
    return template.with_spec(
        sparsity=0.0, allocation=Allocation(Scope.LOCAL, template.spec.normalise), overrides=overrides
    )


def plan_job(template: EvalJob, sparsities: dict[str, float]) -> EvalJob:
    """The job that measures a plan: every layer at its own sparsity (the others dense), full split."""
    chosen = tuple(sorted((name, s) for name, s in sparsities.items() if s > 0))
    return dataclasses.replace(_alone(template, chosen), subset=None)


def sensitivity_rows(jobs: list[EvalJob], outcomes: list[Outcome | None]) -> list[SensitivityRow]:
    """Rows for the points measured so far of :func:`sensitivity_jobs`' ``jobs`` (none before the dense one)."""
    dense = outcomes[0]
    if not isinstance(dense, Accuracy):
        return []
    return [
        SensitivityRow(*job.spec.overrides[0], acc.top1, dense.top1, acc.n, acc.is_estimate)
        for job, acc in zip(jobs[1:], outcomes[1:], strict=True)
        if isinstance(acc, Accuracy)
    ]


def shard(jobs: list[EvalJob], images: int, size: int) -> dict[EvalJob, list[EvalJob]]:
    """Each full-split job cut into jobs over images ``[k * size, (k + 1) * size)`` of a set of ``images``:
    the workers read only their shard (an ImageFolder of 50,000 photos is never read whole)."""
    if size <= 0 or images <= 0:
        raise InvalidArgumentError(f"shards need a positive size and image count, got {size} and {images}")
    bounds = [(a, min(a + size, images)) for a in range(0, images, size)]
    return {job: [dataclasses.replace(job, shard=b) for b in bounds] for job in jobs}


def run_sharded(
    jobs: list[EvalJob], images: int, size: int, run: Callable[[list[EvalJob]], dict[EvalJob, Outcome]]
) -> dict[EvalJob, Outcome]:
    """``run`` the shards of ``jobs`` and add each job's shards up into one full-split accuracy."""
    parts = shard(jobs, images, size)
    got = run([part for group in parts.values() for part in group])
    out = {}
    for job, group in parts.items():
        outcomes = [got[part] for part in group]
        failed = next((o for o in outcomes if isinstance(o, JobError)), None)
        out[job] = failed or combine(outcomes, images)
    return out


def run_jobs(
    jobs: list[EvalJob], spec: ModelSpec, fingerprint: str, backend: Backend, progress: Progress | None = None
) -> dict[EvalJob, Outcome]:
    """Every job's outcome (keyed by the job as given). ``progress`` is called as points finish."""
    report = progress or (lambda done, total: None)
    if backend.in_process:
        return _in_process(jobs, spec, report)
    svc = open_service(backend.ray, backend.workers or (0 if backend.ray else None), backend.store)
    try:
        svc.register(jobs[0].model, spec, fingerprint)
        return collect(svc, jobs, report)
    finally:
        svc.close()


def collect(svc: EvalService, jobs: list[EvalJob], report: Progress, session: str = "") -> dict[EvalJob, Outcome]:
    """Ask ``svc`` for ``jobs`` and wait until all are known, reporting (done, total) as they land
    (jobs that are one measurement, e.g. every configuration at sparsity 0, count once)."""
    asked = [(job, LIVE_FULL) for job in jobs]
    total, done = len({job.canonical() for job in jobs}), -1
    while True:
        known = svc.request(asked, session)
        finished = sum(v is not None for v in known.values())
        if finished != done:
            done = finished
            report(done, total)
        if done == total:
            return {job: known[job.canonical()] for job in jobs}
        time.sleep(POLL_S)


def _in_process(jobs: list[EvalJob], spec: ModelSpec, report: Progress) -> dict[EvalJob, Outcome]:
    runner, out = JobRunner(), {}
    report(0, len(jobs))
    for i, job in enumerate(jobs):
        status, _, value = answer(runner, job, spec)  # loads once
        out[job] = value if status == Status.OK else JobError(value)
        report(i + 1, len(jobs))
    return out

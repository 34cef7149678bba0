"""The granularity ladder: one model at one sparsity pruned in weights, vectors, kernels, an N:M pattern and
filters, side by side (the fastai article's figure, measured): top-1 from the evaluation workers, the
theoretical speedup from the counted multiply-adds, and, when asked, the measured latency.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from prunekit.core.importance import CRITERIA
from prunekit.core.lab import Lab
from prunekit.core.nm import pattern_sparsity
from prunekit.core.result import PruneResult
from prunekit.core.spec import LADDER, PruneSpec, Structure
from prunekit.service.codec import Outcome
from prunekit.service.evaluation import EvalService
from prunekit.service.jobs import EvalJob, SpeedJob
from prunekit.service.queue import LIVE_FULL
from prunekit.service.readings import Reading, reading

DENSE_KERNELS_NOTE = (
    "Vectors and kernels zero slices of kernels that stay dense: the same multiply-adds still run on the zeros, "
    "so on this CPU they measure about 1x, like single weights; only filters shrink the layers."
)


@dataclass(frozen=True)
class Rung:
    """One granularity at the ladder's sparsity: its spec, its pruning result, top-1 and latency so far."""

    structure: Structure
    spec: PruneSpec
    result: PruneResult
    accuracy: Reading
    latency: Outcome | None  # None: not asked for, or still being measured


def ladder_specs(base: PruneSpec) -> dict[Structure, PruneSpec]:
    """``base`` at every rung: its criterion where that scores the rung (else the first data-free criterion
    that does), an N:M pattern at the sparsity it fixes, no per-layer overrides (they name one structure's
    units)."""
    specs = {}
    for structure in LADDER:
        criterion = base.criterion
        if not CRITERIA[criterion].supports(structure):
            criterion = next(n for n, c in CRITERIA.items() if c.supports(structure) and not c.needs_data)
        sparsity = pattern_sparsity(structure.pattern) if structure.pattern else base.sparsity
        specs[structure] = dataclasses.replace(
            base, criterion=criterion, structure=structure, sparsity=sparsity, overrides=()
        )
    return specs


def read_ladder(
    svc: EvalService, lab: Lab, template: EvalJob, base: PruneSpec, session: str, measure: bool
) -> list[Rung]:
    """Every rung of ``base`` on ``template``'s model and subset; asks for the accuracies (and, with
    ``measure``, the latencies) still missing, as one request of ``session``."""
    specs = ladder_specs(base)
    jobs = {s: dataclasses.replace(template, spec=spec) for s, spec in specs.items()}
    speeds = {s: SpeedJob.like(job, subset=None) for s, job in jobs.items()}
    asked = [(job, LIVE_FULL) for job in jobs.values()] + ([(j, LIVE_FULL) for j in speeds.values()] if measure else [])
    known = svc.request(asked, session)
    return [
        Rung(
            s,
            specs[s],
            lab.result(specs[s], paths=False),
            reading(known[jobs[s].canonical()]),
            known.get(speeds[s].canonical()) if measure else svc.lookup(speeds[s]),
        )
        for s in LADDER
    ]

"""The oracle for the pages: its slices from the evaluation service, every criterion against it, scatter points."""

from __future__ import annotations

from prunekit.app.server_state import model_key, register, service
from prunekit.app.session_state import error_text, session_id
from prunekit.core.importance import CRITERIA
from prunekit.core.lab import Lab
from prunekit.core.oracle import Agreement, Oracle, agreement, paired
from prunekit.core.spec import Structure
from prunekit.errors import PrunekitError
from prunekit.service import readings
from prunekit.service.fanout import oracle_jobs

ORACLE_IMAGES = (256, 1000, 2000, 5000, None)  # the oracle's image counts on offer (None: the whole split)
MOLCHANOV = 0.93  # Molchanov et al. 2019: Taylor scores correlate above this with the true importance


def oracle_view(current: Lab, images: int | None, start: bool) -> readings.OracleView:
    """The oracle of the session's model on ``images`` images, as far as the workers measured it."""
    svc = service()
    register(svc, current)
    return readings.read_oracle(svc, current, model_key(current), images, session_id(), start)


def stop_oracle(current: Lab, images: int | None) -> None:
    """Drop the oracle's queued slices (a running one finishes and is kept)."""
    svc = service()
    for job in oracle_jobs(current, model_key(current), images):
        svc.stop(job)


def oracle_agreements(current: Lab, truth: Oracle) -> tuple[list[Agreement], dict[str, str]]:
    """Every filter criterion against ``truth`` (its scores as the Prune page uses them), and why any could not
    be compared."""
    agreements, skipped = [], {}
    for name, crit in CRITERIA.items():
        if not crit.supports(Structure.FILTER):
            continue
        try:
            agreements.append(agreement(truth, current.table(name, Structure.FILTER)))
        except PrunekitError as exc:
            skipped[name] = error_text(exc)
    return agreements, skipped


def oracle_points(current: Lab, truth: Oracle, criterion: str) -> tuple[dict, int]:
    """Per layer, the points of a log-log scatter (score, increase, names) where both are positive, and how
    many channels that leaves out."""
    points, left_out = {}, 0
    for root, (scores, increases) in paired(truth, current.table(criterion, Structure.FILTER)).items():
        kept = [(s, t, j) for j, (s, t) in enumerate(zip(scores, increases, strict=True)) if s > 0 and t > 0]
        left_out += len(scores) - len(kept)
        if kept:
            points[root] = ([s for s, _, _ in kept], [t for _, t, _ in kept], [f"{root}[{j}]" for _, _, j in kept])
    return points, left_out


def data_criteria() -> list[str]:
    """The filter criteria whose scores read images: the ones a calibration size changes."""
    return [n for n, c in CRITERIA.items() if c.needs_data and c.supports(Structure.FILTER)]


def calibration_curve(
    current: Lab, truth: Oracle, start: bool
) -> dict[str, list[tuple[int | None, float | None, bool]]]:
    """Each data-driven criterion's Spearman with ``truth`` at every calibration size on offer (the workers
    score them; ``start`` asks for the missing ones)."""
    svc = service()
    register(svc, current)
    total = len(current.loaded.eval_data())
    sizes = [n for n in ORACLE_IMAGES if n is None or n < total]
    return readings.read_calibration(svc, model_key(current), truth, data_criteria(), sizes, session_id(), start)

"""The Forgetting page's readings: both scopes' per-image predictions at the slider, from the evaluation
workers, compared with the dense model's (never evaluated in the page's thread)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from prunekit.app.server_state import model_key, register, service, template
from prunekit.app.session_state import cfg, session_id
from prunekit.core.evaluate import Accuracy, Counts, from_counts
from prunekit.core.forget import Forgetting, McNemar, compare
from prunekit.core.lab import Lab
from prunekit.core.spec import COMPARED_SCOPES, PruneSpec
from prunekit.service.jobs import JobError, Predictions, PredictJob
from prunekit.service.queue import LIVE_FULL

GALLERY = 24  # flipped images shown at once


@dataclass(frozen=True)
class ForgetView:
    """Per scope: what its pruned model forgets (None while on its way), or why it could not be measured."""

    reports: dict[str, Forgetting | None]
    errors: dict[str, str]

    @property
    def pending(self) -> bool:
        return any(r is None and s not in self.errors for s, r in self.reports.items())


def forget_view(current: Lab) -> ForgetView:
    """Ask for the dense model's and each scope's predictions at the slider; compare those that are there."""
    svc = service()
    register(svc, current)
    base = template(current, cfg()).at(cfg().sparsity)
    jobs = {"dense": PredictJob(model_key(current))} | {
        scope: PredictJob.like(base.with_scope(scope)) for scope in COMPARED_SCOPES
    }
    known = svc.request([(job, LIVE_FULL) for job in jobs.values()], f"{session_id()}/forget")
    got = {name: known[job] for name, job in jobs.items()}
    errors = {name: v.message for name, v in got.items() if isinstance(v, JobError)}
    data = current.loaded.eval_data()
    reports: dict[str, Forgetting | None] = {}
    for scope in COMPARED_SCOPES:
        dense, pruned = got["dense"], got[scope]
        ready = isinstance(dense, Predictions) and isinstance(pruned, Predictions)
        reports[scope] = compare(data.labels, dense.tensor(), pruned.tensor(), data.classes) if ready else None
        if "dense" in errors:
            errors.setdefault(scope, errors["dense"])
    return ForgetView(reports, {s: e for s, e in errors.items() if s != "dense"})


@dataclass(frozen=True)
class PairedView:
    """Two recipes on the same images: A as 'dense', B as 'pruned' of a :class:`Forgetting` (None: on its way)."""

    report: Forgetting | None
    error: str | None


def paired_view(current: Lab, a: PruneSpec, b: PruneSpec, sparsity: float) -> PairedView:
    """Recipes ``a`` and ``b`` at one sparsity, every image scored by each (the workers' predictions):
    McNemar's test of A against B, b counting images A gets right and B wrong."""
    svc = service()
    register(svc, current)
    base = template(current, cfg())
    jobs = (PredictJob.like(base, spec=a.at(sparsity)), PredictJob.like(base, spec=b.at(sparsity)))
    return _paired(jobs, current)


def _paired(jobs: tuple[PredictJob, PredictJob], current: Lab) -> PairedView:
    """Both jobs' per-image predictions (asked for as this session's paired request) compared on ``current``'s
    evaluation images."""
    known = service().request([(j, LIVE_FULL) for j in jobs], f"{session_id()}/paired")
    got = [known[j.canonical()] for j in jobs]
    errors = [v.message for v in got if isinstance(v, JobError)]
    if errors or not all(isinstance(v, Predictions) for v in got):
        return PairedView(None, errors[0] if errors else None)
    data = current.loaded.eval_data()
    return PairedView(compare(data.labels, got[0].tensor(), got[1].tensor(), data.classes), None)


def models_view(a: Lab, b: Lab) -> PairedView:
    """Two models of the same task (e.g. two methods' trained weights), every image scored by each: McNemar's
    test of A against B."""
    return _paired((PredictJob(model_key(a)), PredictJob(model_key(b))), a)


def verdict(test: McNemar) -> str:
    """McNemar's p as a page says it: below float's range it is 'p < 1e-300', not 0; then what it means."""
    p = f"p = **{test.p:.3g}**" if test.p > 1e-300 else "p < **1e-300**"
    return p + (" (unlikely to be chance)" if test.p < 0.05 else " (could well be chance)")


def paired_sentence(test: McNemar, a: str, b: str, where: str = "") -> str:
    """McNemar's test between A and B as a page says it: the images only one of them gets right, then p."""
    return (
        f"McNemar's exact test{where}: **{test.b:,}** images only A{a} gets right, **{test.c:,}** only B{b}, "
        + verdict(test)
    )


def accuracies(report: Forgetting) -> tuple[Accuracy, Accuracy]:
    """Dense and pruned top-1 on the whole set, from the same predictions (the intervals beside the test)."""
    n = sum(report.images_per_class)
    return tuple(from_counts([Counts(c, None, n, 0.0)], n) for c in report.correct)


def flipped_images(current: Lab, report: Forgetting, lost: bool) -> list[tuple[torch.Tensor, str]]:
    """Up to GALLERY flipped images as displayable (H, W[, 3]) tensors in [0, 1], each captioned with its true
    class and the wrong one (the pruned model's for a lost image, the dense model's for a gained one)."""
    data, spec = current.loaded.eval_data(), current.loaded.input_spec
    indices, wrong = (report.lost, report.lost_as) if lost else (report.gained, report.gained_from)
    mean, std = torch.tensor(spec.mean).view(-1, 1, 1), torch.tensor(spec.std).view(-1, 1, 1)
    out = []
    for i, w in list(zip(indices, wrong, strict=True))[:GALLERY]:
        image = (data.images[i] * std + mean).clamp(0, 1)
        shown = image[0] if image.shape[0] == 1 else image.permute(1, 2, 0)
        out.append((shown, f"#{i}: {data.classes[int(data.labels[i])]}, {'now' if lost else 'was'} {data.classes[w]}"))
    return out

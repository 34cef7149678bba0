"""What the pages ask for, on the session's configuration: pruning results, accuracies from the
evaluation service, speed, recovery, export, filter views. Pages ask and redraw; they never wait for an
evaluation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
import torch

from prunekit.app import accuracy_plots
from prunekit.app.server_state import (
    aside_unless,
    bundles,
    curve_fill_enabled,
    estimate_size,
    model_key,
    register,
    service,
    shared,
    template,
)
from prunekit.app.session_state import cfg, error_text, session_id, spec
from prunekit.core import analysis, structure
from prunekit.core.importance import CRITERIA
from prunekit.core.lab import Lab
from prunekit.core.result import PruneResult
from prunekit.core.spec import COMPARED_SCOPES, PruneSpec, Structure
from prunekit.core.structure import Coupling
from prunekit.deploy.export import Bundle, build_bundle
from prunekit.deploy.recover import Recipe, Recovery, has_training_split, training_images
from prunekit.deploy.staircase import check_layer
from prunekit.deploy.training import Budget
from prunekit.errors import DataNotFoundError, InvalidArgumentError
from prunekit.models import checkpoints
from prunekit.service import readings
from prunekit.service.codec import Outcome
from prunekit.service.evaluation import ServiceStatus
from prunekit.service.jobs import EvalJob, MethodJob, RecoverJob, SpeedJob, StaircaseJob
from prunekit.service.ladder import Rung, read_ladder
from prunekit.service.queue import LIVE_FULL

EFFECTIVE_HELP = (
    "Weights that are zero or lie on no surviving input-output path (all-ones path test on a linearised twin)."
)


def coupling(current: Lab, layer: str) -> Coupling | None:
    """What is pruned together with ``layer``'s filters (the clusters filter pruning and compaction use);
    raises InvalidArgumentError where filter pruning is not supported (attention, an untraceable model)."""
    return structure.coupling(current.clusters, layer)


def coupling_rows(current: Lab, layer: str) -> list[dict[str, str]] | None:
    """The members of ``layer``'s group (layer, type, part), or None when its outputs are never pruned."""
    found = coupling(current, layer)
    return None if found is None else found.rows(dict(current.loaded.model.named_modules()))


def coupling_panel(current: Lab, key: str) -> frozenset[str]:
    """A layer picker and what is pruned with its filters; returns the coupled layers (to highlight)."""
    names = [x.name for x in current.profile.prunable()]
    layer = st.selectbox("What is pruned together with the filters of", names, key=key)
    try:
        found = coupling(current, layer)
    except InvalidArgumentError as exc:
        st.caption(error_text(exc))
        return frozenset()
    if found is None:
        st.caption(
            f"`{layer}`'s outputs are never pruned (they are the model's outputs), so nothing is coupled to them."
        )
        return frozenset()
    producers = found.producers()
    how = (
        f"the filters of {', '.join(f'`{p}`' for p in producers)} go together (a residual add, a concatenation "
        "or a depthwise convolution ties their channels)"
        if len(producers) > 1
        else f"`{layer}`'s filters"
    )
    st.markdown(
        f"Removing one of its {found.cluster.size} channels removes {how}, with every part below: they are pruned "
        "together."
    )
    st.dataframe(coupling_rows(current, layer), hide_index=True, width="stretch")
    return frozenset(found.cluster.layers())


def untrained_banner(current: Lab) -> bool:
    """Show the banner for untrained models; True when accuracy and importance are meaningless."""
    if (note := current.profile.note()) is not None:
        st.info(error_text(note[0].upper() + note[1:] + "."))
    if current.loaded.pretrained:
        if current.loaded.notes:  # e.g. an upload's half-precision tensors converted to float32
            st.info(error_text(" ".join(current.loaded.notes)))
        return False
    st.error(
        "**Untrained: structure only.** "
        + error_text(" ".join(current.loaded.notes))
        + " Accuracy and weight-based importance are not shown as meaningful."
    )
    return True


def prune_both(current: Lab) -> dict[str, PruneResult]:
    """Both scopes' shared results (computed once per configuration; read-only). On a big model the path
    test is left to an evaluation worker, so the move stays instant: see ``paths_panel``."""
    inline = current.paths_in_move
    specs = {scope: spec(scope) for scope in COMPARED_SCOPES}
    ready = all(current.has_result(s, paths=inline) for s in specs.values())
    with aside_unless(ready), st.spinner("Scoring once for this criterion; every later slider move is a lookup..."):
        results = {scope: current.result(s, paths=inline) for scope, s in specs.items()}
    if inline:
        return results
    svc = service()
    register(svc, current)
    job = template(current, cfg()).at(cfg().sparsity)
    return readings.with_paths(svc, job, results, f"{session_id()}/paths")


def paths_panel(current: Lab) -> bool:
    """Say that the path test is on its way, while it is; True while it is."""
    pending = any(r.paths_pending for r in prune_both(current).values())
    if pending:
        st.caption(
            "Effective sparsity and collapse: the path test (a forward and backward pass of the whole model) is running in an evaluation worker..."
        )
    return pending


@dataclass(frozen=True)
class CurveView:
    curves: dict[str, dict[float, float]]  # scope -> sparsity -> full-split top-1
    points: int  # grid points per scope
    status: ServiceStatus

    @property
    def pending(self) -> bool:
        return curve_fill_enabled() and any(len(c) < self.points for c in self.curves.values())


def point_view(current: Lab, ask: bool = True) -> readings.PointView:
    """The accuracies at the slider. ``ask``: send them as this session's live request (latest wins)."""
    svc = service()
    register(svc, current)
    job = template(current, cfg()).at(cfg().sparsity)
    return readings.read_point(svc, job, COMPARED_SCOPES, estimate_size(current), session_id(), ask)


def pattern_unfit(current: Lab) -> tuple[str, ...]:
    """The layers an N:M pattern on screen leaves dense (their input width is not a multiple of M)."""
    return current.table(*spec().table_key).unscored


def has_curve() -> bool:
    """False for an N:M pattern: the pattern, not a slider, sets its sparsity, so there is one point."""
    return cfg().structure.pattern is None


def fill_curve(current: Lab) -> None:
    """Queue the on-screen configuration's accuracy curve (both scopes) as background work."""
    if curve_fill_enabled() and has_curve():
        service().fill_curve(template(current, cfg()), COMPARED_SCOPES)


def curve_view(current: Lab) -> CurveView:
    svc = service()
    if not has_curve():
        return CurveView({scope: {} for scope in COMPARED_SCOPES}, 0, svc.status())
    curves = readings.read_curves(svc, template(current, cfg()), COMPARED_SCOPES)
    return CurveView(curves, readings.curve_points(), svc.status())


def recipe_label(spec: PruneSpec) -> str:
    return f"{spec.criterion} / {spec.scope} / {spec.structure}"


def tradeoff_recipes() -> dict[str, PruneSpec]:
    """Every recipe the Trade-offs page offers, by label: each criterion, structure (a pattern fixes its sparsity:
    nothing to trade off along) and scope, on the session's normalisation, first/last and per-layer settings."""
    base = cfg().spec(sparsity=0.0)
    recipes = (
        dataclasses.replace(base.with_scope(scope), criterion=name, structure=structure)
        for name, crit in CRITERIA.items()
        for structure in crit.structures
        if structure.pattern is None
        for scope in COMPARED_SCOPES
    )
    return {recipe_label(r): r for r in recipes}


def tradeoff_points(current: Lab, recipes: list[PruneSpec], sparsities, estimate: bool) -> dict[PruneSpec, dict]:
    """Per recipe (a spec whose sparsity the curve varies): sparsity, speedup and accuracy (None while pending)."""
    job = dataclasses.replace(template(current, cfg()), subset=estimate_size(current) if estimate else None)
    return readings.tradeoff(service(), current, job, recipes, sparsities, session_id())


def dense_reading(current: Lab, estimate: bool) -> readings.Reading:
    job = EvalJob(model_key(current), subset=estimate_size(current) if estimate else None)
    return readings.reading(service().request([(job, LIVE_FULL)], "")[job])


def _job(current: Lab, scope: str) -> EvalJob:
    """The on-screen configuration's job at the slider, for ``scope`` (speed, recovery, export)."""
    return template(current, cfg()).at(cfg().sparsity).with_scope(scope)


def speed(current: Lab, scope: str, measure: bool) -> Outcome | None:
    """Latency of dense, masked and compacted models at the slider (from the workers); ``measure``
    queues it, otherwise only a known (cached) result is returned."""
    svc, job = service(), SpeedJob.like(_job(current, scope))
    register(svc, current)
    if not measure:
        return svc.lookup(job)
    return svc.request([(job, LIVE_FULL)], f"{session_id()}:speed")[job]


def speed_key(current: Lab, scope: str) -> EvalJob:
    return _job(current, scope)


def speed_pending(current: Lab, scope: str) -> bool:
    """True while this session asked for the latency at the slider and it is not there yet."""
    return st.session_state.get("speed_asked") == speed_key(current, scope) and speed(current, scope, False) is None


def staircase_layers(current: Lab) -> list[str]:
    """The layers a staircase can time (plain convolutions, linear layers), the one with the most MACs first."""
    rows = sorted((layer for layer in current.profile.layers if layer.prunable), key=lambda layer: -layer.macs)
    return [layer.name for layer in rows if _times_alone(current, layer.name)]


def _times_alone(current: Lab, name: str) -> bool:
    try:
        check_layer(name, current.loaded.model.get_submodule(name))
    except InvalidArgumentError:
        return False
    return True


def staircase(current: Lab, layer: str, measure: bool) -> Outcome | None:
    """The latency staircase of ``layer`` (from a worker); ``measure`` queues it, else only a known one."""
    svc, job = service(), staircase_key(current, layer)
    register(svc, current)
    if not measure:
        return svc.lookup(job)
    return svc.request([(job, LIVE_FULL)], f"{session_id()}:staircase")[job]


def staircase_key(current: Lab, layer: str) -> StaircaseJob:
    return StaircaseJob(model_key(current), layer=layer)


def staircase_pending(current: Lab, layer: str) -> bool:
    """True while this session asked for ``layer``'s staircase and it is not there yet."""
    asked = st.session_state.get("staircase_asked") == staircase_key(current, layer)
    return asked and staircase(current, layer, False) is None


def kept_width(current: Lab, scope: str, layer: str) -> int | None:
    """Output channels ``layer`` keeps in the on-screen filter configuration (None for other structures,
    which keep every width)."""
    if not cfg().structure.is_filter:
        return None
    at = spec(scope)
    table = current.table(*at.table_key)
    dense = check_layer(layer, current.loaded.model.get_submodule(layer))
    return dense - analysis.removed_outputs(table, at.config(), current.first_last, layer)


def recover_job(current: Lab, scope: str, recipe: Recipe) -> RecoverJob:
    return RecoverJob.like(_job(current, scope), recipe=recipe)


TRAIN_SUBSET = 10_000  # the quicker choice offered beside the whole training split


def training_choices(current: Lab) -> list[int]:
    """Training-image counts to offer: a subset, then the whole split as found here (its true size)."""
    full = training_images(current.loaded) or 0
    return [n for n in (TRAIN_SUBSET,) if n < full] + [full]


def train_label(n: int, choices: list[int]) -> str:
    return f"{n:,}" + (" (all)" if n == choices[-1] else "")


def recovery_unavailable(current: Lab) -> str | None:
    if current.loaded.family == "user":
        return "recovery runs on zoo models (an upload's weights are not sent to the training workers)"
    if has_training_split(current.loaded):
        return None
    if current.loaded.family == "custom":
        return "recovery needs training data: pass train_data to prunekit.launch or Lab.from_model"
    return "recovery needs a training split: only Fashion-MNIST models have one here"


def recovery(current: Lab, job: RecoverJob, start: bool) -> tuple[Outcome | None, Recovery | None]:
    """(outcome if finished, progress if running); ``start`` queues the job."""
    svc = service()
    register(svc, current)
    return readings.read_recovery(svc, job, session_id(), start)


def recovery_figure(curves: dict, r: Recovery | None):
    accs = r.accuracy if r is not None else {}
    base = {k: (v.top1 if v else None) for k, v in accs.items() if k in ("dense", "recalibrated")}
    return accuracy_plots.recovery_curve(curves, base)


def schedule_jobs(current: Lab, scope: str, epochs: float, steps: int, train: int | None) -> tuple[RecoverJob, ...]:
    """One recovery job per schedule, same final sparsity and fine-tuning budget."""
    return tuple(
        recover_job(current, scope, Recipe(1024, epochs, train, name, 1 if name == "one-shot" else steps))
        for name in ("one-shot", "iterative", "agp")
    )


def schedule_view(current: Lab, jobs: tuple[RecoverJob, ...], start: bool = True) -> readings.ScheduleView:
    svc = service()
    register(svc, current)
    return readings.read_schedules(svc, jobs, session_id(), start)


def stop_recovery(job: RecoverJob) -> None:
    service().stop(job)


def forget(job: EvalJob) -> None:
    service().forget(job)


def export_bundle(current: Lab, scope: str) -> Bundle:
    """The export files at the slider (built once per configuration, on a private pruner)."""
    at = spec(scope)
    return bundles().get((model_key(current), at), lambda: build_bundle(current.pruner(at), at))


def _key(kind: str, current: Lab, *extra) -> tuple:
    return (kind, model_key(current), *extra)


def filter_view(current: Lab, criterion: str, scope: str) -> analysis.FilterView:
    table = current.table(criterion, Structure.FILTER, cfg().normalise)
    return analysis.filter_view(table, spec(scope).config(), current.first_last)


def agreement(current: Lab, criteria: list[str], scope: str):
    tables = {name: current.table(name, Structure.FILTER, cfg().normalise) for name in criteria}
    return analysis.agreement(tables, spec(scope).config(), current.first_last)


def sensitivity(
    current: Lab, criterion: str, sparsities: tuple[float, ...], estimate: bool
) -> readings.SensitivityView:
    """The scan's points as jobs of the evaluation service (local workers, or the Ray cluster)."""
    svc = service()
    register(svc, current)
    subset = estimate_size(current) if estimate else None
    template = EvalJob(model_key(current), PruneSpec(criterion), subset=subset)
    return readings.read_sensitivity(svc, current, template, sparsities, session_id())


def attribution(current: Lab, index: int) -> tuple:
    data = current.loaded.eval_data()
    image, label = data.images[index], int(data.labels[index])
    dense = analysis.attribution_map(current.loaded.model, image, label)
    with current.borrow(spec()) as p:
        p.apply_(spec())
        pruned = analysis.attribution_map(p.model, image, label)
    return image.mean(0), dense, pruned, data.classes[label]


def first_conv_kernels(current: Lab) -> tuple[str, torch.Tensor] | None:
    """The first convolution's name and kernels ``(out, in, kh, kw)``, or None when the model has none."""
    return analysis.first_conv_kernels(current.loaded.model)


def ladder(current: Lab, scope: str, measure: bool) -> list[Rung]:
    """The granularity ladder at the slider for ``scope`` (top-1 on the whole evaluation set); ``measure``
    also asks the workers for each rung's latency."""
    svc = service()
    register(svc, current)
    job = _job(current, scope)
    return read_ladder(svc, current, job, job.spec, f"{session_id()}:ladder", measure)


def method_jobs(current: Lab, methods: list[str], sparsities: list[float], budget: Budget) -> tuple[MethodJob, ...]:
    """One job per (method, sparsity) on the session's model, all on ``budget``."""
    return tuple(MethodJob.of(model_key(current), m, s, budget) for s in sparsities for m in methods)


def method_view(current: Lab, jobs: tuple[MethodJob, ...], start: bool) -> list[readings.MethodReading]:
    """What is known of ``jobs`` (results a room already ran show at once); ``start`` runs the missing ones."""
    svc = service()
    register(svc, current)
    return readings.read_methods(svc, jobs, session_id(), start)


def stop_methods(jobs: tuple[MethodJob, ...]) -> None:
    for job in jobs:
        service().stop(job)


def open_weights(blob: bytes, arch: str, name: str) -> None:
    """Load weights for the zoo model ``arch`` (an upload, or a method's trained weights; checked as an upload
    is: weights only), share them with the evaluation workers (they rebuild the model from the same bytes) and
    make them this session's model, under ``name``."""
    lab = Lab(checkpoints.load_checkpoint(blob, arch, name=name))
    st.session_state.user_labs[name] = lab
    register(service(), lab)
    cfg().model = name
    st.session_state["w_model"] = name


def _method_weights(reading: readings.MethodReading) -> tuple[bytes, str, str]:
    """(the trained weights' bytes, the zoo architecture, a name) of a finished method job."""
    result, job = reading.outcome, reading.job
    path = Path(result.folder) / "model.safetensors"
    if not result.folder or not path.is_file():
        raise DataNotFoundError(f"the weights of {job.method} at {job.spec.sparsity:.0%} are no longer on the server")
    return path.read_bytes(), job.model, f"{job.model} after {job.method} at {job.spec.sparsity:.0%}"


def open_method_result(reading: readings.MethodReading) -> str:
    """Open a finished method's trained weights (written by the worker) as this session's model; its name."""
    blob, arch, name = _method_weights(reading)
    open_weights(blob, arch, name)
    return name


def method_lab(reading: readings.MethodReading) -> Lab:
    """A finished method's trained model as a lab, loaded once per server and registered with the workers
    (read-only: shared by every session)."""

    def load() -> Lab:
        blob, arch, name = _method_weights(reading)
        return Lab(checkpoints.load_checkpoint(blob, arch, name=name))

    lab = shared(("method-lab", reading.outcome.folder), load)
    register(service(), lab)
    return lab

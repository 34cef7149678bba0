"""The one module that binds Streamlit to the prunekit engine: caching, session state, the URL.

What a configuration produces is keyed by the configuration, never by the session: ``Lab.result``
(shared per model, computed once) gives the pruning numbers, and the evaluation service (worker
processes, one scheduler) gives accuracies, so thirty students at one slider position cost one
computation and the server process never evaluates while holding a lock. Pages ask and redraw;
they never wait for an evaluation.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st
import torch
from streamlit.runtime.scriptrunner import get_script_run_ctx

from prunekit import analysis, checkpoints, links, plots, readings, zoo
from prunekit.allocate import NORMALISATIONS, SCOPES, PruneConfig
from prunekit.errors import PrunekitError, without_paths
from prunekit.evaluate import interval_label  # pages show it beside every accuracy
from prunekit.export import Bundle, build_bundle
from prunekit.importance import CRITERIA, STRUCTURES
from prunekit.jobs import EvalJob, ModelSpec, RecoverJob, SpeedJob
from prunekit.lab import Lab, PruneResult
from prunekit.links import SPARSITY_MAX as SPARSITY_MAX  # the pages' sliders
from prunekit.links import SPARSITY_STEP as SPARSITY_STEP
from prunekit.recover import Recipe, Recovery, has_training_split
from prunekit.service import LIVE_FULL, RAY_ENV, EvalService, Outcome, ServiceStatus, open_service
from prunekit.service import JobError as JobError  # pages tell an error from a result
from prunekit.shared import SingleFlight
from prunekit.store import ResultStore

torch.set_num_threads(int(os.environ.get("PRUNEKIT_THREADS", os.cpu_count() or 1)))  # tests: one per process
ESTIMATE_IMAGES = 1000  # a fixed stratified subset: the first number at a position nobody has computed
EFFECTIVE_HELP = (
    "Weights that are zero or lie on no surviving input-output path (all-ones path test on a linearised twin)."
)
DEFAULTS = {
    "model": "fmnist-cnn",
    "criterion": "magnitude",
    "structure": "unstructured",
    "sparsity": 0.5,
    "keep": False,
    "normalise": "none",
}
UPLOAD_TYPES = ["safetensors", "pt", "pth", "bin", "ckpt", "ts"]


# --- shared objects (one per process, never mutated by a session) ------------------------------


@st.cache_resource(show_spinner="Loading the model (first time only)...")
def shared_lab(name: str) -> Lab:
    return Lab(zoo.load(name))


@st.cache_resource(show_spinner=False)
def service() -> EvalService:
    """The evaluation service: ``$PRUNEKIT_WORKERS`` local processes (default: one per core; one beside
    a Ray cluster named by ``$PRUNEKIT_RAY_ADDRESS``, which then takes the accuracy jobs), results on disk."""
    ray = os.environ.get(RAY_ENV) or None
    workers = int(os.environ.get("PRUNEKIT_WORKERS", 0)) or (1 if ray else None)
    svc = open_service(ray, workers, ResultStore(), fall_back=True)
    default = shared_lab(DEFAULTS["model"])
    _register(svc, default)
    if curve_fill_enabled():
        svc.fill_curve(_template(default, DEFAULTS), SCOPES)  # warm before most people ask for it
    return svc


def curve_fill_enabled() -> bool:
    """Background accuracy curves (on unless ``PRUNEKIT_CURVE_FILL=0``, which the unit tests set)."""
    return os.environ.get("PRUNEKIT_CURVE_FILL", "1") != "0"


def warm() -> None:
    """Before the server takes sessions (serve.py): the default model, its profile, the service."""
    current = shared_lab(DEFAULTS["model"])
    current.profile  # noqa: B018 - computed now so that the first page does not wait for it
    current.result(
        DEFAULTS["criterion"], DEFAULTS["structure"], DEFAULTS["normalise"], PruneConfig(DEFAULTS["sparsity"])
    )
    model_names()
    dense = EvalJob(model_key(current))
    service().wait([dense, dense.with_subset(ESTIMATE_IMAGES)], timeout=120)  # workers up, model loaded


@st.cache_resource
def _computed() -> SingleFlight:
    return SingleFlight(maxsize=1024)


@st.cache_resource
def bundled_rows() -> list[dict]:
    """The bundled models with their cards' numbers (accuracy measured on the full 10k test split)."""
    rows = []
    for name in zoo.BUNDLED:
        card = zoo.bundled_card(name)
        rows.append(
            {
                "model": name,
                "architecture": card["architecture"],
                "params": card["params"],
                "MACs": card["macs"],
                "test top-1 (10k)": f"{card['test_accuracy']:.2%}",
                "95% interval": interval_label(card["test_accuracy"], card["test_images"]).split(" on ")[0].split()[-1],
                "epochs": card["recipe"]["epochs"],
                "train time (s)": card["wall_time_s"],
            }
        )
    return rows


@st.cache_resource
def model_names() -> list[str]:
    return zoo.model_names()


def _shared(key: tuple, compute: Callable[[], object]):
    """Compute once per process; a hit never waits behind someone else's computation."""
    return _computed().get(key, compute)


# --- state and the URL -------------------------------------------------------------------------


def init_state() -> None:
    """Once per session: settings from the query string; bad or stale values fall back with a notice."""
    if "cfg" in st.session_state:
        return
    cfg, notices = links.parse_link(st.query_params.to_dict(), _link_schema())
    if not _supports(cfg["criterion"], cfg["structure"]):
        notices.append(f"Criterion {cfg['criterion']!r} has no {cfg['structure']} mode; using 'magnitude'.")
        cfg["criterion"] = "magnitude"
    st.session_state.cfg = cfg
    st.session_state.notices = notices
    st.session_state.user_labs = {}


def _link_schema() -> links.LinkSchema:
    choices = {"model": model_names(), "criterion": list(CRITERIA), "structure": list(STRUCTURES)}
    return links.LinkSchema(DEFAULTS, choices | {"normalise": list(NORMALISATIONS)})


def cfg() -> dict:
    return st.session_state.cfg


def sync_query() -> None:
    c = cfg()
    st.query_params.from_dict({k: ("1" if v is True else "0" if v is False else str(v)) for k, v in c.items()})


def error_text(error: object) -> str:
    """An error's words for a page: the server's paths reduced to the names they end in."""
    return without_paths(str(error))


def show_notices() -> None:
    for note in st.session_state.pop("notices", []):
        st.warning(note)
    st.session_state.notices = []
    svc = service()
    if svc.notice:  # e.g. the Ray cluster is gone and local workers took over
        st.error(svc.notice, icon="⚠️")
    if svc.store is not None and svc.store.notice:  # e.g. a damaged result store was set aside
        st.warning(svc.store.notice, icon="🗄️")


def _supports(criterion: str, structure: str) -> bool:
    return structure in CRITERIA[criterion].structures


def bind(widget: Callable, name: str, **kwargs):
    """Render a widget whose value persists in cfg across pages (widget state is dropped off-page)."""
    key = f"w_{name}"
    if key not in st.session_state:
        st.session_state[key] = cfg()[name]
    value = widget(key=key, **kwargs)
    cfg()[name] = value
    return value


def apply_preset(**values) -> None:
    """Callback for preset buttons: set cfg and the widgets before they are drawn."""
    cfg().update(values)
    for name, value in values.items():
        st.session_state[f"w_{name}"] = value


# --- model picker ------------------------------------------------------------------------------


def sidebar() -> None:
    init_state()
    names = model_names() + list(st.session_state.user_labs)
    if cfg()["model"] not in names:
        cfg()["model"] = DEFAULTS["model"]
    with st.sidebar:
        st.markdown("### Model")
        bind(
            st.selectbox,
            "model",
            label="Pretrained CNN",
            options=names,
            format_func=_model_label,
            help="Bundled Fashion-MNIST models load instantly and offline; torchvision models are untrained unless their weights are cached.",
        )
        mode = "trusted mode: uploads may run code" if checkpoints.trusted_mode() else "safe mode"
        with st.expander(f"Upload your own weights ({mode})"):
            _upload()


def _model_label(name: str) -> str:
    if name in zoo.BUNDLED:
        return f"{name} (bundled, Fashion-MNIST)"
    if name in zoo.EFFICIENTNET:
        return f"{name} (ImageNet weights)"
    if name in st.session_state.get("user_labs", {}):
        return f"{name} (your upload)"
    return f"{name} (torchvision)"


def _upload_mode() -> None:
    """Say plainly what the server accepts: the person who started it chose the mode."""
    if checkpoints.trusted_mode():
        st.warning(
            "**Trusted mode** (started with PRUNEKIT_TRUSTED_UPLOADS=1): whole pickled models and TorchScript are "
            "loaded too, and loading them runs code from the file. Upload only your own files."
        )
    else:
        st.caption(
            "Safe mode: safetensors files and state_dicts (read with `weights_only=True`); nothing in a file is run. "
            "Whole pickled models and TorchScript need the server started in trusted mode (`./dev app --trusted`)."
        )


def _upload() -> None:
    _upload_mode()
    arch = st.selectbox(
        "Architecture (type to search)",
        model_names(),
        key="upload_arch",
        help="The zoo model the weights belong to; its input size and evaluation data are used.",
    )
    file = st.file_uploader(
        f"Weights (at most {checkpoints.max_upload_mb()} MB: {checkpoints.LIMIT_ENV} raises it)",
        type=UPLOAD_TYPES,
        key="upload_file",
    )
    if file is None or f"upload:{file.name}" in st.session_state.user_labs:
        return
    try:
        with st.spinner(f"Checking and loading {file.name}..."):
            _register_upload(file.getvalue(), arch, f"upload:{file.name}")
    except PrunekitError as exc:
        st.error(error_text(exc))
        return
    st.rerun()


def _register_upload(blob: bytes, arch: str, name: str) -> None:
    """Load, share with the evaluation workers (they rebuild it from the same bytes) and select it."""
    upload = Lab(checkpoints.load_checkpoint(blob, arch, name=name))
    st.session_state.user_labs[name] = upload
    spec = ModelSpec("prunekit.checkpoints:load_checkpoint", (blob, arch, name))
    service().register(model_key(upload), spec, fingerprint=upload.fingerprint)
    cfg()["model"] = name
    st.session_state["w_model"] = name


def lab() -> Lab:
    name = cfg()["model"]
    if name in st.session_state.user_labs:
        return st.session_state.user_labs[name]
    return shared_lab(name)


def untrained_banner(current: Lab) -> bool:
    """Show the banner for untrained models; True when accuracy and importance are meaningless."""
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


# --- pruning -----------------------------------------------------------------------------------


def config(scope: str) -> PruneConfig:
    return PruneConfig(cfg()["sparsity"], scope, cfg()["keep"])


def _settings() -> tuple[str, str, str]:
    c = cfg()
    return c["criterion"], c["structure"], c["normalise"]


def prune_both(current: Lab) -> dict[str, PruneResult]:
    """Both scopes' shared results (computed once per configuration; read-only)."""
    with st.spinner("Scoring once for this criterion; every later slider move is a lookup..."):
        return {scope: current.result(*_settings(), config(scope)) for scope in SCOPES}


def model_key(current: Lab) -> str:
    """The service's name for a model: zoo models by name, an upload by its name and weights."""
    if current.loaded.family == "user":
        return f"{current.loaded.name}#{current.fingerprint[:12]}"
    return current.loaded.name


def _register(svc: EvalService, current: Lab) -> None:
    if current.loaded.family != "user":
        svc.register(model_key(current), ModelSpec("prunekit.zoo:load", (current.loaded.name,)), current.fingerprint)


def _template(current: Lab, c: dict) -> EvalJob:
    return EvalJob(model_key(current), c["criterion"], c["structure"], c["normalise"], keep_first_last=c["keep"])


def _session() -> str:
    ctx = get_script_run_ctx(suppress_warning=True)
    return ctx.session_id if ctx is not None else ""


def estimate_size(current: Lab) -> int | None:
    """Images in the quick estimate, or None when the evaluation set is small enough to score whole."""
    return ESTIMATE_IMAGES if len(current.loaded.eval_data()) > ESTIMATE_IMAGES else None


# --- accuracy from the evaluation service (readings: prunekit.readings) --------------------------


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
    _register(svc, current)
    template = dataclasses.replace(_template(current, cfg()), sparsity=cfg()["sparsity"])
    return readings.read_point(svc, template, SCOPES, estimate_size(current), _session(), ask)


def fill_curve(current: Lab) -> None:
    """Queue the on-screen configuration's accuracy curve (both scopes) as background work."""
    if curve_fill_enabled():
        service().fill_curve(_template(current, cfg()), SCOPES)


def curve_view(current: Lab) -> CurveView:
    svc = service()
    return CurveView(
        readings.read_curves(svc, _template(current, cfg()), SCOPES), readings.curve_points(), svc.status()
    )


def figure(kind: str, key: tuple, build: Callable[[], object]):
    """A plotly figure built once per content ``key`` and shared by every session (st.plotly_chart
    copies a figure before it serialises it, so the shared one is never mutated)."""
    return _shared(("figure", kind, *key), build)


def tradeoff_points(current: Lab, recipes: list[tuple[str, str, str]], sparsities, estimate: bool) -> dict:
    """Per recipe (criterion, scope, structure): sparsity, speedup and accuracy (None while pending)."""
    template = dataclasses.replace(_template(current, cfg()), subset=estimate_size(current) if estimate else None)
    return readings.tradeoff(service(), current, template, recipes, sparsities, _session())


def dense_reading(current: Lab, estimate: bool) -> readings.Reading:
    job = EvalJob(model_key(current), subset=estimate_size(current) if estimate else None)
    return readings.reading(service().request([(job, LIVE_FULL)], "")[job])


# --- measured speed, recovery and export ---------------------------------------------------------


def _job(current: Lab, scope: str) -> dict:
    c = cfg()
    return dict(
        model=model_key(current),
        criterion=c["criterion"],
        structure=c["structure"],
        normalise=c["normalise"],
        sparsity=c["sparsity"],
        scope=scope,
        keep_first_last=c["keep"],
    )


def speed(current: Lab, scope: str, measure: bool) -> Outcome | None:
    """Latency of dense, masked and compacted models at the slider (from the workers); ``measure``
    queues it, otherwise only a known (cached) result is returned."""
    svc, job = service(), SpeedJob(**_job(current, scope))
    _register(svc, current)
    if not measure:
        return svc.lookup(job)
    return svc.request([(job, LIVE_FULL)], f"{_session()}:speed")[job]


def speed_key(current: Lab, scope: str) -> tuple:
    return tuple(_job(current, scope).values())


def speed_pending(current: Lab, scope: str) -> bool:
    """True while this session asked for the latency at the slider and it is not there yet."""
    return st.session_state.get("speed_asked") == speed_key(current, scope) and speed(current, scope, False) is None


def recover_job(current: Lab, scope: str, recipe: Recipe) -> RecoverJob:
    return RecoverJob(**_job(current, scope), recipe=recipe)


def recovery_unavailable(current: Lab) -> str | None:
    if current.loaded.family == "user":
        return "recovery runs on zoo models (an upload's weights are not sent to the training workers)"
    return (
        None
        if has_training_split(current.loaded)
        else "recovery needs a training split: only Fashion-MNIST models have one here"
    )


def recovery(current: Lab, job: RecoverJob, start: bool) -> tuple[Outcome | None, Recovery | None]:
    """(outcome if finished, progress if running); ``start`` queues the job."""
    svc = service()
    _register(svc, current)
    return readings.read_recovery(svc, job, _session(), start)


def recovery_figure(curves: dict, r: Recovery | None):
    accs = r.accuracy if r is not None else {}
    base = {k: (v.top1 if v else None) for k, v in accs.items() if k in ("dense", "recalibrated")}
    return plots.recovery_curve(curves, base)


def schedule_jobs(current: Lab, scope: str, epochs: float, steps: int, train: int | None) -> tuple[RecoverJob, ...]:
    """One recovery job per schedule, same final sparsity and fine-tuning budget."""
    return tuple(
        recover_job(current, scope, Recipe(1024, epochs, train, name, 1 if name == "one-shot" else steps))
        for name in ("one-shot", "iterative", "agp")
    )


def schedule_view(current: Lab, jobs: tuple[RecoverJob, ...], start: bool = True) -> readings.ScheduleView:
    svc = service()
    _register(svc, current)
    return readings.read_schedules(svc, jobs, _session(), start)


def stop_recovery(job: RecoverJob) -> None:
    service().stop(job)


def forget(job: EvalJob) -> None:
    service().forget(job)


@st.cache_resource
def _bundles() -> SingleFlight:
    return SingleFlight(maxsize=4)  # export files can be tens of MB: keep few


def export_bundle(current: Lab, scope: str) -> Bundle:
    """The export files at the slider (built once per configuration, on a private pruner)."""
    c = cfg()
    key = (model_key(current), *_settings(), scope, c["sparsity"], c["keep"])
    return _bundles().get(key, lambda: build_bundle(current.pruner(*_settings()), config(scope)))


# --- other pages -------------------------------------------------------------------------------


def _key(kind: str, current: Lab, *extra) -> tuple:
    return (kind, model_key(current), *extra)


def filter_view(current: Lab, criterion: str, scope: str) -> analysis.FilterView:
    table = current.table(criterion, "filter", cfg()["normalise"])
    return analysis.filter_view(table, config(scope), current.first_last)


def agreement(current: Lab, criteria: list[str], scope: str):
    tables = {name: current.table(name, "filter", cfg()["normalise"]) for name in criteria}
    return analysis.agreement(tables, config(scope), current.first_last)


def sensitivity(
    current: Lab, criterion: str, sparsities: tuple[float, ...], estimate: bool
) -> readings.SensitivityView:
    """The scan's points as jobs of the evaluation service (local workers, or the Ray cluster)."""
    svc = service()
    _register(svc, current)
    subset = estimate_size(current) if estimate else None
    template = EvalJob(model_key(current), criterion, "unstructured", subset=subset)
    return readings.read_sensitivity(svc, current, template, sparsities, _session())


def attribution(current: Lab, index: int) -> tuple:
    data = current.loaded.eval_data()
    image, label = data.images[index], int(data.labels[index])
    dense = analysis.attribution_map(current.loaded.model, image, label)
    with current.borrow(*_settings()) as p:
        p.apply_(config("global"))
        pruned = analysis.attribution_map(p.model, image, label)
    return image.mean(0), dense, pruned, data.classes[label]

"""The one module that binds Streamlit to the prunekit engine: caching, session state, the URL.

Shared, never-mutated objects (models, score tables, evaluation results) live in
``st.cache_resource``; each session owns its working copies. Evaluations run one at a time per
process with torch threads = cores, so thirty students at one slider position cost one evaluation.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st
import torch

from prunekit import analysis, checkpoints, zoo
from prunekit.allocate import NORMALISATIONS, SCOPES, PruneConfig
from prunekit.errors import PrunekitError
from prunekit.evaluate import Accuracy, accuracy
from prunekit.importance import CRITERIA, STRUCTURES
from prunekit.lab import Lab, Pruner, PruneResult
from prunekit.sensitivity import SensitivityConfig, SensitivityRow, sensitivity_scan

torch.set_num_threads(os.cpu_count() or 1)
ESTIMATE_IMAGES = 2000
QUICK_IMAGES = 1000  # shown first, marked as an estimate, while the full evaluation runs
DEFAULTS = {
    "model": "fmnist-cnn",
    "criterion": "magnitude",
    "structure": "unstructured",
    "sparsity": 0.5,
    "keep": False,
    "normalise": "none",
}
UPLOAD_ARCHS = [*zoo.BUNDLED, *zoo.EFFICIENTNET, "resnet18", "resnet50", "mobilenet_v2", "vgg16"]


# --- shared caches (one per process) ----------------------------------------------------------


@st.cache_resource(show_spinner="Loading the model (first time only)...")
def shared_lab(name: str) -> Lab:
    return Lab(zoo.load(name))


@dataclass
class _Results:
    lock: threading.Lock
    values: dict


@st.cache_resource
def _results() -> _Results:
    return _Results(threading.Lock(), {})


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
                "epochs": card["recipe"]["epochs"],
                "train time (s)": card["wall_time_s"],
            }
        )
    return rows


@st.cache_resource
def model_names() -> list[str]:
    return zoo.model_names()


def _shared(key: tuple, compute: Callable[[], object]):
    """Compute once per process; evaluations queue on one lock instead of thrashing the cores."""
    cache = _results()
    with cache.lock:
        if key not in cache.values:
            cache.values[key] = compute()
        return cache.values[key]


# --- state and the URL -------------------------------------------------------------------------


def _parse(name: str, raw: str):
    if name == "sparsity":
        value = float(raw)
        if not 0.0 <= value < 1.0:
            raise ValueError
        return round(value, 2)
    if name == "keep":
        if raw not in ("0", "1"):
            raise ValueError
        return raw == "1"
    allowed = {
        "model": model_names(),
        "criterion": list(CRITERIA),
        "structure": list(STRUCTURES),
        "normalise": list(NORMALISATIONS),
    }[name]
    if raw not in allowed:
        raise ValueError
    return raw


def init_state() -> None:
    """Once per session: settings from the query string; bad or stale values fall back with a notice."""
    if "cfg" in st.session_state:
        return
    cfg, notices = dict(DEFAULTS), []
    for name in DEFAULTS:
        if name in st.query_params:
            raw = st.query_params[name]
            try:
                cfg[name] = _parse(name, raw)
            except (ValueError, TypeError):
                notices.append(f"Ignored {name}={raw!r} from the link (not a valid value); using {DEFAULTS[name]!r}.")
    if not _supports(cfg["criterion"], cfg["structure"]):
        notices.append(f"Criterion {cfg['criterion']!r} has no {cfg['structure']} mode; using 'magnitude'.")
        cfg["criterion"] = "magnitude"
    st.session_state.cfg = cfg
    st.session_state.notices = notices
    st.session_state.pruners = {}
    st.session_state.user_labs = {}


def cfg() -> dict:
    return st.session_state.cfg


def sync_query() -> None:
    c = cfg()
    st.query_params.from_dict({k: ("1" if v is True else "0" if v is False else str(v)) for k, v in c.items()})


def show_notices() -> None:
    for note in st.session_state.pop("notices", []):
        st.warning(note)
    st.session_state.notices = []


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
        with st.expander("Upload your own checkpoint"):
            _upload()


def _model_label(name: str) -> str:
    if name in zoo.BUNDLED:
        return f"{name} (bundled, Fashion-MNIST)"
    if name in zoo.EFFICIENTNET:
        return f"{name} (ImageNet weights)"
    if name in st.session_state.get("user_labs", {}):
        return f"{name} (your upload)"
    return f"{name} (torchvision)"


def _upload() -> None:
    arch = st.selectbox("Architecture of the checkpoint", UPLOAD_ARCHS, key="upload_arch")
    file = st.file_uploader("state_dict (.pt/.pth) or TorchScript file", type=["pt", "pth", "ts"], key="upload_file")
    if file is None:
        return
    name = f"upload:{file.name}"
    if name in st.session_state.user_labs:
        return
    try:
        loaded = checkpoints.load_checkpoint(file.getvalue(), arch, name=name)
    except PrunekitError as exc:
        st.error(str(exc))
        return
    st.session_state.user_labs[name] = Lab(loaded)
    cfg()["model"] = name
    st.session_state["w_model"] = name
    st.rerun()


def lab() -> Lab:
    name = cfg()["model"]
    if name in st.session_state.user_labs:
        return st.session_state.user_labs[name]
    return shared_lab(name)


def untrained_banner(current: Lab) -> bool:
    """Show the banner for untrained models; True when accuracy and importance are meaningless."""
    if current.loaded.pretrained:
        return False
    st.error(
        "**Untrained: structure only.** "
        + " ".join(current.loaded.notes)
        + " Accuracy and weight-based importance are not shown as meaningful."
    )
    return True


# --- pruning -----------------------------------------------------------------------------------


def pruner(current: Lab, scope: str) -> Pruner:
    c = cfg()
    key = (current.loaded.name, id(current), *_settings(), scope)
    pruners = st.session_state.pruners
    if key not in pruners:
        with st.spinner(f"Scoring {c['criterion']} ({c['structure']}) once; every later slider move is a lookup..."):
            pruners[key] = current.pruner(c["criterion"], c["structure"], c["normalise"])
    return pruners[key]


def config(scope: str) -> PruneConfig:
    return PruneConfig(cfg()["sparsity"], scope, cfg()["keep"])


def prune_both(current: Lab) -> dict[str, PruneResult]:
    return {scope: pruner(current, scope).prune(config(scope)) for scope in SCOPES}


def eval_limit(current: Lab, estimate: bool) -> int | None:
    return ESTIMATE_IMAGES if estimate and len(current.loaded.eval_data()) > ESTIMATE_IMAGES else None


def _key(kind: str, current: Lab, *extra) -> tuple:
    """Cache key: shared models by name; an upload only within its own session's Lab."""
    owner = id(current) if current.loaded.family == "user" else 0
    return (kind, current.loaded.name, owner, *extra)


def _settings() -> tuple:
    c = cfg()
    return c["criterion"], c["structure"], c["normalise"]


def dense_accuracy(current: Lab, limit: int | None) -> Accuracy:
    key = _key("dense", current, limit)
    return _shared(key, lambda: accuracy(current.loaded.model, current.loaded.eval_data(), limit=limit))


def pruned_accuracy(current: Lab, scope: str, limit: int | None) -> Accuracy:
    p = pruner(current, scope)
    conf = config(scope)
    key = _key("pruned", current, *_settings(), conf.key(), limit)

    def compute() -> Accuracy:
        p.apply_(conf)
        return p.evaluate(limit=limit)

    return _shared(key, compute)


def collapse_point(current: Lab, scope: str = "global") -> float | None:
    key = _key("collapse", current, *_settings(), scope, cfg()["keep"])
    p = pruner(current, scope)
    return _shared(key, lambda: p.collapse_point(config(scope)))


def filter_view(current: Lab, criterion: str, scope: str) -> analysis.FilterView:
    table = current.table(criterion, "filter", cfg()["normalise"])
    return analysis.filter_view(table, config(scope), current.first_last)


def agreement(current: Lab, criteria: list[str], scope: str):
    tables = {name: current.table(name, "filter", cfg()["normalise"]) for name in criteria}
    return analysis.agreement(tables, config(scope), current.first_last)


def sensitivity(current: Lab, conf: SensitivityConfig, progress: Callable[[float, str], None]) -> list[SensitivityRow]:
    key = _key("sensitivity", current, conf)
    cache = _results()
    with cache.lock:
        if key in cache.values:
            return cache.values[key]
    sets = len(current.table(conf.criterion, conf.structure).sets) * len(conf.sparsities)
    rows = []
    with cache.lock:
        for i, row in enumerate(sensitivity_scan(current, conf)):
            rows.append(row)
            progress((i + 1) / sets, f"{row.layer} at {row.sparsity:.0%}: {row.accuracy:.1%}")
        cache.values[key] = rows
    return rows


def tradeoff_curve(
    current: Lab, criterion: str, scope: str, structure: str, sparsities: tuple[float, ...], limit: int | None
) -> dict:
    key = _key("curve", current, criterion, scope, structure, cfg()["normalise"], sparsities, cfg()["keep"], limit)

    def compute() -> dict:
        p = current.pruner(criterion, structure, cfg()["normalise"])
        acc, speed = [], []
        for s in sparsities:
            r = p.prune(PruneConfig(s, scope, cfg()["keep"]))
            acc.append(p.evaluate(limit=limit).top1)
            speed.append(r.theoretical_speedup)
        point = p.collapse_point(PruneConfig(0.0, scope, cfg()["keep"]))
        return {"sparsity": list(sparsities), "accuracy": acc, "speedup": speed, "collapse_point": point}

    return _shared(key, compute)


def attribution(current: Lab, index: int) -> tuple:
    data = current.loaded.eval_data()
    image, label = data.images[index], int(data.labels[index])
    p = pruner(current, "global")
    p.apply_(config("global"))
    dense = analysis.attribution_map(current.loaded.model, image, label)
    pruned = analysis.attribution_map(p.model, image, label)
    return image.mean(0), dense, pruned, data.classes[label]

"""What every session shares, one per server process and never mutated by a session: the labs of the
zoo models, the evaluation service, figures and export bundles keyed by their content.

What a configuration produces is keyed by the configuration, never by the session: ``Lab.result``
(shared per model, computed once) gives the pruning numbers, and the evaluation service (worker
processes, one scheduler) gives accuracies, so thirty students at one slider position cost one
computation and the server process never evaluates while holding a lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
import torch

from prunekit.app.channel import CHANNEL
from prunekit.app.pacing import Pacing
from prunekit.app.settings import Settings
from prunekit.app.turns import Turns
from prunekit.core.evaluate import interval_label
from prunekit.core.lab import Lab
from prunekit.core.shared import SingleFlight
from prunekit.core.spec import COMPARED_SCOPES
from prunekit.errors import InvalidArgumentError
from prunekit.models import custom, imagenette, timm_zoo, zoo
from prunekit.service import memory
from prunekit.service.evaluation import RAY_ENV, EvalService, open_service
from prunekit.service.jobs import ESTIMATE_IMAGES, EvalJob
from prunekit.service.loading import Loads, LoadStatus, prepared_lab
from prunekit.service.memory import MEMORY_ENV, ModelBudget, budget_bytes, footprint, gigabytes
from prunekit.service.store import ResultStore

torch.set_num_threads(int(os.environ.get("PRUNEKIT_THREADS", os.cpu_count() or 1)))  # tests: one per process


DEFAULTS = Settings()
log = logging.getLogger("prunekit.app")


@st.cache_resource(show_spinner="Loading your model...")
def own_lab() -> Lab | None:
    """The model ``prunekit.launch`` handed this server (its caller's own), or None."""
    path = os.environ.get(custom.MODEL_FILE_ENV)
    return Lab(custom.read(path)) if path else None


def defaults() -> Settings:
    """The settings a session starts from (a fresh copy): on the launched model when there is one."""
    mine = own_lab()
    return DEFAULTS.copy(model=mine.loaded.name) if mine is not None else DEFAULTS.copy()


def shared_lab(name: str) -> Lab:
    mine = own_lab()
    return mine if mine is not None and name == mine.loaded.name else _zoo_lab(name)


def _zoo_lab(key: str | OnFolder) -> Lab:
    if key in labs():
        return labs().get(key)
    with st.spinner(f"Loading {key} (first time only)..."):
        return loads().get(key)


@dataclass(frozen=True)
class OnFolder:
    """The budget's key of zoo model ``name`` evaluated on the server's folder (a zoo model's key is its name)."""

    name: str

    def __str__(self) -> str:
        return f"{self.name} on {folder_title()}"


INLINE_WAIT_S = 2.0  # a load this quick shows its page at once; a longer one shows its progress instead


def start_loading(name: str) -> LoadStatus | None:
    """None when zoo model ``name`` is ready (held, or loaded within ``INLINE_WAIT_S``), else its load's
    status: the load goes on on a loader thread, the page shows its progress. Raises the load's error."""
    got = loads().get(name, wait_s=0)
    if isinstance(got, LoadStatus):  # not held: wait a moment, leaving the turn to other runs meanwhile
        with turns().aside():
            got = loads().get(name, wait_s=INLINE_WAIT_S)
    return got if isinstance(got, LoadStatus) else None


def load_status(name: str) -> LoadStatus | None:
    """The status of zoo model ``name``'s load while it runs, else None (ready, failed or never asked)."""
    return loads().status(name)


@st.cache_resource(show_spinner=False)
def loads() -> Loads[Lab]:
    """The zoo models this server holds, within its memory budget (``$PRUNEKIT_MEMORY_GB``, ``--memory-gb``),
    loaded on loader threads: least recently used ones are dropped to make room, the default never; one too
    large is refused."""
    budget = ModelBudget(
        budget_bytes(),
        estimate=lambda key: footprint(zoo.param_count(key.name if isinstance(key, OnFolder) else key)),
        load=_load_zoo_lab,
        keep=frozenset({DEFAULTS.model}),
        on_evict=_evicted,
        in_use_s=memory.IN_USE_S,  # read at start: a test may shorten it
    )
    return Loads(budget)


def labs() -> ModelBudget[Lab]:
    """The zoo models this server holds (see :func:`loads`)."""
    return loads().budget


def _load_zoo_lab(key: str | OnFolder, progress: Callable[[int], None]) -> Lab:
    if isinstance(key, OnFolder):
        return Lab(zoo.load_on_folder(key.name, eval_folder()))
    first = DEFAULTS.copy(model=key)
    return prepared_lab(lambda: zoo.load(key), [first.spec(scope) for scope in COMPARED_SCOPES], progress)


def budget_line() -> str:
    """The memory budget in one sentence, as the server states it at start and the Model page shows it."""
    held = labs()
    models = ", ".join(f"{name} ({gigabytes(size)})" for name, size in held.held()) or "none yet"
    return (
        f"Memory budget for models: {gigabytes(held.budget)} (set with `prunekit app --memory-gb` or "
        f"{MEMORY_ENV}); estimated in use: {gigabytes(held.used())}, by {models}."
    )


def _evicted(key: str | OnFolder, lab: Lab) -> None:
    """A zoo model the budget let go: the evaluation workers forget it too."""
    log.warning("prunekit: memory budget: dropped %s, the least recently used model", key)  # the operator sees it
    service().drop_model(model_key(lab))


MODELS_ENV = "PRUNEKIT_MODELS"  # set by `prunekit app --models PATTERNS`


def offered_models(patterns: str | None = None) -> list[str]:
    """The zoo models this server offers: every one, or those matching ``patterns`` (default:
    ``$PRUNEKIT_MODELS``), the default model always among them."""
    patterns = os.environ.get(MODELS_ENV, "") if patterns is None else patterns
    return zoo.matching(patterns, always=DEFAULTS.model) if patterns.strip() else zoo.model_names()


EVAL_FOLDER_ENV = "PRUNEKIT_EVAL_FOLDER"  # set by `prunekit app --eval-folder DIR`


def eval_folder() -> str | None:
    """The ImageFolder the person starting the server offered as evaluation data, else Imagenette's validation
    images when they were downloaded here (`prunekit data imagenette`), else None."""
    if os.environ.get(EVAL_FOLDER_ENV):
        return os.environ[EVAL_FOLDER_ENV]
    found = imagenette.validation_folder()
    return str(found) if found is not None else None


def folder_title() -> str:
    """How the pages name :func:`eval_folder`."""
    folder = eval_folder() or ""
    return "Imagenette" if folder and not os.environ.get(EVAL_FOLDER_ENV) else f"the folder {Path(folder).name!r}"


def folder_fits(name: str) -> bool:
    """Whether zoo model ``name`` may be offered :func:`eval_folder`: any folder the server was given (its classes
    are checked when chosen), Imagenette only for ImageNet models."""
    return bool(os.environ.get(EVAL_FOLDER_ENV)) or zoo.is_imagenet(name)


def folder_lab(name: str) -> Lab:
    """Zoo model ``name`` evaluated on :func:`eval_folder` (raises when the folder's classes do not fit), held
    within the memory budget as a model of its own."""
    return _zoo_lab(OnFolder(name))


@st.cache_resource(show_spinner=False)
def service() -> EvalService:
    """The evaluation service: ``$PRUNEKIT_WORKERS`` local processes (default: one per core; one beside
    a Ray cluster named by ``$PRUNEKIT_RAY_ADDRESS``, which then takes the accuracy jobs), results on disk; the
    workers run ``$PRUNEKIT_WORKER_NICE`` (default 10) below the server, so that pages stay responsive."""
    ray = os.environ.get(RAY_ENV) or None
    workers = int(os.environ.get("PRUNEKIT_WORKERS", 0)) or (1 if ray else None)
    nice = int(os.environ.get("PRUNEKIT_WORKER_NICE", 10))
    svc = open_service(ray, workers, ResultStore(), fall_back=True, nice=nice)
    CHANNEL.service = svc  # the live channel's route reads results from it
    default = shared_lab(defaults().model)
    register(svc, default)
    if curve_fill_enabled():
        svc.fill_curve(template(default, defaults()), COMPARED_SCOPES)  # warm before most people ask for it
    return svc


def curve_fill_enabled() -> bool:
    """Background accuracy curves (on unless ``PRUNEKIT_CURVE_FILL=0``, which the unit tests set)."""
    return os.environ.get("PRUNEKIT_CURVE_FILL", "1") != "0"


def warm() -> None:
    """Before the server takes sessions (prunekit.app.serve): the default model, its profile, the service."""
    start = defaults()
    current = shared_lab(start.model)
    current.profile  # noqa: B018 - computed now so that the first page does not wait for it
    current.result(start.spec())
    model_names()
    print(f"prunekit: {budget_line()}", file=sys.stderr, flush=True)
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


def model_names() -> list[str]:
    """Every model a session can pick: the launched one first, then the zoo's."""
    mine = own_lab()
    return ([mine.loaded.name] if mine is not None else []) + zoo_names()


@st.cache_resource
def zoo_names() -> list[str]:
    return offered_models()


@st.cache_resource
def zoo_names_without_timm() -> list[str]:
    """The zoo's names less timm's ~1,550: what the pickers list until timm's are asked for (every name listed
    is sent to the browser again on every rerun)."""
    return [n for n in zoo_names() if not timm_zoo.is_timm(n)]


@st.cache_resource
def timm_zoo_names() -> frozenset[str]:
    """timm's names among the zoo's, for a set lookup per name on every rerun."""
    return frozenset(zoo_names()) - frozenset(zoo_names_without_timm())


def shared(key: tuple, compute: Callable[[], object]):
    """Compute once per process; a hit never waits behind someone else's computation, and a miss leaves the
    run's turn to others while it computes (or waits for whoever computes it)."""
    got = _computed().peek(key)
    if got is not None:
        return got
    with turns().aside():
        return _computed().get(key, compute)


def model_key(current: Lab) -> str:
    """The service's name for a model: zoo models by name, an upload or your own by name and weights."""
    if current.loaded.eval_folder is not None:  # same weights, other images: other results
        return f"{current.loaded.name}@{Path(current.loaded.eval_folder.root).name}#{current.fingerprint[:12]}"
    if current.loaded.family in ("user", "custom"):
        return f"{current.loaded.name}#{current.fingerprint[:12]}"
    return current.loaded.name


def register(svc: EvalService, current: Lab) -> None:
    """Tell the service how its workers load ``current`` (the spec it was loaded from)."""
    if current.loaded.spec is None:
        raise InvalidArgumentError(f"model {current.loaded.name!r} has no spec: worker processes cannot load it")
    svc.register(model_key(current), current.loaded.spec, current.fingerprint)


def template(current: Lab, c: Settings) -> EvalJob:
    """The job of ``c``'s global scope at sparsity 0: what a page turns into the jobs it asks for."""
    return EvalJob(model_key(current), c.spec(sparsity=0.0))


def estimate_size(current: Lab) -> int | None:
    """Images in the quick estimate, or None when the evaluation set is small enough to score whole."""
    return ESTIMATE_IMAGES if len(current.loaded.eval_data()) > ESTIMATE_IMAGES else None


def figure(kind: str, key: tuple, build: Callable[[], object]):
    """A plotly figure built once per content ``key`` and shared by every session (st.plotly_chart
    copies a figure before it serialises it, so the shared one is never mutated)."""
    return shared(("figure", kind, *key), build)


@st.cache_resource
def bundles() -> SingleFlight:
    return SingleFlight(maxsize=4)  # export files can be tens of MB: keep few


@st.cache_resource
def pacing() -> Pacing:
    return Pacing()


@st.cache_resource
def turns() -> Turns:
    """The turns every session's script run takes (:mod:`prunekit.app.turns`)."""
    return Turns()


def aside_unless(ready: bool) -> contextlib.AbstractContextManager:
    """Around work that may take a while unless ``ready``: the run leaves its turn to others meanwhile."""
    return contextlib.nullcontext() if ready else turns().aside()


def pace(session: str, base: float, polls_per_s: float | None = None) -> float:
    """How often ``session``'s polling part refreshes while pending (``base`` alone, slower in a full room, so
    that the room's polls of it stay near ``polls_per_s``)."""
    shared = pacing()
    shared.seen(session)
    return shared.every(base, polls_per_s)

"""A session's settings: read once from the URL (a share link), kept across pages, written back to the URL;
and the context a page's panels draw from (:class:`PageContext`)."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

from prunekit.app import links
from prunekit.app.server_state import defaults, folder_lab, model_names, service, shared_lab
from prunekit.app.settings import Settings
from prunekit.core.importance import CRITERIA
from prunekit.core.lab import Lab
from prunekit.core.spec import NORMALISATIONS, ROUND_TO_CHOICES, STRUCTURES, PruneSpec, Scope
from prunekit.errors import PrunekitError, without_server_paths
from prunekit.models import zoo
from prunekit.service.evaluation import EvalService


@dataclass(frozen=True)
class PageContext:
    """What a page's panels draw from: the session's lab and settings (the same object the widgets write to),
    the evaluation service, and the session's id (its requests replace each other there).

    The lab is held weakly: a page part that refreshes itself keeps its context, and Streamlit keeps a closed
    session's parts for minutes; the server's memory budget alone decides how long a model stays."""

    held: weakref.ref[Lab]
    settings: Settings
    service: EvalService
    session: str

    @property
    def lab(self) -> Lab:
        """The session's lab (through the budget again if it was dropped since this run began)."""
        current = self.held()
        return current if current is not None else lab()


def context() -> PageContext:
    """The context of this run of the page (call after the sidebar has settled the model)."""
    return PageContext(weakref.ref(lab()), cfg(), service(), session_id())


def init_state() -> None:
    """Once per session: settings from the query string; bad or stale values fall back with a notice."""
    if "cfg" in st.session_state:
        return
    params, notices = st.query_params.to_dict(), []
    asked = params.get("model")
    if asked is not None and asked not in model_names() and asked in zoo.model_names():
        del params["model"]  # a zoo model the person starting the server left out (prunekit app --models)
        notices.append(
            f"Model {links.shown(asked)} from the link is not offered on this server (its models were chosen when "
            f"it started); using '{defaults().model}'."
        )
    cfg, more = links.read_settings(params, defaults(), _choices())
    notices += more
    if not CRITERIA[cfg.criterion].supports(cfg.structure):
        notices.append(f"Criterion '{cfg.criterion}' has no {cfg.structure} mode; using 'magnitude'.")
        cfg.criterion = "magnitude"
    st.session_state.cfg = cfg
    st.session_state.notices = notices
    st.session_state.user_labs = {}


def _choices() -> dict[str, list[str]]:
    return {
        "model": model_names(),
        "criterion": list(CRITERIA),
        "structure": list(STRUCTURES),
        "normalise": list(NORMALISATIONS),
        "round_to": [str(r) for r in ROUND_TO_CHOICES],
    }


def cfg() -> Settings:
    return st.session_state.cfg


def sync_query() -> None:
    st.query_params.from_dict(links.to_query(cfg()))


def error_text(error: object) -> str:
    """An error's words for a page: the server's paths reduced to the names they end in."""
    return without_server_paths(str(error))


@contextlib.contextmanager
def reported(what: str, show: Callable[[str], object] = st.error) -> Iterator[None]:
    """Show a :class:`PrunekitError` raised inside as ``what: message`` where the panel stands, and go on with
    the rest of the page (``app/main.py`` does the same around the whole page). Bugs are not caught."""
    try:
        yield
    except PrunekitError as exc:
        show(f"{what}: {error_text(exc)}")


def bind(widget: Callable, name: str, **kwargs):
    """Render a widget whose value persists in cfg across pages (widget state is dropped off-page)."""
    key = f"w_{name}"
    if key not in st.session_state:
        st.session_state[key] = getattr(cfg(), name)
    value = widget(key=key, **kwargs)
    setattr(cfg(), name, value)
    return getattr(cfg(), name)


def apply_preset(**values) -> None:
    """Callback for preset buttons: set cfg and the widgets before they are drawn."""
    for name, value in values.items():
        setattr(cfg(), name, value)
        st.session_state[f"w_{name}"] = getattr(cfg(), name)


def lab() -> Lab:
    name = cfg().model
    if name in st.session_state.user_labs:
        return st.session_state.user_labs[name]
    if st.session_state.get("on_folder") == name:  # chosen in the sidebar, and the folder fits this model
        return folder_lab(name)
    return shared_lab(name)


def spec(scope: Scope | str = Scope.GLOBAL) -> PruneSpec:
    """The on-screen configuration for ``scope`` at the slider."""
    return cfg().spec(scope)


def unknown_overrides(current: Lab) -> list[str]:
    """Drop the link's per-layer overrides that name no layer (or cluster) of the model on screen; their names."""
    known = {s.name for s in current.table(*spec().table_key).sets}
    given = cfg().overrides
    unknown = sorted(set(given) - known)
    if unknown:
        apply_preset(overrides={k: v for k, v in given.items() if k in known})
    return unknown


def session_id() -> str:
    ctx = get_script_run_ctx(suppress_warning=True)
    return ctx.session_id if ctx is not None else ""

"""The allocations the Prune page overlays on its per-layer chart and accuracy curve, beside the page's own
pair (global on the chosen normalisation, and local): their shared results, curves and live readings."""

from __future__ import annotations

import streamlit as st

from prunekit.app.server_state import curve_fill_enabled, estimate_size, register, service, template
from prunekit.app.session_state import cfg, session_id
from prunekit.core.lab import Lab
from prunekit.core.result import PruneResult
from prunekit.core.spec import ALLOCATIONS, Allocation, AllocationMethod, Scope
from prunekit.service import readings


def pair_names() -> dict[Scope, str]:
    """The page's two scopes as allocation names: scope -> name (local ranks the same on any normalisation)."""
    method = Allocation(Scope.GLOBAL, cfg().normalise).method
    return {Scope.GLOBAL: method.name if method else "global", Scope.LOCAL: "local"}


def choices() -> list[str]:
    """The allocations that mean something for the configuration on screen (none for an N:M pattern)."""
    return [a.name for a in ALLOCATIONS.values() if a.fits(cfg().structure)]


def extras(chosen: list[str]) -> list[AllocationMethod]:
    """The chosen allocations the page's pair does not already show."""
    shown = set(pair_names().values())
    return [ALLOCATIONS[name] for name in chosen if name not in shown and name in choices()]


def results(current: Lab, pair: dict[str, PruneResult], chosen: list[str]) -> dict[str, PruneResult]:
    """Per chosen allocation (by name) its result at the slider: the pair's own, or one more shared result
    (measured without the path test: the chart needs the weights only)."""
    names = pair_names()
    out = {names[scope]: r for scope, r in pair.items() if names[scope] in chosen}
    for method in extras(chosen):
        out[method.name] = current.result(cfg().spec().with_allocation(method.allocation), paths=False)
    return {name: out[name] for name in chosen if name in out}


def _template(current: Lab, method: AllocationMethod):
    job = template(current, cfg())
    return job.with_spec(allocation=method.allocation)


def fill_curves(current: Lab, chosen: list[str]) -> None:
    """Queue each extra allocation's accuracy curve as background work (once per configuration)."""
    if not curve_fill_enabled():
        return
    for method in extras(chosen):
        service().fill_curve(_template(current, method), [method.scope])


def curves(current: Lab, chosen: list[str]) -> dict[str, dict[float, float]]:
    """Per extra allocation: sparsity -> full-split top-1 known so far on the slider's grid."""
    svc = service()
    return {m.name: readings.read_curves(svc, _template(current, m), [m.scope])[m.scope] for m in extras(chosen)}


def _step_back(svc, shown: set[str]) -> None:
    """Allocations taken off the chart since the last ask: their live requests become background work
    (once, when they leave: not on every poll)."""
    asked = st.session_state.setdefault("overlay_asked", set())
    for name in asked - shown:
        svc.request([], f"{session_id()}/overlay/{name}")
    st.session_state["overlay_asked"] = set(shown)


def curves_pending(drawn: dict[str, dict[float, float]]) -> bool:
    """True while an extra allocation's curve is still filling."""
    return curve_fill_enabled() and any(len(c) < readings.curve_points() for c in drawn.values())


def points(current: Lab, chosen: list[str], ask: bool = True) -> dict[str, readings.Reading]:
    """Per extra allocation its reading at the slider (each its own live request beside the page's pair)."""
    svc = service()
    register(svc, current)
    if ask:
        _step_back(svc, {m.name for m in extras(chosen)})
    out = {}
    for method in extras(chosen):
        job = _template(current, method).at(cfg().sparsity)
        view = readings.read_point(
            svc, job, [method.scope], estimate_size(current), f"{session_id()}/overlay/{method.name}", ask
        )
        out[method.name] = view.scopes[method.scope]
    return out

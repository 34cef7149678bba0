"""The Prune page's accuracy: the readouts at the slider (pushed over the live channel, or refreshing themselves
where a browser cannot use it), the other allocations' figures and the curve over the slider's range."""

from functools import partial

import streamlit as st

from prunekit.app import accuracy_plots, computed, curve_chart, overlay, readouts, server_state
from prunekit.app.live import live
from prunekit.app.pacing import BACKGROUND_POLLS_PER_S
from prunekit.app.session_state import PageContext
from prunekit.core.spec import ALLOCATIONS
from prunekit.service.queue import CURVE_GRIDS

PER_LAYER = " + the link's layers"  # the slider's sparsity is not the whole story when a plan sets some layers
POINT_POLL, CURVE_POLL = 0.25, 2.0  # seconds between refreshes while results are on their way


def panel(ctx: PageContext, overlaid: list[str]) -> None:
    """The accuracy at the slider (estimate first) and the curve over the slider's range, filled live."""
    lab = ctx.lab
    computed.fill_curve(lab)
    overlay.fill_curves(lab, overlaid)
    extra_pending = any(r.pending for r in overlay.points(lab, overlaid, ask=False).values())
    if readouts.usable():  # dense, global and local listen on the live channel (under the slider)
        if overlaid:
            live("point_more", partial(more_panel, ctx, overlaid), server_state.pace(ctx.session, POINT_POLL))
    else:
        st.caption(readouts.FALLBACK_NOTE)
        live(
            "point",
            partial(point_panel, ctx, overlaid),
            server_state.pace(ctx.session, POINT_POLL),
            computed.point_view(lab).pending or extra_pending,
        )
    if readouts.usable() and computed.has_curve() and not overlay.extras(overlaid):
        pushed_curve(ctx)  # each point pushed as it lands: no refresh
        return
    curve_pending = computed.curve_view(lab).pending or (
        computed.has_curve() and overlay.curves_pending(overlay.curves(lab, overlaid))
    )
    every = server_state.pace(ctx.session, CURVE_POLL, BACKGROUND_POLLS_PER_S)  # a room of 100: every 10 s
    live("curve", partial(curve_panel, ctx, overlaid), every, curve_pending)


def _metric(slot, label: str, reading, dense=None) -> None:
    if reading.error:
        slot.error(f"{label}: the evaluation failed ({reading.error}). It is retried on the next move.")
        return
    acc = reading.best
    if acc is None:
        slot.metric(label, "computing...", help="Queued in the evaluation workers.")
        return
    tag = f" (estimate, {acc.n:,} images)" if acc.is_estimate else ""
    base = dense.full if acc is reading.full and dense is not None else dense.estimate if dense else None
    delta = f"{100 * (acc.top1 - base.top1):+.2f} points" if base is not None else None
    slot.metric(
        label + tag, f"{acc.top1:.2%}", delta, help=f"Top-1 on {acc.n:,} images; below, its 95% Wilson interval."
    )
    slot.caption(acc.interval_label())


def _at(ctx: PageContext) -> str:
    c = ctx.settings
    return f" at {c.sparsity:.0%}{PER_LAYER if c.overrides else ''}"


def point_readouts(ctx: PageContext) -> None:
    """Dense, global and local top-1 at the slider, drawn by the readouts component: what is known now, and each
    pending figure as it lands (estimate, then full), pushed over the live channel without a rerun."""
    view = computed.point_view(ctx.lab)
    cards = [readouts.Card("dense", "Dense", view.dense, *view.jobs["dense"])]
    cards += [readouts.Card(s, f"{s.title()}{_at(ctx)}", r, *view.jobs[s]) for s, r in view.scopes.items()]
    readouts.show(cards, key="prune_readouts")


def point_panel(ctx: PageContext, overlaid: list[str]) -> bool:
    """The same figures as :func:`point_readouts`, for a browser that cannot use the channel: this part
    refreshes itself while any is pending."""
    view = computed.point_view(ctx.lab)
    slots = st.columns(3)
    _metric(slots[0], "Dense", view.dense)
    for slot, (scope, reading) in zip(slots[1:], view.scopes.items(), strict=True):
        _metric(slot, f"{scope.title()}{_at(ctx)}", reading, view.dense)
    return more_panel(ctx, overlaid, view) or view.pending


def more_panel(ctx: PageContext, overlaid: list[str], view=None) -> bool:
    """The other allocations the chart overlays, at the slider (refreshed while pending)."""
    view = view or computed.point_view(ctx.lab, ask=False)
    more = overlay.points(ctx.lab, overlaid)
    for slot, (name, reading) in zip(st.columns(max(3, len(more))), more.items(), strict=False):
        _metric(slot, f"{ALLOCATIONS[name].title}{_at(ctx)}", reading, view.dense)
    return any(r.pending for r in more.values())


def pushed_curve(ctx: PageContext) -> None:
    """Both scopes' curves over the slider's range, drawn by a component that adds each grid point as it lands
    (pushed over the live channel); the page itself never refreshes for them."""
    lab, view, point = ctx.lab, computed.curve_view(ctx.lab), computed.point_view(ctx.lab, ask=False)
    series = [
        curve_chart.Series(scope, f"{scope} (full split)", points, curve_chart.curve_jobs(lab, scope, points))
        for scope, points in view.curves.items()
    ]
    marks = {scope: r.best for scope, r in point.scopes.items()}
    curve_chart.show(series, ctx.settings.sparsity, marks, point.dense.best, readouts.token(), readouts.fell_back)
    _curve_caption(lab, view, sum(map(len, view.curves.values())), len(view.curves))


def curve_panel(ctx: PageContext, overlaid: list[str]) -> bool:
    lab, sparsity = ctx.lab, ctx.settings.sparsity
    view, point = computed.curve_view(lab), computed.point_view(lab, ask=False)
    marks = {s: r.best for s, r in point.scopes.items()}
    more = overlay.curves(lab, overlaid) if view.points else {}
    marks |= {n: r.best for n, r in overlay.points(lab, overlaid, ask=False).items()} if more else {}
    drawn = view.curves | more
    key = (repr(drawn), sparsity, repr(marks), repr(point.dense.best))
    fig = server_state.figure(
        "curve", key, lambda: accuracy_plots.accuracy_curve(drawn, sparsity, marks, point.dense.best)
    )
    st.plotly_chart(fig, width="stretch")
    _curve_caption(lab, view, sum(map(len, drawn.values())), len(drawn))
    return view.pending or overlay.curves_pending(more)


def _curve_caption(lab, view, known: int, curves: int) -> None:
    s, data = view.status, lab.loaded.eval_data()
    curve = (
        f"Curve: {known} of {curves * view.points} points when the page was drawn, filled in the background every "
        f"{', then '.join(f'{g:g}' for g in CURVE_GRIDS)}."
        if view.points
        else "No curve: the pattern fixes the sparsity."
    )
    st.caption(
        f"Top-1 on all {len(data):,} images ({data.description}); an estimate first reads a fixed stratified subset of "
        f"{server_state.ESTIMATE_IMAGES:,}. {curve} Workers then: {s.busy} of "
        f"{s.alive} busy, {s.queued_live} live and {s.queued_background} background jobs queued."
    )

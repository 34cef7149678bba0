"""The Sensitivity page: prune one layer at a time, then plan per-layer sparsities for a budget."""

from dataclasses import dataclass
from functools import partial

import streamlit as st

from prunekit.app import computed, planning, plots, server_state, session_state, views
from prunekit.app.live import live
from prunekit.app.session_state import PageContext, reported
from prunekit.core.budget import TARGETS, Target
from prunekit.core.evaluate import interval_label
from prunekit.core.importance import CRITERIA
from prunekit.core.spec import Structure

LEVELS = [0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99]


@dataclass(frozen=True)
class Scan:
    """The scan the page shows: one criterion over a grid of sparsities, on an estimate or the full split."""

    model: str
    criterion: str
    levels: tuple[float, ...]
    estimate: bool


def page() -> None:
    intro()
    ctx = session_state.context()
    if computed.untrained_banner(ctx.lab):
        return
    scan = controls(ctx)
    if scan is None:
        return
    live("sensitivity", partial(scan_panel, ctx, scan), 0.5, None if "live:sensitivity" in st.session_state else True)
    scanned = computed.sensitivity(ctx.lab, scan.criterion, scan.levels, scan.estimate)
    if scanned.complete and scanned.rows:
        plan(ctx, scan, scanned.rows)


def intro() -> None:
    views.intro(
        "Which layers can take the cut?",
        (
            "Sensitivity analysis prunes **one layer at a time**, everything else dense, and measures the accuracy. "
            "Layers whose accuracy barely moves can be pruned hard; sensitive ones (often the first layer and thin "
            "bottlenecks) deserve low sparsity. It is the classic way to choose per-layer sparsities before pruning "
            "for real."
        ),
    )


def controls(ctx: PageContext) -> Scan | None:
    """The scan to show, once its button was pressed for these choices; None until then."""
    a, b = st.columns(2)
    criterion = a.selectbox(
        "Criterion",
        [n for n, x in CRITERIA.items() if x.supports(Structure.UNSTRUCTURED)],
        format_func=lambda n: CRITERIA[n].title,
    )
    levels = b.multiselect("Sparsities", LEVELS, default=[0.3, 0.5, 0.7, 0.9])
    estimate = st.toggle(f"Fast estimate (a stratified {server_state.ESTIMATE_IMAGES:,}-image subset)", value=True)
    if not levels:
        st.info("Choose at least one sparsity.")
        return None
    scan = Scan(ctx.lab.loaded.name, criterion, tuple(sorted(levels)), estimate)
    if st.button("Run the scan", type="primary"):
        st.session_state.sens_scan = scan
    return scan if st.session_state.get("sens_scan") == scan else None


def scan_panel(ctx: PageContext, scan: Scan) -> bool:
    view = computed.sensitivity(ctx.lab, scan.criterion, scan.levels, scan.estimate)
    for message in view.errors[:1]:
        st.error(f"{len(view.errors)} points could not be measured; the first: {session_state.error_text(message)}")
    if not view.complete:
        where = ctx.service.status().backend
        st.progress(view.done / view.total, text=f"{view.done} of {view.total} points measured (on {where})...")
    elif view.rows:
        heatmap(view.rows, scan.levels)
    return not view.complete


def heatmap(rows, levels: tuple[float, ...]) -> None:
    layers = list(dict.fromkeys(r.layer for r in rows))
    drops = [[next(r.drop for r in rows if r.layer == layer and r.sparsity == s) for s in levels] for layer in layers]
    st.plotly_chart(plots.sensitivity_heatmap(layers, list(levels), drops), width="stretch")
    worst = sorted(zip(layers, drops, strict=True), key=lambda t: t[1][-1], reverse=True)
    st.markdown(
        f"Most sensitive at {levels[-1]:.0%}: **`{worst[0][0]}`** (drop {100 * worst[0][1][-1]:.1f} points). "
        f"Least sensitive: **`{worst[-1][0]}`** (drop {100 * worst[-1][1][-1]:.1f} points)."
    )
    first = rows[0]
    st.caption(
        ("Estimate from a stratified subset of " if first.estimate else "Measured on all ")
        + f"{first.images:,} evaluation images. Dense top-1 {first.dense_accuracy:.1%} "
        f"({interval_label(first.dense_accuracy, first.images)}): a drop within that interval's width is noise."
    )


def plan(ctx: PageContext, scan: Scan, rows) -> None:
    """A budget, and the plan the scan gives for it, measured."""
    st.subheader("A plan for a budget")
    st.caption(
        "One sparsity per layer from the scan's grid (or dense) that meets the budget with the smallest predicted "
        "drop, the layers' drops added up (a negative drop counts as none); an exact multiple-choice knapsack. Then "
        "the plan is measured: whether the drops add up is what predicted against measured shows."
    )
    k1, k2 = st.columns(2)
    kind = k1.radio(
        "Budget",
        list(TARGETS),
        horizontal=True,
        format_func=lambda k: f"{k} (at most)",
        help="; ".join(f"{k}: {v}" for k, v in TARGETS.items()),
    )
    drop = kind == "drop"
    value = k2.slider("Fraction", 0.0, 1.0, 0.01 if drop else 0.5, step=0.005 if drop else 0.05, key=f"plan_{kind}")
    target = Target(kind, value)
    pending = planning.pending(ctx.lab, scan.criterion, rows, target)
    live("plan", partial(plan_panel, ctx, scan.criterion, rows, target), 0.5, pending)


def plan_panel(ctx: PageContext, criterion: str, rows, target: Target) -> bool:
    view = None
    with reported("No plan for this budget", show=st.warning):  # the scan's grid cannot meet it
        view = planning.plan_view(ctx.lab, criterion, rows, target)
    if view is None:
        return False
    m1, m2, m3, m4 = st.columns(4)
    m1.metric("MACs left", f"{view.macs_ratio:.1%}", help="Measured on the pruned tensors.")
    m2.metric("Parameters left", f"{view.params_ratio:.1%}", help="Measured on the pruned tensors.")
    dense = view.dense.best
    m3.metric(
        "Predicted top-1",
        f"{dense.top1 - view.plan.predicted_drop:.2%}" if dense else "...",
        help="Dense less the scan's drops, added up.",
    )
    if view.measured.error:
        m4.error(f"The plan could not be measured: {view.measured.error}")
    elif view.measured.best is None:
        m4.metric("Measured top-1", "computing...")
    else:
        m4.metric("Measured top-1", f"{view.measured.best.top1:.2%}")
        m4.caption(view.measured.best.interval_label())
    st.dataframe([{"layer": k, "sparsity": v} for k, v in view.plan.sparsities.items()], hide_index=True)
    left, right = st.columns(2)
    left.download_button(
        "pruning_ratio_dict.json (Torch-Pruning)", view.ratio_dict_json(), file_name="pruning_ratio_dict.json"
    )
    right.markdown(f"[Open this plan on the Prune page](prune?{view.share_query(criterion, ctx.lab.loaded.name)})")
    return view.pending

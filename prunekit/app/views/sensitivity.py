import streamlit as st

from prunekit.app import computed, planning, plots, server_state, session_state
from prunekit.app.live import live
from prunekit.core.budget import TARGETS, Target
from prunekit.core.evaluate import interval_label
from prunekit.core.importance import CRITERIA
from prunekit.core.spec import Structure

st.title("Which layers can take the cut?")
with st.expander("What am I looking at?"):
    st.markdown(
        "Sensitivity analysis prunes **one layer at a time**, everything else dense, and measures the accuracy. "
        "Layers whose accuracy barely moves can be pruned hard; sensitive ones (often the first layer and thin "
        "bottlenecks) deserve low sparsity. It is the classic way to choose per-layer sparsities before pruning for real."
    )
lab = session_state.lab()
if computed.untrained_banner(lab):
    st.stop()
c = session_state.cfg()
a, b = st.columns(2)
criterion = a.selectbox(
    "Criterion",
    [n for n, x in CRITERIA.items() if x.supports(Structure.UNSTRUCTURED)],
    format_func=lambda n: CRITERIA[n].title,
)
levels = b.multiselect("Sparsities", [0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99], default=[0.3, 0.5, 0.7, 0.9])
estimate = st.toggle(f"Fast estimate (a stratified {server_state.ESTIMATE_IMAGES:,}-image subset)", value=True)
if not levels:
    st.info("Choose at least one sparsity.")
    st.stop()
scan = (lab.loaded.name, criterion, tuple(sorted(levels)), estimate)
if st.button("Run the scan", type="primary"):
    st.session_state.sens_scan = scan
if st.session_state.get("sens_scan") != scan:
    st.stop()


def heatmap(rows) -> None:
    layers = list(dict.fromkeys(r.layer for r in rows))
    drops = [[next(r.drop for r in rows if r.layer == layer and r.sparsity == s) for s in scan[2]] for layer in layers]
    st.plotly_chart(plots.sensitivity_heatmap(layers, list(scan[2]), drops), width="stretch")
    worst = sorted(zip(layers, drops, strict=True), key=lambda t: t[1][-1], reverse=True)
    st.markdown(
        f"Most sensitive at {scan[2][-1]:.0%}: **`{worst[0][0]}`** (drop {100 * worst[0][1][-1]:.1f} points). "
        f"Least sensitive: **`{worst[-1][0]}`** (drop {100 * worst[-1][1][-1]:.1f} points)."
    )
    first = rows[0]
    st.caption(
        ("Estimate from a stratified subset of " if first.estimate else "Measured on all ")
        + f"{first.images:,} evaluation images. Dense top-1 {first.dense_accuracy:.1%} "
        f"({interval_label(first.dense_accuracy, first.images)}): a drop within that interval's width is noise."
    )


def scan_panel() -> bool:
    view = computed.sensitivity(lab, criterion, scan[2], estimate)
    for message in view.errors[:1]:
        st.error(f"{len(view.errors)} points could not be measured; the first: {session_state.error_text(message)}")
    if not view.complete:
        where = server_state.service().status().backend
        st.progress(view.done / view.total, text=f"{view.done} of {view.total} points measured (on {where})...")
    elif view.rows:
        heatmap(view.rows)
    return not view.complete


live("sensitivity", scan_panel, 0.5, None if "live:sensitivity" in st.session_state else True)

scanned = computed.sensitivity(lab, criterion, scan[2], estimate)
if not scanned.complete or not scanned.rows:
    st.stop()
st.subheader("A plan for a budget")
st.caption(
    "One sparsity per layer from the scan's grid (or dense) that meets the budget with the smallest predicted drop, "
    "the layers' drops added up (a negative drop counts as none); an exact multiple-choice knapsack. Then the plan "
    "is measured: whether the drops add up is what predicted against measured shows."
)
k1, k2 = st.columns(2)
kind = k1.radio(
    "Budget",
    list(TARGETS),
    horizontal=True,
    format_func=lambda k: f"{k} (at most)",
    help="; ".join(f"{k}: {v}" for k, v in TARGETS.items()),
)
value = k2.slider(
    "Fraction", 0.0, 1.0, 0.5 if kind != "drop" else 0.01, step=0.005 if kind == "drop" else 0.05, key=f"plan_{kind}"
)


def plan_panel() -> bool:
    try:
        view = planning.plan_view(lab, criterion, scanned.rows, Target(kind, value))
    except Exception as exc:  # a grid that cannot meet the budget: said, never a traceback
        st.warning(session_state.error_text(exc))
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
    right.markdown(f"[Open this plan on the Prune page](prune?{view.share_query(criterion, lab.loaded.name)})")
    return view.pending


live("plan", plan_panel, 0.5, planning.pending(lab, criterion, scanned.rows, Target(kind, value)))

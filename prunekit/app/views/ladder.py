"""The Prune page's granularity ladder: weights, vectors, kernels, N:M and filters at one sparsity."""

from functools import partial

import streamlit as st

from prunekit.app import computed
from prunekit.app.live import live
from prunekit.app.session_state import PageContext, error_text
from prunekit.core.spec import Scope
from prunekit.deploy.latency import Latency
from prunekit.service.jobs import JobError
from prunekit.service.ladder import DENSE_KERNELS_NOTE, Rung

POLL = 0.5  # seconds between refreshes while the rungs' figures are on their way
EXPLANATION = (
    "The same sparsity removed in ever larger units (Mishra et al. 2017, the fastai article's ladder): single "
    "weights, **vectors** (one 1 x k_w row of a kernel), **kernels** (one k_h x k_w slice per input and output "
    "channel), the **2:4** pattern and whole **filters**. Each unit is scored by the sum of its weights' scores; a "
    "Linear layer counts as a 1 x 1 convolution, so its vectors and kernels are single weights. Coarser units "
    "cost more accuracy and buy more speed."
)


def panel(ctx: PageContext, scope: Scope) -> None:
    st.subheader("Granularity: weights, vectors, kernels, 2:4, filters")
    st.caption(EXPLANATION)
    if not st.toggle(f"Compare the granularities ({scope} scope, the slider's sparsity)", key="ladder_on"):
        return
    measure_key = (computed.speed_key(ctx.lab, scope), "ladder")
    asked = st.session_state.get("ladder_measure") == measure_key
    if not asked and st.button("Measure every rung's latency", help="Times each pruned model in an evaluation worker."):
        st.session_state.ladder_measure = measure_key
        asked = True
    live("ladder", partial(table, ctx, scope, asked), POLL)


def table(ctx: PageContext, scope: Scope, measure: bool) -> bool:
    """The rungs as one table; True while any figure is on its way."""
    rungs = computed.ladder(ctx.lab, scope, measure)
    st.dataframe([row(r, measure) for r in rungs], hide_index=True, width="stretch")
    first = next((r.accuracy.best for r in rungs if r.accuracy.best is not None), None)
    if first is not None:
        st.caption(f"Top-1 on all {first.n:,} evaluation images; {first.interval_label()} for the first row.")
    if measure:
        st.caption(DENSE_KERNELS_NOTE)
        for r in rungs:  # a filter rung that could not be compacted was timed masked: say why
            if r.structure.is_filter and isinstance(r.latency, Latency) and r.latency.note:
                st.caption(f"{r.structure.label.capitalize()} timed masked, not compacted: {r.latency.note}.")
    return any(r.accuracy.pending or (measure and r.latency is None) for r in rungs)


def row(r: Rung, measure: bool) -> dict[str, str]:
    acc = r.accuracy
    top1 = error_text(acc.error) if acc.error else f"{acc.best.top1:.2%}" if acc.best else "computing..."
    shown = {
        "granularity": r.structure.label,
        "criterion": r.spec.criterion,
        "removed": f"{r.spec.sparsity:.0%} of the {r.structure.units}",
        "weight sparsity": f"{r.result.achieved_sparsity:.1%}",
        "theoretical speedup": f"{r.result.theoretical_speedup:.2f}x" if r.result.remaining_macs else "inf",
        "top-1": top1,
    }
    if measure:
        shown["measured speedup (batch 64)"] = _measured(r.latency)
    return shown


def _measured(latency) -> str:
    if latency is None:
        return "measuring..."
    if isinstance(latency, JobError):
        return error_text(latency.message)
    best = "compact" if "compact" in latency.ms else "masked"
    return f"{latency.speedup(best, 64):.2f}x ({best})"

"""The Prune page's measured speed: latency of the configuration, a layer's latency staircase, the export files."""

from functools import partial

import streamlit as st

from prunekit.app import computed, plots, session_state
from prunekit.app.live import live
from prunekit.app.session_state import PageContext, reported
from prunekit.core.result import PruneResult
from prunekit.core.spec import COMPARED_SCOPES, Scope
from prunekit.deploy.export import FILES
from prunekit.deploy.latency import Latency
from prunekit.deploy.staircase import Staircase
from prunekit.service.jobs import JobError

NOT_FASTER = (
    "**Not faster** although the compacted model needs {fewer:.0%} fewer multiply-adds ({times}). Channel counts "
    "that are not a multiple of the CPU's vector width (8 or 16 floats) can run slower than the full layer, and "
    "small layers are bound by memory, not arithmetic; Torch-Pruning and ModelOpt round kept channels to such a "
    "multiple for this reason."
)
SPEED_POLL = 0.5  # seconds between refreshes while results are on their way


def speed_and_export(ctx: PageContext, results: dict[Scope, PruneResult]) -> Scope:
    """Measured latency and the export files of one scope; returns that scope (recovery uses it too)."""
    st.subheader("Measured speed and export")
    scope = st.radio("Scope for speed, export and recovery", list(COMPARED_SCOPES), horizontal=True, key="action_scope")
    live("speed", partial(speed_panel, ctx, scope, results[scope]), SPEED_POLL, computed.speed_pending(ctx.lab, scope))
    layers = computed.staircase_layers(ctx.lab)
    if layers:
        with st.expander("Latency staircase: one layer's time against the channels it keeps"):
            layer = st.selectbox("Layer (most multiply-adds first)", layers, key="staircase_layer")
            pending = computed.staircase_pending(ctx.lab, layer)
            live("staircase", partial(staircase_panel, ctx, scope, layer), SPEED_POLL, pending)
    with st.expander("Download the pruned model (masks, ratios, prune snippet, safetensors, ONNX)"):
        export_panel(ctx, scope)
    return scope


def speed_panel(ctx: PageContext, scope: Scope, chosen: PruneResult) -> bool:
    """The measured latency at the slider; True while it is being measured."""
    lab = ctx.lab
    asked = st.session_state.get("speed_asked") == computed.speed_key(lab, scope)
    outcome = computed.speed(lab, scope, measure=asked)
    left, right = st.columns([1, 2])
    left.metric("Theoretical speedup", f"{chosen.theoretical_speedup:.2f}x" if chosen.remaining_macs else "inf")
    if outcome is None and not asked:
        if left.button("Measure latency", help="Times dense, masked and compacted models in an evaluation worker."):
            st.session_state.speed_asked = computed.speed_key(lab, scope)
            st.rerun(scope="fragment")
        return False
    if outcome is None:
        left.metric("Measured speedup", "measuring...")
        return True
    if isinstance(outcome, JobError):
        left.error(f"Latency could not be measured: {session_state.error_text(outcome.message)}")
        return False
    best = "compact" if "compact" in outcome.ms else "masked"
    left.metric(f"Measured speedup ({best}, batch 64)", f"{outcome.speedup(best, 64):.2f}x")
    right.dataframe(outcome.rows(), hide_index=True, width="stretch")
    right.caption(
        f"Median of {outcome.runs[1]} (batch 1) and {outcome.runs[64]} (batch 64) interleaved runs, {outcome.threads} "
        f"thread(s), in an evaluation worker on {outcome.machine}; other jobs may share the machine."
    )
    if outcome.note:
        st.info(outcome.note)
    slow = not_faster_note(outcome, chosen)
    if slow:
        st.warning(slow)
    return False


def staircase_panel(ctx: PageContext, scope: Scope, layer: str) -> bool:
    """``layer``'s measured latency at every width and where this configuration leaves it; True while measuring."""
    lab = ctx.lab
    key = computed.staircase_key(lab, layer)
    asked = st.session_state.get("staircase_asked") == key
    outcome = computed.staircase(lab, layer, measure=asked)
    if outcome is None and not asked:
        if st.button("Measure the staircase", help="Times the layer alone at every width in an evaluation worker."):
            st.session_state.staircase_asked = key
            st.rerun(scope="fragment")
        return False
    if outcome is None:
        st.caption("Measuring the staircase...")
        return True
    if isinstance(outcome, JobError):
        st.error(f"The staircase could not be measured: {session_state.error_text(outcome.message)}")
        return False
    kept = computed.kept_width(lab, scope, layer)
    st.plotly_chart(plots.latency_staircase(outcome.counts, outcome.ms, layer, kept), key="staircase_chart")
    st.caption(
        f"`{layer}` rebuilt alone (its input channels, kernel and stride; random weights) at each width, median of "
        f"{outcome.rounds} shuffled rounds at batch {outcome.batch}, {outcome.threads} thread(s), in an evaluation "
        f"worker on {outcome.machine}."
    )
    note = staircase_note(outcome, kept)
    if note:
        st.info(note)
    return False


def staircase_note(outcome: Staircase, kept: int | None) -> str | None:
    """What the staircase says about the width this configuration keeps."""
    if kept is None:
        return None
    here = outcome.at(kept)
    if here is None:
        return (
            f"This configuration keeps {kept} of {outcome.dense} channels here, below the widths measured "
            f"({outcome.counts[0]}-{outcome.dense})."
        )
    wider = outcome.no_faster_than(kept)
    text = f"This configuration keeps {kept} of {outcome.dense} channels here: {here:.3g} ms alone."
    if wider is not None:
        text += (
            f" {wider} channels ran no slower ({outcome.at(wider):.3g} ms): on this machine the layer could keep "
            f"{wider - kept} more at no cost in time (see *Channels kept in multiples of*)."
        )
    return text


def not_faster_note(outcome: Latency, chosen: PruneResult) -> str | None:
    """Say where the compacted model, with fewer multiply-adds, was measured no faster than the dense one."""
    if "compact" not in outcome.ms or chosen.remaining_macs >= chosen.total_macs:
        return None
    batches = outcome.not_faster("compact")
    if not batches:
        return None
    times = "; ".join(
        f"batch {b}: {outcome.ms['compact'][b]:.3g} ms against the dense model's {outcome.ms['dense'][b]:.3g} ms"
        for b in batches
    )
    return NOT_FASTER.format(times=times, fewer=1 - chosen.macs_ratio)


def export_panel(ctx: PageContext, scope: Scope) -> None:
    key = computed.speed_key(ctx.lab, scope)
    if st.button("Prepare the files", help="Compacts the model (filters) and exports it; a few seconds on big models."):
        st.session_state.export_key = key
    if st.session_state.get("export_key") != key:
        return
    with reported("Could not export"):
        with st.spinner("Compacting and exporting..."):
            bundle = computed.export_bundle(ctx.lab, scope)
        export_buttons(bundle)


def export_buttons(bundle) -> None:
    c = bundle.compacted
    if c is not None:
        st.caption(
            f"Compacted: {c.params_compact:,} parameters (of {c.params_dense:,}; the masked model has exactly that "
            f"many non-zero), {c.channels_removed:,} channels removed; outputs differ from the masked model's by at "
            f"most {c.max_abs_diff:.1e}."
        )
    else:
        st.caption(session_state.error_text(bundle.note))
    cols = st.columns(len(bundle.files))
    for col, (name, data) in zip(cols, bundle.files.items(), strict=True):
        col.download_button(name, data, file_name=name, help=FILES[name], key=f"dl-{name}")

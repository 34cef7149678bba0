"""The Prune page: global against local pruning at one sparsity, its accuracy, speed, export and recovery."""

from functools import partial

import streamlit as st

from prunekit.app import computed, overlay, plots, readouts, server_state, session_state, views
from prunekit.app.links import SPARSITY_MAX, SPARSITY_STEP
from prunekit.app.live import live
from prunekit.app.session_state import PageContext, reported
from prunekit.app.views import accuracy, ladder, speed
from prunekit.app.views.speed import SPEED_POLL
from prunekit.core.importance import CRITERIA
from prunekit.core.lab import CALIBRATION_IMAGES
from prunekit.core.nm import pattern_sparsity
from prunekit.core.result import PruneResult
from prunekit.core.spec import (
    ALLOCATIONS,
    NORMALISATIONS,
    ROUND_TO_CHOICES,
    STRUCTURES,
    Normalisation,
    Scope,
    Structure,
)
from prunekit.deploy.recover import CURVE_IMAGES, Recipe
from prunekit.service.jobs import JobError
from prunekit.units import short_number

PRESETS = {
    "Watch global filter pruning collapse a layer": dict(
        criterion="l1", structure=Structure.FILTER, sparsity=0.5, keep=False, normalise=Normalisation.NONE
    ),
    "Global vs local at 90%": dict(
        criterion="magnitude", structure=Structure.UNSTRUCTURED, sparsity=0.9, keep=False, normalise=Normalisation.NONE
    ),
    "Normalised global scores avoid the collapse": dict(
        criterion="l1", structure=Structure.FILTER, sparsity=0.5, keep=False, normalise=Normalisation.MEAN
    ),
}
NM_NOTE = (
    "**{structure}:** in every group of {m} consecutive input weights the {n} best by the criterion stay, so "
    "every layer the pattern fits loses exactly {share:.0%}; a layer whose input width is not a multiple of {m} stays "
    "dense. No speedup on this CPU: sparse tensor cores need recent NVIDIA GPUs and large half-precision "
    'matrices (PyTorch #111339 measured a 0.11x "speedup" at batch 1).'
)
RECOVERY_LABELS = {"dense": "Dense", "pruned": "Pruned", "recalibrated": "BN-recalibrated", "finetuned": "Fine-tuned"}


def page() -> None:
    intro()
    presets()
    ctx = session_state.context()
    untrained = computed.untrained_banner(ctx.lab)
    if untrained:
        st.caption("Per-layer sparsities below reflect the random initialisation's scale, not learned importance.")
    controls(ctx)
    link_overrides(ctx)
    if not untrained and readouts.usable():  # right under the slider: each figure lands here as it is measured
        accuracy.point_readouts(ctx)
    server_state.turns().head_done()  # what a person waits for is on screen: the room's heads go first
    results = computed.prune_both(ctx.lab)
    collapse_notes(ctx, results)
    overlaid = allocation_chart(ctx, results)
    scope_metrics(results)
    scope = speed.speed_and_export(ctx, results)
    st.subheader("Accuracy")
    if untrained:
        st.info("Accuracy is not shown: the model is untrained.")
        return
    accuracy.panel(ctx, overlaid)
    ladder.panel(ctx, scope)
    recovery(ctx, scope)


def intro() -> None:
    views.intro(
        "Global against local pruning",
        (
            "**Local** pruning removes the same fraction from every layer. **Global** pruning ranks all weights (or "
            "filters) of the network together and removes everything under one threshold, so layers with small "
            "scores lose more, and at high sparsity a whole layer can vanish: **layer collapse** (Tanaka et al., "
            "SynFlow). Unstructured pruning zeroes single weights (smaller file, no speed-up on dense hardware); "
            "filter pruning removes whole channels, with the next layer's input kernels and the BatchNorm entries, "
            "which real hardware can turn into speed. *Effective sparsity* also counts weights that are non-zero but "
            "on no input-output path."
        ),
    )


ROUND_TO_HELP = (
    "Every cluster of coupled channels keeps a non-zero multiple of this many channels, or all of them; a cluster "
    "with fewer stays whole. Global scope removes the total nearest the slider's that such counts can reach, "
    "choosing the channels whose scores sum least. A CPU's vector units work on 4, 8 or 16 floats at once, so a "
    "layer of another width may run no faster than the next multiple up: see the latency staircase under "
    "Measured speed."
)


def presets() -> None:
    for col, (label, values) in zip(st.columns(len(PRESETS)), PRESETS.items(), strict=True):
        col.button(label, on_click=session_state.apply_preset, kwargs=values, width="stretch")


def controls(ctx: PageContext) -> None:
    """Structure, criterion, normalisation, first/last and the sparsity slider (an N:M pattern fixes it)."""
    c, bind = ctx.settings, session_state.bind
    a, b, d, e = st.columns([1, 1, 1, 1])
    structure = structure_control(a, c.sparsity)
    criteria = [n for n, crit in CRITERIA.items() if crit.supports(structure)]
    if c.criterion not in criteria:
        session_state.apply_preset(criterion=criteria[0])
    bind(b.selectbox, "criterion", label="Criterion", options=criteria, format_func=lambda n: CRITERIA[n].title)
    bind(
        d.selectbox,
        "normalise",
        label="Global score normalisation",
        options=list(NORMALISATIONS),
        help="; ".join(f"{k}: {k.description}" for k in NORMALISATIONS),
    )
    bind(e.checkbox, "keep", label="Keep first and last layer dense")
    if structure.is_filter:
        round_to_control(e)
    sparsity_control(ctx, structure)
    crit = CRITERIA[c.criterion]
    calibration = (
        f" Calibration: the last {CALIBRATION_IMAGES} images of the evaluation set." if crit.needs_data else ""
    )
    st.caption(crit.description + calibration)


def structure_control(column, sparsity: float) -> Structure:
    """The structure radio; an N:M pattern sets the sparsity it fixes."""
    structure = session_state.bind(
        column.radio,
        "structure",
        label="Structure",
        options=list(STRUCTURES),
        horizontal=True,
        format_func=lambda s: s.label,
    )
    pattern = structure.pattern
    if pattern is not None and sparsity != pattern_sparsity(pattern):
        session_state.apply_preset(sparsity=pattern_sparsity(pattern))  # the pattern, not the slider, sets it
    return structure


def sparsity_control(ctx: PageContext, structure: Structure) -> None:
    """The sparsity slider (disabled under an N:M pattern, which says what it keeps dense)."""
    pattern = structure.pattern
    session_state.bind(
        st.slider,
        "sparsity",
        label=f"Sparsity (fraction removed) of {structure.units}",
        min_value=0.0,
        max_value=SPARSITY_MAX,
        step=SPARSITY_STEP,
        disabled=pattern is not None,
    )
    if pattern is not None:
        st.info(NM_NOTE.format(structure=structure, n=pattern[0], m=pattern[1], share=pattern_sparsity(pattern)))
        unfit = computed.pattern_unfit(ctx.lab)
        if unfit:
            st.caption(f"Dense here (the pattern does not fit them): {', '.join(f'`{n}`' for n in unfit)}.")


def round_to_control(column) -> None:
    """How many channels a layer may keep: any count, or multiples of 4, 8 or 16 (SIMD-friendly widths)."""
    session_state.bind(
        column.selectbox,
        "round_to",
        label="Channels kept in multiples of",
        options=list(ROUND_TO_CHOICES),
        format_func=lambda r: "any count" if r == 1 else str(r),
        help=ROUND_TO_HELP,
    )


def link_overrides(ctx: PageContext) -> None:
    """A share link's per-layer sparsities (a plan's): which apply, which name no layer here."""
    dropped = session_state.unknown_overrides(ctx.lab)
    if dropped:
        st.warning(
            f"Ignored per-layer sparsities for {', '.join(f'`{n}`' for n in dropped)}: not layers of this model."
        )
    layers = ctx.settings.overrides
    if layers:
        st.info(
            f"**Per-layer sparsities from the link** for {len(layers)} layers (a plan's): "
            + ", ".join(f"`{n}` {s:.0%}" for n, s in layers.items())
            + ". The slider sets every other layer."
        )
        st.button("Clear the per-layer sparsities", on_click=session_state.apply_preset, kwargs={"overrides": {}})


def collapse_notes(ctx: PageContext, results: dict[Scope, PruneResult]) -> None:
    lab = ctx.lab
    if lab.probe_unavailable:
        st.info(f"Effective sparsity and layer collapse are not shown: {lab.probe_unavailable}.")
    live("paths", lambda: computed.paths_panel(ctx.lab), 0.5, any(r.paths_pending for r in results.values()))
    for scope, r in results.items():
        if r.collapse or r.collapsed_layers:
            named = ", ".join(f"`{n}`" for n in r.collapsed_layers) or "no single layer, but every path is cut"
            st.warning(
                f"**{scope.title()}: layer collapse.** "
                + ("No input-output path survives. " if r.collapse else "")
                + f"Fully pruned: {named}."
            )
    if ctx.settings.structure.is_filter:
        st.caption(
            "Filter sparsity counts channels; each removed channel also removes the next layer's input kernels, so "
            "the weight sparsity below is higher."
        )


def allocation_chart(ctx: PageContext, results: dict[Scope, PruneResult]) -> list[str]:
    """Per-layer sparsity bars of the two scopes and the allocations chosen beside them; returns those."""
    structure = ctx.settings.structure
    offered = overlay.choices()
    overlaid = list(overlay.pair_names().values())
    if offered:
        overlaid = st.multiselect(
            "Allocations on the chart and the curve",
            offered,
            default=[n for n in overlaid if n in offered],
            format_func=lambda n: ALLOCATIONS[n].title,
            help="; ".join(f"{a.title}: {a.description}" for a in ALLOCATIONS.values() if a.name in offered),
            key=f"overlay:{structure}",
        )
    shown = {}
    with reported("Could not allocate"):
        shown = overlay.results(ctx.lab, results, overlaid)
    coupled = computed.coupling_panel(ctx.lab, "prune_coupled") if structure.is_filter else frozenset()
    if shown:
        key = (server_state.model_key(ctx.lab), *ctx.settings.key(), tuple(shown), tuple(sorted(coupled)))
        figure = server_state.figure("bars", key, lambda: plots.layer_sparsity_bars(shown, coupled))
        st.plotly_chart(figure, width="stretch")
    return overlaid


def scope_metrics(results: dict[Scope, PruneResult]) -> None:
    for col, (scope, r) in zip(st.columns(2), results.items(), strict=True):
        with col:
            st.subheader(scope.title())
            m1, m2, m3 = st.columns(3)
            params, macs = r.nonzero_params / r.total_params, r.remaining_macs / r.total_macs
            m1.metric(
                "Params left",
                short_number(r.nonzero_params),
                help=f"{r.nonzero_params:,} of {r.total_params:,} ({params:.1%})",
            )
            m2.metric(
                "MACs left",
                short_number(r.remaining_macs),
                help=f"{r.remaining_macs:,} of {r.total_macs:,} ({macs:.1%})",
            )
            m3.metric("Compression", f"{r.compression_ratio:.2f}x")
            m4, m5, m6 = st.columns(3)
            m4.metric("Theoretical speedup", f"{r.theoretical_speedup:.2f}x" if r.remaining_macs else "inf")
            m5.metric("Weight sparsity", f"{r.achieved_sparsity:.1%}")
            if r.paths_pending:
                m6.metric("Effective sparsity", "measuring...", help=computed.EFFECTIVE_HELP)
            elif r.effective_sparsity is None:
                m6.metric("Effective sparsity", "n/a", help=r.probe_note)
            else:
                m6.metric("Effective sparsity", f"{r.effective_sparsity:.1%}", help=computed.EFFECTIVE_HELP)
            st.caption(f"{params:.1%} of {r.total_params:,} parameters and {macs:.1%} of {r.total_macs:,} MACs remain.")


def recovery(ctx: PageContext, scope: Scope) -> None:
    """BatchNorm recalibration and a masked fine-tune of the scope at the slider, run in a worker."""
    st.subheader("Recover accuracy")
    lab = ctx.lab
    why = computed.recovery_unavailable(lab)
    if why:
        st.info(f"Recovery is not available: {why}.")
        return
    f1, f2, f3 = st.columns(3)
    choices = computed.training_choices(lab)
    bn = f1.number_input(
        "BatchNorm recalibration images", 0, choices[-1], min(1024, choices[-1]), step=256, help="0: skip"
    )
    epochs = f2.number_input("Fine-tune epochs (masks held fixed)", 0.0, 10.0, 1.0, step=0.5, help="0: skip")
    train = f3.selectbox("Training images", choices, format_func=lambda n: computed.train_label(n, choices))
    recipe = Recipe(int(bn), float(epochs), None if train == choices[-1] else train)
    job = computed.recover_job(lab, scope, recipe)
    running = st.session_state.get("recover_started") == job and computed.recovery(lab, job, False)[0] is None
    live("recovery", partial(recovery_panel, ctx, job), SPEED_POLL, running)


def recovery_panel(ctx: PageContext, job) -> bool:
    """The recovery at the slider; True while it runs."""
    started = st.session_state.get("recover_started") == job
    outcome, progress = computed.recovery(ctx.lab, job, start=started)
    if outcome is None and not started:
        st.button("Start recovery", on_click=lambda: st.session_state.update(recover_started=job))
        return False
    if isinstance(outcome, JobError):
        st.error(f"Recovery failed: {session_state.error_text(outcome.message)}")
        st.button("Try again", on_click=computed.forget, args=(job,))
        return False
    shown = outcome or progress
    if outcome is None:
        st.button("Stop", on_click=computed.stop_recovery, args=(job,))
        done = shown.step / shown.total_steps if shown and shown.total_steps else 0.0
        st.progress(done, text=f"Fine-tune step {shown.step if shown else 0} of {shown.total_steps if shown else '?'}")
    if shown is not None:
        recovery_metrics(shown)
        if shown.curve:
            st.plotly_chart(computed.recovery_figure({"fine-tune": shown.curve}, shown), width="stretch")
    if outcome is not None and outcome.stopped:
        st.warning(
            f"Stopped after {outcome.step} of {outcome.total_steps} steps; the accuracies are of the model as it was."
        )
        st.button("Run again", on_click=computed.forget, args=(job,))
    return outcome is None


def recovery_metrics(r) -> None:
    cols = st.columns(len(RECOVERY_LABELS))
    for col, (key, label) in zip(cols, RECOVERY_LABELS.items(), strict=True):
        acc = r.accuracy.get(key)
        if acc is None:
            col.metric(label, "skipped" if key in r.accuracy else "...")
            continue
        col.metric(label, f"{acc.top1:.2%}")
        col.caption(acc.interval_label())
    st.caption(
        f"Full test split; fine-tuned on {r.train_images:,} training images for {r.total_steps} steps "
        f"({r.seconds:.0f} s so far). The curve's points are estimates on {CURVE_IMAGES:,} stratified test images."
    )

"""Criteria against the truth: the oracle's measured loss increase of every filter beside every criterion's score."""

from functools import partial

import streamlit as st

from prunekit.app import oracles, plots, session_state
from prunekit.app.live import live
from prunekit.app.session_state import PageContext
from prunekit.core.importance import CRITERIA
from prunekit.core.lab import CALIBRATION_IMAGES
from prunekit.core.oracle import Agreement

ORACLE_POLL = 1.0  # seconds between refreshes while slices are on their way
EXPLAINED = (
    "Every criterion estimates one quantity: how much the loss grows when a filter goes. The **oracle** measures "
    "it. For every channel of every coupled group (the filters, BatchNorm entries and input kernels filter pruning "
    "removes together), the mean cross-entropy on the chosen images with that channel alone removed, less the "
    "dense model's. It runs in the evaluation workers, a slice of a group at a time (after the room's live "
    "figures), and is stored: measured once per model and image count. Each criterion's **Spearman rank "
    "correlation** with it says how well the criterion ranks filters as the truth does: over all channels (the "
    "criterion's raw scores compared across layers, as global pruning compares them) and within each layer."
)
WHY_NOT = (
    "Why it may not hold here: the paper measured ImageNet networks with many images per estimate, and this is "
    "another network and data set; a Taylor score is a first-order guess, poor where removing a filter moves the "
    "loss far (BatchNorm renormalises what follows, deep residual paths reroute it); and its gradients come from "
    "a calibration set of {calibration} images, so fewer images give noisier scores."
)


def panel(ctx: PageContext) -> None:
    """The oracle's controls, its progress while measured, and every criterion against it once it is in."""
    st.subheader("Criteria against the truth")
    st.caption(EXPLAINED)
    lab = ctx.lab
    if lab.loaded.eval_folder is not None:
        st.info("The oracle scores its images in memory: not on an evaluation folder.")
        return
    total = len(lab.loaded.eval_data())
    choices = [n for n in oracles.ORACLE_IMAGES if n is None or n < total]
    images = choices[0]  # a model with few labelled images (ImageNet's offline ones): all of them, no choice
    if len(choices) > 1:
        images = st.select_slider(
            "Images the oracle measures on (a stratified subset)",
            options=choices,
            value=choices[1],
            format_func=lambda n: f"all {total:,}" if n is None else f"{n:,}",
            key="oracle_images",
        )
    asked = st.session_state.get("oracle_asked") == (lab.fingerprint, images)
    view = oracles.oracle_view(lab, images, start=False)  # whether to poll; the part itself asks
    live("oracle", partial(measured, ctx, images), ORACLE_POLL, asked and view.running)


def measured(ctx: PageContext, images: int | None) -> bool:
    """The oracle on ``images`` as far as it goes; True while its slices are on their way."""
    lab = ctx.lab
    key = (lab.fingerprint, images)
    asked = st.session_state.get("oracle_asked") == key
    view = oracles.oracle_view(lab, images, start=asked)
    channels = f"{view.total:,} channels, {len(lab.clusters)} groups"
    if view.error:
        st.error(f"The oracle could not be measured: {session_state.error_text(view.error)}")
        return False
    if view.truth is None and not asked:
        if st.button("Measure the oracle", help=f"{channels}: one removal per channel, in the evaluation workers."):
            st.session_state.oracle_asked = key
            st.rerun()  # a whole run: it starts the part's polling
        st.caption(f"Not measured yet on this many images ({channels}).")
        return False
    if view.truth is None:
        st.progress(view.done / max(view.total, 1), text=f"The oracle: {view.done:,} of {channels} measured")
        if st.button("Stop the oracle", help="Drops the slices still queued; those measured stay stored."):
            oracles.stop_oracle(lab, images)
            st.session_state.oracle_asked = None
            st.rerun()
        return True
    truth(ctx, view.truth)
    return False


def truth(ctx: PageContext, found) -> None:
    """The correlations (table and chart), the seed's claim and its verdict, and one criterion's scatter."""
    lab = ctx.lab
    st.caption(
        f"Measured on {found.images:,} images: {found.channels:,} channels, dense loss {found.dense_loss:.4f}, "
        f"{found.seconds:.0f} s of worker time."
    )
    with st.spinner("Scoring every criterion..."):
        agreements, skipped = oracles.oracle_agreements(lab, found)
    rows = [_row(a) for a in sorted(agreements, key=lambda a: -(a.overall if a.overall is not None else -2.0))]
    st.plotly_chart(plots.oracle_agreement_bars(rows), key="oracle_bars")
    st.dataframe(rows, hide_index=True, width="stretch")
    st.caption(
        "Within each layer (group of coupled channels, by its first layer): Spearman's rho, blank where undefined."
    )
    st.dataframe([_per_layer(a, found.groups) for a in agreements], hide_index=True, width="stretch")
    for name, why in skipped.items():
        st.caption(f"{CRITERIA[name].title}: not compared ({why}).")
    claim(next((a for a in agreements if a.criterion == "taylor"), None))
    criterion = st.selectbox(
        "Criterion to plot against the truth",
        [a.criterion for a in agreements],
        format_func=lambda n: CRITERIA[n].title,
        key="oracle_criterion",
    )
    calibration(ctx, found)
    points, left_out = oracles.oracle_points(lab, found, criterion)
    st.plotly_chart(plots.oracle_scatter(points, CRITERIA[criterion].title), key="oracle_scatter")
    if left_out:
        st.caption(
            f"{left_out:,} channels are not on the log axes: their removal left the loss as it was or lowered it, "
            "or the criterion scored them 0."
        )


def calibration(ctx: PageContext, found) -> None:
    """How the data-driven criteria's agreement with the truth moves with the calibration images they read."""
    if not st.toggle("Vary the data-driven criteria's calibration images", key="oracle_calibration"):
        return
    live("calibration", partial(calibration_part, ctx, found), ORACLE_POLL)


def calibration_part(ctx: PageContext, found) -> bool:
    total = len(ctx.lab.loaded.eval_data())
    curves = oracles.calibration_curve(ctx.lab, found, start=True)
    label = lambda n: f"all {total:,}" if n is None else f"{n:,}"  # noqa: E731
    drawn = {CRITERIA[c].title: [(label(n), rho) for n, rho, _ in points] for c, points in curves.items()}
    st.plotly_chart(plots.calibration_lines(drawn), key="oracle_calibration_chart")
    waiting = sum(pending for points in curves.values() for _, _, pending in points)
    st.caption(
        "The scores of each size are measured in the workers and stored"
        + (f"; {waiting} still on their way." if waiting else ".")
        + " The calibration images are the last of the evaluation split; the oracle's are a stratified subset of it."
    )
    return waiting > 0


def _per_layer(a: Agreement, groups: list[str]) -> dict:
    rho = a.per_group
    return {"criterion": a.criterion} | {g: None if rho.get(g) is None else round(rho[g], 3) for g in groups}


def _row(a: Agreement) -> dict:
    return {
        "criterion": a.criterion,
        "all channels": None if a.overall is None else round(a.overall, 3),
        "median per layer": None if a.median_group is None else round(a.median_group, 3),
        "channels": a.channels,
    }


def claim(taylor: Agreement | None) -> None:
    """The seed's claim as a preset: Molchanov et al. 2019's Taylor > 93%, with the verdict on this model."""
    st.markdown(f"**Molchanov et al. 2019: Taylor scores correlate above {oracles.MOLCHANOV:.0%} with the truth.**")
    if taylor is None or taylor.overall is None:
        st.info("Not checked here: the Taylor criterion could not score this model's filters.")
        return
    rho = taylor.overall
    if rho > oracles.MOLCHANOV:
        st.success(f"Holds on this model: Spearman {rho:.3f} over all {taylor.channels:,} channels.")
        return
    st.warning(
        f"Does not hold on this model: Spearman {rho:.3f} over all {taylor.channels:,} channels"
        + ("" if taylor.median_group is None else f" (median within a layer {taylor.median_group:.3f})")
        + ". "
        + WHY_NOT.format(calibration=CALIBRATION_IMAGES)
    )

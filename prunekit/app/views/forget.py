"""The Forgetting page: what the pruned model gets wrong that the dense one got right, class by class."""

from functools import partial

import streamlit as st

from prunekit.app import accuracy_plots, forgetting, server_state, session_state, views
from prunekit.app.links import SPARSITY_MAX, SPARSITY_STEP
from prunekit.app.live import live
from prunekit.app.session_state import PageContext
from prunekit.core.forget import Forgetting
from prunekit.core.spec import Scope


def page() -> None:
    intro()
    ctx = session_state.context()
    why = unavailable(ctx)
    if why:
        st.info(why)
        return
    controls(ctx)
    live("forget", partial(forget_panel, ctx), 0.5, forgetting.forget_view(ctx.lab).pending)


def intro() -> None:
    views.intro(
        "What the pruned model forgets",
        (
            "**Per-class change**: each bar is a class's accuracy after pruning less before; a small drop in the "
            "mean can hide a class that collapses (Hooker et al., *What do compressed deep neural networks forget?*). "
            "**Where the lost images go**: for the images the dense model got right and the pruned one gets wrong, "
            "which class they are now called. **Flipped images**: those images themselves, and the reverse (pruning "
            "fixed them). **McNemar's test**: dense and pruned are scored on the same images, so the question is "
            "paired; the test looks only at the images that flipped (b lost, c gained) and gives the chance of a "
            "split at least this uneven if pruning changed nothing. Two intervals side by side cannot say that."
        ),
        "How to read this page",
    )


def unavailable(ctx: PageContext) -> str | None:
    loaded = ctx.lab.loaded
    if not loaded.pretrained:
        return "Nothing to forget: the model is untrained. Pick a trained model."
    if loaded.eval_folder is not None:
        return "Per-image comparisons read the whole evaluation set in memory: not available on an image folder yet."
    return None


def controls(ctx: PageContext) -> None:
    c = ctx.settings
    session_state.bind(
        st.slider,
        "sparsity",
        label="Sparsity (fraction removed)",
        min_value=0.0,
        max_value=SPARSITY_MAX,
        step=SPARSITY_STEP,
    )
    st.caption(
        f"{c.criterion} / {c.structure}, normalisation {c.normalise} (set on the Prune page); every image of "
        f"the evaluation set, scored by the evaluation workers."
    )


def forget_panel(ctx: PageContext) -> bool:
    lab = ctx.lab
    view = forgetting.forget_view(lab)
    for scope, message in view.errors.items():
        st.error(f"{scope.title()}: the predictions could not be measured ({session_state.error_text(message)}).")
    ready = {s: r for s, r in view.reports.items() if r is not None}
    if not ready:
        st.info("Scoring every image with the dense and the pruned models in the evaluation workers...")
        return view.pending
    key = (server_state.model_key(lab), *ctx.settings.key(), tuple(ready))
    st.plotly_chart(
        server_state.figure("forget", key, lambda: accuracy_plots.class_change_bars(ready)), width="stretch"
    )
    for col, (scope, report) in zip(st.columns(len(ready)), ready.items(), strict=True):
        with col:
            scope_summary(ctx, scope, report)
    flipped(ctx, ready)
    return view.pending


def scope_summary(ctx: PageContext, scope: Scope, report: Forgetting) -> None:
    dense, pruned = forgetting.accuracies(report)
    st.subheader(scope.title())
    m1, m2 = st.columns(2)
    m1.metric("Dense", f"{dense.top1:.2%}")
    m1.caption(dense.interval_label())
    m2.metric(
        f"{scope.title()} at {ctx.settings.sparsity:.0%}",
        f"{pruned.top1:.2%}",
        f"{100 * (pruned.top1 - dense.top1):+.2f} points",
    )
    m2.caption(pruned.interval_label())
    t = report.test
    st.markdown(f"McNemar's exact test: **{t.b:,}** images lost, **{t.c:,}** gained, {forgetting.verdict(t)}")
    moved = sorted(report.moved.items(), key=lambda kv: -kv[1])[:8]
    if moved:
        rows = [{"class": report.classes[a], "now called": report.classes[b], "images": n} for (a, b), n in moved]
        st.dataframe(rows, hide_index=True, width="stretch")


def flipped(ctx: PageContext, ready: dict[Scope, Forgetting]) -> None:
    st.subheader("Flipped images")
    g1, g2 = st.columns(2)
    scope = g1.radio("Scope", list(ready), horizontal=True, key="forget_scope")
    lost = g2.radio("Which", ["lost", "gained"], horizontal=True, key="forget_which") == "lost"
    shown = forgetting.flipped_images(ctx.lab, ready[scope], lost)
    if not shown:
        st.caption("None.")
        return
    st.image([img.numpy() for img, _ in shown], caption=[cap for _, cap in shown], width=84, clamp=True)
    total = len(ready[scope].lost if lost else ready[scope].gained)
    st.caption(f"{len(shown)} of {total:,} {'lost' if lost else 'gained'} images.")

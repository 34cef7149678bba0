"""The Trade-offs page: recipes' accuracy against sparsity and speedup, a paired test, and three schedules."""

from functools import partial

import streamlit as st

from prunekit.app import accuracy_plots, computed, forgetting, server_state, session_state, views
from prunekit.app.live import live
from prunekit.app.session_state import PageContext
from prunekit.core.spec import COMPARED_SCOPES, PruneSpec

SPARSITIES = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
DEFAULT_RECIPES = [
    "magnitude / global / unstructured",
    "magnitude / local / unstructured",
    "random / global / unstructured",
]


def page() -> None:
    intro()
    ctx = session_state.context()
    if computed.untrained_banner(ctx.lab):
        return
    options = computed.tradeoff_recipes()
    chosen = st.multiselect("Recipes (criterion / scope / structure)", list(options), default=DEFAULT_RECIPES)
    estimate = st.toggle(f"Fast estimate (a stratified {server_state.ESTIMATE_IMAGES:,}-image subset)", value=False)
    recipes = [options[label] for label in chosen]
    pending = _missing(computed.tradeoff_points(ctx.lab, recipes, SPARSITIES, estimate)) > 0
    live("tradeoffs", partial(curves_panel, ctx, recipes, estimate), 0.5, pending)
    paired(ctx, options, chosen)
    schedules(ctx)


def intro() -> None:
    views.intro(
        "Accuracy against sparsity and speed-up",
        (
            "Each curve is one pruning recipe: a criterion, a scope and a structure. Higher and further right is "
            "better. Dashed lines mark where a recipe collapses the network. The second chart trades accuracy "
            "against **theoretical speedup** (dense MACs / MACs of surviving weights): a compression ratio alone can "
            "flatter a method that prunes cheap layers (Blalock et al., 'What is the state of neural network "
            "pruning?')."
        ),
    )


def _missing(curves: dict) -> int:
    """Figures still on their way: accuracies, and collapse points bisected by a worker (big models)."""
    pending = sum(a is None for c in curves.values() for a in c["accuracy"]) - sum(
        len(c["errors"]) for c in curves.values()
    )
    return pending + sum(bool(c.get("collapse_pending")) for c in curves.values())


def curves_panel(ctx: PageContext, recipes: list[PruneSpec], estimate: bool) -> bool:
    lab = ctx.lab
    curves = computed.tradeoff_points(lab, recipes, SPARSITIES, estimate)
    labelled = {computed.recipe_label(r): c for r, c in curves.items()}
    for label, c in labelled.items():
        for message in (c["errors"] + c.get("collapse_errors", []))[:1]:
            st.error(f"{label}: {session_state.error_text(message)}")
    dense = computed.dense_reading(lab, estimate).full
    top1 = dense.top1 if dense else None
    st.plotly_chart(
        accuracy_plots.tradeoff_curves(labelled, "sparsity", "sparsity (fraction removed)", top1), width="stretch"
    )
    st.plotly_chart(
        accuracy_plots.tradeoff_curves(labelled, "speedup", "theoretical speedup (x, log scale)", top1), width="stretch"
    )
    missing = _missing(curves)
    done = "all points measured" if missing <= 0 else f"{missing} points still being evaluated (filling in live)"
    images = server_state.ESTIMATE_IMAGES
    subset = f"an estimate from a stratified {images:,}-image subset" if estimate else "the full split"
    st.caption(f"Accuracy on {subset}, with 95% Wilson intervals as error bars; {done}.")
    if lab.probe_unavailable:
        st.caption(f"Collapse points are not marked: {lab.probe_unavailable}.")
    return missing > 0


def paired(ctx: PageContext, options: dict[str, PruneSpec], chosen: list[str]) -> None:
    """McNemar's exact test between two recipes at one sparsity, on every image."""
    st.subheader("Is one recipe really better than the other here?")
    st.caption(
        "Both recipes are scored on every image of the evaluation set; McNemar's exact test looks at the images only "
        "one of them gets right, which is what decides whether the difference is more than chance."
    )
    p1, p2, p3 = st.columns(3)
    first = p1.selectbox("Recipe A", chosen, key="paired_a") if chosen else None
    second = p2.selectbox("Recipe B", chosen, index=min(1, len(chosen) - 1), key="paired_b") if chosen else None
    at = p3.selectbox("At sparsity", [s for s in SPARSITIES if s > 0], index=2, key="paired_at")
    pair = None if first is None or first == second else (first, second, options[first], options[second], at)
    view = forgetting.paired_view(ctx.lab, *pair[2:]) if pair else None
    pending = view is not None and view.report is None and view.error is None
    live("paired", partial(paired_panel, ctx, pair), 0.5, pending)


def paired_panel(ctx: PageContext, pair: tuple | None) -> bool:
    if pair is None:
        st.caption("Choose two different recipes above.")
        return False
    first, second, a, b, at = pair
    view = forgetting.paired_view(ctx.lab, a, b, at)
    if view.error:
        st.error(f"The recipes could not be compared: {session_state.error_text(view.error)}")
        return False
    if view.report is None:
        st.caption("Scoring every image with both recipes in the evaluation workers...")
        return True
    acc_a, acc_b = forgetting.accuracies(view.report)
    m1, m2 = st.columns(2)
    m1.metric(f"A: {first}", f"{acc_a.top1:.2%}")
    m1.caption(acc_a.interval_label())
    m2.metric(f"B: {second}", f"{acc_b.top1:.2%}", f"{100 * (acc_b.top1 - acc_a.top1):+.2f} points")
    m2.caption(acc_b.interval_label())
    t = view.report.test
    st.markdown(forgetting.paired_sentence(t, "", "", f" at {at:.0%}"))
    return False


def schedules(ctx: PageContext) -> None:
    """One-shot, iterative and AGP at the Prune page's setting, each with the same fine-tune budget."""
    st.subheader("One-shot, iterative and AGP pruning at the same final sparsity")
    c, lab = ctx.settings, ctx.lab
    why = computed.recovery_unavailable(lab)
    if why:
        st.info(f"Schedules are not compared here: {why}.")
        return
    s1, s2, s3, s4 = st.columns(4)
    scope = s1.radio("Scope", list(COMPARED_SCOPES), horizontal=True, key="schedule_scope")
    epochs = s2.number_input("Fine-tune budget (epochs, shared by the steps)", 0.5, 10.0, 1.0, step=0.5)
    steps = s3.number_input("Pruning steps (iterative, AGP)", 2, 10, 3)
    choices = computed.training_choices(lab)
    train = s4.selectbox(
        "Training images", choices, format_func=lambda n: computed.train_label(n, choices), key="schedule_train"
    )
    st.caption(
        f"Setting from the Prune page: {c.criterion} / {c.structure} at {c.sparsity:.0%}"
        f"{', normalised ' + c.normalise if c.normalise != 'none' else ''}. One-shot prunes once and fine-tunes; "
        "iterative prunes in equal steps; AGP (Zhu & Gupta) follows a cubic schedule that prunes most early. Each "
        "re-scores the fine-tuned weights before a step, recalibrates BatchNorm, and all three spend the same budget."
    )
    jobs = computed.schedule_jobs(lab, scope, float(epochs), int(steps), None if train == choices[-1] else train)
    asked = st.session_state.get("schedules_asked") == jobs
    running = asked and computed.schedule_view(lab, jobs, start=False).running
    live("schedules", partial(schedules_panel, ctx, jobs), 0.5, running)


def schedules_panel(ctx: PageContext, jobs: tuple) -> bool:
    if st.session_state.get("schedules_asked") != jobs:
        st.button("Compare the schedules", on_click=lambda: st.session_state.update(schedules_asked=jobs))
        return False
    view = computed.schedule_view(ctx.lab, jobs)
    st.dataframe(view.rows, hide_index=True, width="stretch")
    if view.curves:
        st.plotly_chart(computed.recovery_figure(view.curves, view.baseline), width="stretch")
    return view.running

"""The Methods page: when and how to prune, the seeds' methods side by side on one model, sparsity and budget."""

from dataclasses import dataclass
from functools import partial

import streamlit as st

from prunekit.app import accuracy_plots, computed, forgetting, session_state, views
from prunekit.app.live import live
from prunekit.app.session_state import PageContext
from prunekit.deploy.methods import METHODS
from prunekit.deploy.recover import CURVE_IMAGES
from prunekit.deploy.training import Budget, MethodResult
from prunekit.errors import PrunekitError
from prunekit.service.jobs import JobError
from prunekit.service.readings import MethodReading

DEFAULT_METHODS = ["ft", "lth", "lth-reinit", "lrr", "snip", "rigl"]
FIGURE_METHODS = ["ft", "lth", "lrr"]  # Neural Network Pruning 101's figure: the three side by side
FIGURE_SPARSITIES = [0.5, 0.8, 0.9, 0.95]
POLL = 1.0


@dataclass(frozen=True)
class Setting:
    methods: list[str]
    sparsity: float
    budget: Budget


def page() -> None:
    intro()
    opened_notice()
    ctx = session_state.context()
    if computed.untrained_banner(ctx.lab):
        return
    why = computed.recovery_unavailable(ctx.lab)
    if why:
        st.info(f"The methods train, and cannot here: {why}.")
        return
    setting = controls(ctx)
    comparison(ctx, setting)
    figure(ctx, setting.budget)


def intro() -> None:
    views.intro(
        "When and how to prune: the methods side by side",
        (
            "The other pages prune a *trained* model once. These methods decide **when** to prune and **how to "
            "train** around it: train, prune and fine-tune; the **lottery ticket** (rewind the survivors to early "
            "weights and retrain; its control trains the same mask from a fresh initialisation); **learning-rate "
            "rewinding**; pruning **at initialisation** (SNIP, GraSP, SynFlow); **sparse training** that moves "
            "connections (SET, RigL); a **penalty** (network slimming); **distillation**; **sub-model sampling**; "
            "and two recoveries **without training** (BatchNorm recalibration, least squares). Every method's "
            "final training gets the same budget; what it spends before (rounds, replay) is counted in its cost. "
            "Results are shared: a method a room has run shows at once."
        ),
    )


def controls(ctx: PageContext) -> Setting:
    methods = st.multiselect(
        "Methods",
        list(METHODS),
        default=DEFAULT_METHODS,
        format_func=lambda n: f"{METHODS[n].title} ({METHODS[n].paper})",
        key="methods_chosen",
    )
    a, b, c, d = st.columns(4)
    sparsity = a.select_slider("Final sparsity", [0.5, 0.7, 0.8, 0.9, 0.95, 0.98], value=0.9, key="methods_sparsity")
    epochs = b.number_input("Budget: epochs of the final training", 0.5, 20.0, 1.0, step=0.5, key="methods_epochs")
    choices = computed.training_choices(ctx.lab)
    train = c.selectbox(
        "Training images", choices, format_func=lambda n: computed.train_label(n, choices), key="methods_train"
    )
    rounds = d.number_input("Rounds (lottery ticket, rewinding)", 1, 6, 3, key="methods_rounds")
    budget = Budget(float(epochs), None if train == choices[-1] else int(train), rounds=int(rounds))
    st.caption(
        f"Budget for every method: {budget.epochs:g} epoch(s) over {train:,} training images (batch "
        f"{budget.batch_size}); the lottery ticket rewinds to step {budget.rewind_step}. Sparsity is the fraction of "
        "weights removed (the methods that remove channels take as many as that needs). Top-1 on the "
        "whole test split; curves are estimates on 1,000 stratified test images."
    )
    return Setting(methods, float(sparsity), budget)


def comparison(ctx: PageContext, setting: Setting) -> None:
    jobs = computed.method_jobs(ctx.lab, setting.methods, [setting.sparsity], setting.budget)
    asked = st.session_state.get("methods_asked") == jobs
    if not asked:
        st.button(
            "Run the chosen methods", on_click=lambda: st.session_state.update(methods_asked=jobs), type="primary"
        )
    known = computed.method_view(ctx.lab, jobs, False)
    running = asked and any(r.running or r.outcome is None for r in known)
    live("methods", partial(results_panel, ctx, jobs, asked), POLL, running)
    done = [r for r in known if _finished(r)]
    if done and ctx.lab.loaded.family == "bundled":  # outside the live part: opening reruns the whole app
        open_result(done)
        paired(done)


def results_panel(ctx: PageContext, jobs: tuple, asked: bool) -> bool:
    """The chart, the curves and the cost table of ``jobs``; True while any still runs."""
    readings = computed.method_view(ctx.lab, jobs, start=asked)
    if asked and any(r.outcome is None for r in readings):
        st.button("Stop", on_click=computed.stop_methods, args=(jobs,), key="methods_stop")
    done = [r for r in readings if _finished(r)]
    if done:
        dense = computed.dense_reading(ctx.lab, False).full
        labels = [METHODS[r.job.method].title for r in done]
        fig = accuracy_plots.method_bars(labels, [r.outcome.accuracy for r in done], dense.top1 if dense else None)
        st.plotly_chart(fig, width="stretch")
    curves = {METHODS[r.job.method].title: r.result.curve for r in readings if r.result and r.result.curve}
    if curves:
        st.plotly_chart(accuracy_plots.method_curves(curves), width="stretch")
    for r in done:
        if r.outcome.candidates:
            spread(r.outcome)
    st.dataframe([row(r) for r in readings], hide_index=True, width="stretch")
    return asked and any(r.outcome is None for r in readings)


def spread(result: MethodResult) -> None:
    """Sub-model sampling's candidates beside the named allocations, before the best one is fine-tuned."""
    st.markdown(f"**Sub-model sampling at {result.sparsity:.0%}: the candidates beside the heuristics**")
    st.plotly_chart(accuracy_plots.submodel_spread(result.candidates, result.heuristics, CURVE_IMAGES), width="stretch")
    best, named = max(result.candidates), max(result.heuristics.items(), key=lambda kv: kv[1], default=None)
    versus = f"; the best named allocation, {named[0]}, {named[1]:.1%}" if named else ""
    st.caption(
        f"{len(result.candidates)} random per-layer allocations, each BatchNorm-recalibrated and scored before any "
        f"training (estimates on {CURVE_IMAGES:,} stratified test images): best {best:.1%}, worst "
        f"{min(result.candidates):.1%}{versus}. The best candidate is the one fine-tuned."
    )


def open_result(done: list[MethodReading]) -> None:
    """Make one finished method's trained weights the session's model, for the Prune, Forgetting and export
    panels (they are read as an upload is: weights only)."""
    left, right = st.columns([3, 1])
    labels = {f"{METHODS[r.job.method].title} at {r.job.spec.sparsity:.0%}": r for r in done}
    chosen = left.selectbox("Open trained weights in the other pages", list(labels), key="methods_open")
    right.button("Open", key="methods_open_button", on_click=_open, args=(labels[chosen],))


def opened_notice() -> None:
    """What the Open button did (the page that follows is the opened model's)."""
    opened = st.session_state.pop("methods_opened", None)
    if opened is not None:
        st.success(f"**{opened}** is now the model of every page: open Prune, Forgetting or Model in the sidebar.")
    failed = st.session_state.pop("methods_open_failed", None)
    if failed is not None:
        st.error(f"Could not open the weights: {failed}")


def paired(done: list[MethodReading]) -> None:
    """McNemar's exact test between two finished methods, on every test image."""
    if len(done) < 2:
        return
    st.subheader("Is one method really better than the other?")
    labels = {f"{METHODS[r.job.method].title} at {r.job.spec.sparsity:.0%}": r for r in done}
    p1, p2 = st.columns(2)
    first = p1.selectbox("Method A", list(labels), key="methods_pair_a")
    second = p2.selectbox("Method B", list(labels), index=1, key="methods_pair_b")
    if first == second:
        st.caption("Choose two different methods.")
        return
    live("methods_paired", partial(paired_panel, labels[first], labels[second], first, second), POLL)


def paired_panel(a: MethodReading, b: MethodReading, first: str, second: str) -> bool:
    with session_state.reported("The methods could not be compared"):
        view = forgetting.models_view(computed.method_lab(a), computed.method_lab(b))
        if view.error:
            st.error(f"The methods could not be compared: {session_state.error_text(view.error)}")
            return False
        if view.report is None:
            st.caption("Scoring every test image with both trained models in the evaluation workers...")
            return True
        t = view.report.test
        st.markdown(forgetting.paired_sentence(t, f" ({first})", f" ({second})"))
    return False


def _open(reading: MethodReading) -> None:
    """The Open button's callback (it runs before the sidebar's model picker is drawn, so it can set it)."""
    try:
        st.session_state.methods_opened = computed.open_method_result(reading)
    except PrunekitError as exc:
        st.session_state.methods_open_failed = session_state.error_text(exc)


def _finished(r: MethodReading) -> bool:
    return r.outcome is not None and not isinstance(r.outcome, JobError) and r.outcome.accuracy is not None


def row(r: MethodReading) -> dict[str, str]:
    method = METHODS[r.job.method]
    shown = {"method": method.title, "paper": method.paper, "starts from": method.starts_from}
    if isinstance(r.outcome, JobError):
        return shown | {"top-1": session_state.error_text(r.outcome.message)}
    result = r.result
    if result is None:
        return shown | {"top-1": "not run" if r.outcome is None else "..."}
    status = "stopped" if result.stopped else "training..." if r.outcome is None else ""
    acc = result.accuracy if r.outcome is not None else None  # a figure only once the job has ended
    return shown | {
        "top-1": f"{acc.top1:.2%}" if acc else status or "...",
        "95% interval": acc.interval_label() if acc else "",
        "weight sparsity": f"{result.weight_sparsity:.1%}" if acc else "",
        "steps": f"{result.steps:,} of {result.total_steps:,}" if r.outcome is None else f"{result.steps:,}",
        "training images seen": f"{result.images:,}",
        "seconds": f"{result.seconds:.0f}",
    }


def figure(ctx: PageContext, budget: Budget) -> None:
    """Neural Network Pruning 101's figure: train-prune-fine-tune, the lottery ticket and learning-rate rewinding
    over sparsities, on the budget above."""
    st.subheader("The article's figure: fine-tuning, lottery ticket and rewinding over sparsities")
    jobs = computed.method_jobs(ctx.lab, FIGURE_METHODS, FIGURE_SPARSITIES, budget)
    asked = st.session_state.get("figure_asked") == jobs
    if not asked:
        st.button(
            f"Run the figure ({len(jobs)} trainings)",
            on_click=lambda: st.session_state.update(figure_asked=jobs),
            key="figure_run",
        )
    live("methods_figure", partial(figure_panel, ctx, jobs, asked), POLL, asked)


def figure_panel(ctx: PageContext, jobs: tuple, asked: bool) -> bool:
    readings = computed.method_view(ctx.lab, jobs, start=asked)
    curves = {}
    for name in FIGURE_METHODS:
        points = [r.outcome for r in readings if r.job.method == name and _finished(r)]
        curves[METHODS[name].title] = {
            "sparsity": [p.sparsity for p in points],
            "accuracy": [p.accuracy.top1 for p in points],
            "interval": [p.accuracy.interval() for p in points],
        }
    missing = sum(not _finished(r) for r in readings)
    if missing == len(readings) and not asked:  # nothing to draw yet: no empty axes
        st.caption(f"Not run yet on this budget: {len(readings)} trainings.")
        return False
    dense = computed.dense_reading(ctx.lab, False).full
    fig = accuracy_plots.tradeoff_curves(
        curves, "sparsity", "sparsity (fraction of weights removed)", dense.top1 if dense else None
    )
    st.plotly_chart(fig, width="stretch")
    st.caption(
        f"{len(readings) - missing} of {len(readings)} trainings done" + ("." if not missing else "; filling in.")
    )
    return asked and missing > 0

"""The Filter importance page: which filters each criterion keeps, and whether the criteria agree."""

import streamlit as st

from prunekit.app import computed, plots, session_state, views
from prunekit.app.links import SPARSITY_MAX, SPARSITY_STEP
from prunekit.app.session_state import PageContext, reported
from prunekit.app.views import oracle
from prunekit.core.analysis import FilterView
from prunekit.core.importance import CRITERIA
from prunekit.core.spec import COMPARED_SCOPES, Scope, Structure

FILTER_CRITERIA = [n for n, crit in CRITERIA.items() if crit.supports(Structure.FILTER)]


def page() -> None:
    intro()
    ctx = session_state.context()
    if computed.untrained_banner(ctx.lab):
        st.info(
            "Filter importance of random initial weights describes the initialisation, not anything learned: pick "
            "a trained model."
        )
        return
    criterion, scope, sort = controls(ctx)
    with st.spinner("Scoring filters..."):
        view = computed.filter_view(ctx.lab, criterion, scope)
    heatmap(view, sort)
    agreement(ctx, scope)
    oracle.panel(ctx)
    one_group(ctx, view)
    first_kernels(ctx)
    attribution(ctx)


def intro() -> None:
    views.intro(
        "Which filters does each criterion keep?",
        (
            "Each row is a group of coupled channels (named by its first layer), each cell one filter, coloured by "
            "the criterion's score relative to the best filter of that row; an **x** marks a filter removed at the "
            "current sparsity. Magnitude criteria assume small weights matter little; BN-scale reads the learned "
            "channel gates (network slimming); Taylor and captum use gradients on real images (Molchanov et al.). "
            "Where criteria disagree, the choice of criterion matters more than the threshold."
        ),
    )


def controls(ctx: PageContext) -> tuple[str, Scope, bool]:
    """The criterion, the scope, whether to sort each row, and the sparsity slider (shared with the Prune page)."""
    c = ctx.settings
    a, b, d = st.columns(3)
    criterion = a.selectbox(
        "Criterion",
        FILTER_CRITERIA,
        index=FILTER_CRITERIA.index(c.criterion) if c.criterion in FILTER_CRITERIA else 0,
        format_func=lambda n: CRITERIA[n].title,
    )
    scope = b.radio("Scope", list(COMPARED_SCOPES), horizontal=True)
    sort = d.toggle("Sort each row", value=False)
    session_state.bind(
        st.slider,
        "sparsity",
        label="Sparsity (fraction of channels removed)",
        min_value=0.0,
        max_value=SPARSITY_MAX,
        step=SPARSITY_STEP,
    )
    return criterion, scope, sort


def heatmap(view: FilterView, sort: bool) -> None:
    st.plotly_chart(plots.importance_heatmap(view.layers, view.scores, view.removed, sort), width="stretch")
    st.caption(
        "Each row is one group of coupled channels, named by its first layer: a residual add, a concatenation or a "
        "depthwise convolution ties several layers' channels, and a channel's score adds up its producing layers'. "
        "Below, one group up close with every layer it cuts across."
    )


def agreement(ctx: PageContext, scope: Scope) -> None:
    st.subheader("Do the criteria agree?")
    chosen = st.multiselect("Criteria to compare", FILTER_CRITERIA, default=["l1", "l2", "random", "synflow"])
    if len(chosen) < 2:
        return
    with reported("Could not compare"):
        with st.spinner("Scoring every chosen criterion (data-driven ones take a few seconds)..."):
            overlap, corr = computed.agreement(ctx.lab, chosen, scope)
        left, right = st.columns(2)
        left.plotly_chart(
            plots.agreement_matrix(chosen, overlap, "Overlap of removed filters (Jaccard)"), width="stretch"
        )
        right.plotly_chart(
            plots.agreement_matrix(chosen, corr, "Rank correlation of scores (Spearman, mean over layers)"),
            width="stretch",
        )


def one_group(ctx: PageContext, view: FilterView) -> None:
    st.subheader("One group up close")
    layer = st.selectbox("Group (by its first layer)", view.layers)
    i = view.layers.index(layer)
    st.plotly_chart(plots.scores_bar(view.scores[i], view.removed[i], layer), width="stretch")
    members = computed.coupling_rows(ctx.lab, layer)
    if members:
        st.caption("Its channels cut across: " + ", ".join(f"`{r['layer']}` ({r['part']})" for r in members) + ".")


def first_kernels(ctx: PageContext) -> None:
    kernels = computed.first_conv_kernels(ctx.lab)
    if kernels is not None:
        st.plotly_chart(plots.kernel_grid(kernels[1], f"First layer ({kernels[0]}) kernels"), width="stretch")


def attribution(ctx: PageContext) -> None:
    """captum Integrated Gradients on one image, dense against the globally pruned model."""
    c = ctx.settings
    n = len(ctx.lab.loaded.eval_data())
    index = st.number_input("Sample image", min_value=0, max_value=n - 1, value=0)
    with st.spinner("captum Integrated Gradients on the dense and the globally pruned model..."):
        image, dense, pruned, label = computed.attribution(ctx.lab, int(index))
    title = f"Integrated Gradients towards the true class '{label}' (global, {c.criterion}, {c.sparsity:.0%})"
    st.plotly_chart(plots.attribution_pair(image, dense, pruned, title), width="stretch")

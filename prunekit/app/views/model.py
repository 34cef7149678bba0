"""The Model page: where a model's parameters and compute live, layer by layer."""

import pandas as pd
import streamlit as st

from prunekit.app import computed, plots, server_state, session_state, views
from prunekit.app.session_state import PageContext
from prunekit.core.evaluate import interval_label
from prunekit.core.profile import LayerInfo
from prunekit.units import short_number


def page() -> None:
    intro()
    ctx = session_state.context()
    st.header(f"`{ctx.lab.loaded.name}`")
    computed.untrained_banner(ctx.lab)
    totals(ctx)
    conv_only, flops = layer_chart(ctx)
    rows = [x for x in ctx.lab.profile.layers if x.prunable and (x.is_conv or not conv_only)]
    takeaway(rows, conv_only)
    layer_table(rows, flops)
    coupled_channels(ctx)
    with st.expander("Model card"):
        st.json(ctx.lab.loaded.card)
    st.caption(server_state.budget_line())


def intro() -> None:
    views.intro(
        "Where do the parameters and the compute live?",
        (
            "Parameters decide a model's **size**; multiply-accumulates (MACs) decide its **compute**. They live in "
            "different places: early conv layers see large feature maps with few channels (cheap in parameters, "
            "costly in compute), late layers the opposite. That is why pruning 'the biggest layers' shrinks the file "
            "but barely speeds the model up (Blalock et al.'s compression ratio vs theoretical speedup)."
        ),
    )
    with st.expander("Bundled models (offline, trained here on Fashion-MNIST)", expanded=True):
        st.dataframe(pd.DataFrame(server_state.bundled_rows()), hide_index=True, width="stretch")


def totals(ctx: PageContext) -> None:
    prof, card = ctx.lab.profile, ctx.lab.loaded.card
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Parameters", short_number(prof.total_params), help=f"{prof.total_params:,}")
    c2.metric("MACs / image", short_number(prof.total_macs), help=f"{prof.total_macs:,}")
    c3.metric("FLOPs / image", short_number(2 * prof.total_macs), help=f"{2 * prof.total_macs:,}")
    acc = card.get("test_accuracy")
    c4.metric("Test accuracy (card)", f"{acc:.2%}" if acc is not None else "n/a")
    if acc is not None:
        c4.caption(interval_label(acc, card["test_images"]))
    st.caption(prof.convention)


def layer_chart(ctx: PageContext) -> tuple[bool, bool]:
    """Parameters against compute per layer; returns the toggles (conv layers only, FLOPs instead of MACs)."""
    left, right = st.columns(2)
    conv_only = left.toggle("Conv layers only", value=False)
    flops = right.toggle("Show FLOPs (2 x MACs) instead of MACs", value=False)
    st.plotly_chart(plots.params_vs_compute(ctx.lab.profile, conv_only=conv_only, flops=flops), width="stretch")
    return conv_only, flops


def takeaway(rows: list[LayerInfo], conv_only: bool) -> None:
    p_total, m_total = sum(x.params for x in rows) or 1, sum(x.macs for x in rows) or 1
    if len(rows) >= 4:
        last3 = rows[-3:]
        p_share = sum(x.params for x in last3) / p_total
        m_share = sum(x.macs for x in last3) / m_total
        kind = "conv layers" if conv_only else "conv + linear layers"
        st.info(
            f"Takeaway: among the {kind}, the last 3 layers hold **{p_share:.0%} of the parameters** but "
            f"**{m_share:.0%} of the compute**."
        )
    top_p = max(rows, key=lambda x: x.params)
    top_m = max(rows, key=lambda x: x.macs)
    st.markdown(
        f"Most parameters: `{top_p.name}` ({top_p.params / p_total:.0%}). "
        f"Most compute: `{top_m.name}` ({top_m.macs / m_total:.0%})."
    )


def layer_table(rows: list[LayerInfo], flops: bool) -> None:
    p_total, m_total = sum(x.params for x in rows) or 1, sum(x.macs for x in rows) or 1
    scale = 2 if flops else 1
    table = pd.DataFrame(
        [
            {
                "layer": x.name,
                "type": x.kind,
                "input": str(x.input_shape),
                "output": str(x.output_shape),
                "params": x.params,
                "params %": 100 * x.params / p_total,
                ("FLOPs" if flops else "MACs"): scale * x.macs,
                "compute %": 100 * x.macs / m_total,
            }
            for x in rows
        ]
    )
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            "params %": st.column_config.NumberColumn(format="%.2f"),
            "compute %": st.column_config.NumberColumn(format="%.2f"),
        },
    )


def coupled_channels(ctx: PageContext) -> None:
    st.subheader("Coupled channels")
    st.caption(
        "Filter pruning removes channels, and some channels are tied: a residual add sums two layers' outputs "
        "channel by channel, a concatenation joins them, a depthwise convolution has one filter per input channel. "
        "Choose a layer to see everything removing one of its channels removes."
    )
    if st.toggle(
        "Show coupled channels",
        value=False,
        key="model_show_coupled",
        help="Traces the model's channel dependencies once (seconds on big models).",
    ):
        computed.coupling_panel(ctx.lab, "model_coupled")

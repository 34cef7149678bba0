import streamlit as st

import glue
from prunekit import plots
from prunekit.importance import CRITERIA
from prunekit.sensitivity import SensitivityConfig

st.title("Which layers can take the cut?")
with st.expander("What am I looking at?"):
    st.markdown(
        "Sensitivity analysis prunes **one layer at a time**, everything else dense, and measures the accuracy. "
        "Layers whose accuracy barely moves can be pruned hard; sensitive ones (often the first layer and thin "
        "bottlenecks) deserve low sparsity. It is the classic way to choose per-layer sparsities before pruning for real."
    )
lab = glue.lab()
if glue.untrained_banner(lab):
    st.stop()
c = glue.cfg()
a, b = st.columns(2)
criterion = a.selectbox(
    "Criterion",
    [n for n, x in CRITERIA.items() if "unstructured" in x.structures],
    format_func=lambda n: CRITERIA[n].title,
)
levels = b.multiselect("Sparsities", [0.1, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99], default=[0.3, 0.5, 0.7, 0.9])
estimate = st.toggle(f"Fast estimate (first {glue.ESTIMATE_IMAGES:,} images)", value=True)
if not levels:
    st.info("Choose at least one sparsity.")
    st.stop()
conf = SensitivityConfig(criterion, "unstructured", tuple(sorted(levels)), glue.eval_limit(lab, estimate))
if st.button("Run the scan", type="primary") or st.session_state.get("sens_conf") == (lab.loaded.name, conf):
    bar = st.progress(0.0, text="Starting...")
    rows = glue.sensitivity(lab, conf, lambda frac, text: bar.progress(frac, text=text))
    bar.progress(1.0, text="Done")
    st.session_state.sens_conf = (lab.loaded.name, conf)
    layers = list(dict.fromkeys(r.layer for r in rows))
    drops = [
        [next(r.drop for r in rows if r.layer == layer and r.sparsity == s) for s in conf.sparsities]
        for layer in layers
    ]
    st.plotly_chart(plots.sensitivity_heatmap(layers, list(conf.sparsities), drops), width="stretch")
    worst = sorted(zip(layers, drops, strict=True), key=lambda t: t[1][-1], reverse=True)
    st.markdown(
        f"Most sensitive at {conf.sparsities[-1]:.0%}: **`{worst[0][0]}`** (drop {100 * worst[0][1][-1]:.1f} points). "
        f"Least sensitive: **`{worst[-1][0]}`** (drop {100 * worst[-1][1][-1]:.1f} points)."
    )
    if rows:
        first = rows[0]
        st.caption(
            ("Estimate from the first " if first.estimate else "Measured on all ")
            + f"{first.images:,} evaluation images. Dense top-1 {first.dense_accuracy:.1%} "
            f"({glue.interval_label(first.dense_accuracy, first.images)}): a drop within that interval's width is noise."
        )

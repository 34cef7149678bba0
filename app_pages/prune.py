import streamlit as st

import glue
from prunekit import plots
from prunekit.allocate import NORMALISATIONS
from prunekit.importance import CRITERIA, STRUCTURES

st.title("Global against local pruning")
with st.expander("What am I looking at?"):
    st.markdown(
        "**Local** pruning removes the same fraction from every layer. **Global** pruning ranks all weights (or "
        "filters) of the network together and removes everything under one threshold, so layers with small scores "
        "lose more, and at high sparsity a whole layer can vanish: **layer collapse** (Tanaka et al., SynFlow). "
        "Unstructured pruning zeroes single weights (smaller file, no speed-up on dense hardware); filter pruning "
        "removes whole channels, with the next layer's input kernels and the BatchNorm entries, which real hardware "
        "can turn into speed. *Effective sparsity* also counts weights that are non-zero but on no input-output path."
    )

PRESETS = {
    "Watch global filter pruning collapse a layer": dict(
        criterion="l1", structure="filter", sparsity=0.5, keep=False, normalise="none"
    ),
    "Global vs local at 90%": dict(
        criterion="magnitude", structure="unstructured", sparsity=0.9, keep=False, normalise="none"
    ),
    "Normalised global scores avoid the collapse": dict(
        criterion="l1", structure="filter", sparsity=0.5, keep=False, normalise="mean"
    ),
}
cols = st.columns(len(PRESETS))
for col, (label, values) in zip(cols, PRESETS.items(), strict=True):
    col.button(label, on_click=glue.apply_preset, kwargs=values, width="stretch")

lab = glue.lab()
untrained = glue.untrained_banner(lab)
if untrained:
    st.caption("Per-layer sparsities below reflect the random initialisation's scale, not learned importance.")
c = glue.cfg()
a, b, d, e = st.columns([1, 1, 1, 1])
structure = glue.bind(
    a.radio,
    "structure",
    label="Structure",
    options=list(STRUCTURES),
    horizontal=True,
    format_func={"unstructured": "weights", "filter": "filters"}.get,
)
criteria = [n for n, crit in CRITERIA.items() if structure in crit.structures]
if c["criterion"] not in criteria:
    glue.apply_preset(criterion=criteria[0])
glue.bind(b.selectbox, "criterion", label="Criterion", options=criteria, format_func=lambda n: CRITERIA[n].title)
glue.bind(
    d.selectbox,
    "normalise",
    label="Global score normalisation",
    options=list(NORMALISATIONS),
    help="; ".join(f"{k}: {v}" for k, v in NORMALISATIONS.items()),
)
glue.bind(e.checkbox, "keep", label="Keep first and last layer dense")
sparsity = glue.bind(
    st.slider,
    "sparsity",
    label="Sparsity (fraction removed)" + (" of channels" if structure == "filter" else " of weights"),
    min_value=0.0,
    max_value=0.99,
    step=0.01,
)
st.caption(
    CRITERIA[c["criterion"]].description
    + (" Calibration: the last 256 images of the evaluation set." if CRITERIA[c["criterion"]].needs_data else "")
)

try:
    results = glue.prune_both(lab)
except Exception as exc:  # engine errors are shown on the page, never as a traceback
    st.error(f"Could not prune: {exc}")
    st.stop()

for scope, r in results.items():
    if r.collapse or r.collapsed_layers:
        named = ", ".join(f"`{n}`" for n in r.collapsed_layers) or "no single layer, but every path is cut"
        st.warning(
            f"**{scope.title()}: layer collapse.** "
            + ("No input-output path survives. " if r.collapse else "")
            + f"Fully pruned: {named}."
        )
if structure == "filter":
    st.caption(
        "Filter sparsity counts channels; each removed channel also removes the next layer's input kernels, so the weight sparsity below is higher."
    )

st.plotly_chart(plots.layer_sparsity_bars(results), width="stretch")

cols = st.columns(2)
for col, (scope, r) in zip(cols, results.items(), strict=True):
    with col:
        st.subheader(scope.title())
        m1, m2, m3 = st.columns(3)
        m1.metric(
            "Params left",
            f"{r.nonzero_params:,}",
            help=f"{r.nonzero_params / r.total_params:.1%} of {r.total_params:,}",
        )
        m2.metric(
            "MACs left", f"{r.remaining_macs:,}", help=f"{r.remaining_macs / r.total_macs:.1%} of {r.total_macs:,}"
        )
        m3.metric("Compression", f"{r.compression_ratio:.2f}x")
        m4, m5, m6 = st.columns(3)
        m4.metric("Theoretical speedup", f"{r.theoretical_speedup:.2f}x" if r.remaining_macs else "inf")
        m5.metric("Weight sparsity", f"{r.achieved_sparsity:.1%}")
        m6.metric("Effective sparsity", f"{r.effective_sparsity:.1%}")
        st.caption(
            f"{r.nonzero_params / r.total_params:.1%} of {r.total_params:,} parameters and {r.remaining_macs / r.total_macs:.1%} of {r.total_macs:,} MACs remain."
        )

st.subheader("Accuracy")
estimate = st.toggle(f"Fast estimate (first {glue.ESTIMATE_IMAGES:,} images)", value=False, key="w_estimate")
if untrained:
    st.info("Accuracy is not shown: the model is untrained.")
    st.stop()
limit = glue.eval_limit(lab, estimate)
slots = st.columns(3)
placeholders = [col.empty() for col in slots]
status = st.empty()


def show(limit_now):
    dense = glue.dense_accuracy(lab, limit_now)
    tag = f" (estimate, {dense.n:,} images)" if dense.is_estimate else ""
    placeholders[0].metric("Dense" + tag, f"{dense.top1:.2%}")
    for ph, scope in zip(placeholders[1:], results, strict=True):
        acc = glue.pruned_accuracy(lab, scope, limit_now)
        ph.metric(
            f"{scope.title()} at {sparsity:.0%}{tag}", f"{acc.top1:.2%}", f"{100 * (acc.top1 - dense.top1):+.2f} points"
        )


quick = glue.eval_limit(lab, True) and min(glue.QUICK_IMAGES, limit or len(lab.loaded.eval_data()))
if quick and quick < (limit or len(lab.loaded.eval_data())):
    show(quick)  # a marked estimate first, so the number moves with the slider at once
with status, st.spinner("Scoring the pruned models on the evaluation set..."):
    show(limit)
data = lab.loaded.eval_data()
st.caption(
    f"Top-1 on {'an estimate from the first ' + format(limit, ',') + ' of' if limit else 'all'} {len(data):,} images: {data.description}."
)

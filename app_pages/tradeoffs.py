import streamlit as st

import glue
from prunekit import plots
from prunekit.importance import CRITERIA

st.title("Accuracy against sparsity and speed-up")
with st.expander("What am I looking at?"):
    st.markdown(
        "Each curve is one pruning recipe: a criterion, a scope and a structure. Higher and further right is better. "
        "Dashed lines mark where a recipe collapses the network. The second chart trades accuracy against "
        "**theoretical speedup** (dense MACs / MACs of surviving weights): a compression ratio alone can flatter a "
        "method that prunes cheap layers (Blalock et al., 'What is the state of neural network pruning?')."
    )
lab = glue.lab()
if glue.untrained_banner(lab):
    st.stop()
options = [
    f"{n} / {scope} / {structure}"
    for n, crit in CRITERIA.items()
    for structure in crit.structures
    for scope in ("global", "local")
]
chosen = st.multiselect(
    "Recipes (criterion / scope / structure)",
    options,
    default=["magnitude / global / unstructured", "magnitude / local / unstructured", "random / global / unstructured"],
)
sparsities = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95)
estimate = st.toggle(f"Fast estimate (first {glue.ESTIMATE_IMAGES:,} images)", value=True)
limit = glue.eval_limit(lab, estimate)
curves = {}
bar = st.progress(0.0, text="Computing curves...")
for i, label in enumerate(chosen):
    criterion, scope, structure = label.split(" / ")
    try:
        curves[label] = glue.tradeoff_curve(lab, criterion, scope, structure, sparsities, limit)
    except Exception as exc:
        st.error(f"{label}: {exc}")
    bar.progress((i + 1) / max(len(chosen), 1), text=f"{label} done")
bar.empty()
dense = glue.dense_accuracy(lab, limit).top1
st.plotly_chart(plots.tradeoff_curves(curves, "sparsity", "sparsity (fraction removed)", dense), width="stretch")
st.plotly_chart(plots.tradeoff_curves(curves, "speedup", "theoretical speedup (x, log scale)", dense), width="stretch")
if limit:
    st.caption(f"Accuracy is an estimate from the first {limit:,} evaluation images.")

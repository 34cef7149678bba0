"""Plotly figure builders from engine results (no streamlit here): structure, importance, sensitivity, latency and
oracle charts, and the layout helpers every chart shares. Accuracy against sparsity, steps or method: accuracy_plots.py."""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from prunekit.core.profile import Profile
from prunekit.core.result import PruneResult

COLORS = {
    "global": "#d62728",
    "local": "#1f77b4",
    "global-mean": "#2ca02c",
    "lamp": "#9467bd",
    "erk": "#ff7f0e",
    "dense": "#7f7f7f",
}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _rows(profile: Profile, conv_only: bool):
    return [x for x in profile.layers if x.prunable and (x.is_conv or not conv_only)]


def params_vs_compute(profile: Profile, conv_only: bool = False, flops: bool = False) -> go.Figure:
    """Per-layer share (%) of parameters against share of MACs (or FLOPs = 2 x MACs)."""
    rows = _rows(profile, conv_only)
    p_total = sum(x.params for x in rows) or 1
    m_total = sum(x.macs for x in rows) or 1
    unit = "FLOPs" if flops else "MACs"
    names = [x.name for x in rows]
    fig = go.Figure()
    fig.add_bar(name="parameters", x=names, y=[100 * x.params / p_total for x in rows], marker_color="#9467bd")
    fig.add_bar(name=unit, x=names, y=[100 * x.macs / m_total for x in rows], marker_color="#ff7f0e")
    scope = "conv layers only" if conv_only else "conv + linear layers"
    return grouped(fig, f"Share of parameters vs {unit} per layer ({scope})", "% of total", 420)


def grouped(fig: go.Figure, title: str, yaxis_title: str, height: int, **layout) -> go.Figure:
    """The layout every grouped bar chart here shares: bars side by side per layer or class, names slanted."""
    fig.update_layout(grouped_layout(title, yaxis_title, height, **layout))
    return fig


def grouped_layout(title: str, yaxis_title: str, height: int, **layout) -> dict:
    return dict(
        barmode="group",
        title=title,
        yaxis_title=yaxis_title,
        xaxis_tickangle=-45,
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0),  # clear of slanted names
        height=height,
        margin=dict(t=50, b=10),
        **layout,
    )


# where a rule's label sits: (x across the plot, xanchor, yanchor), as add_hline's annotation_position
_LABEL_AT = {"top right": (1, "right", "bottom"), "top left": (0, "left", "bottom"), "bottom left": (0, "left", "top")}


def hrule(y: float, text: str | None = None, position: str = "top right", **line) -> dict:
    """A horizontal line across the plot and its label, as layout entries: what ``add_hline`` draws, without
    its re-validation of the whole figure (6 ms a line; the Prune page redraws two figures on every move)."""
    out = {"shapes": [dict(type="line", xref="x domain", x0=0, x1=1, yref="y", y0=y, y1=y, line=line)]}
    if text is not None:
        x, xanchor, yanchor = _LABEL_AT[position]
        out["annotations"] = [
            dict(text=text, xref="x domain", x=x, yref="y", y=y, xanchor=xanchor, yanchor=yanchor, showarrow=False)
        ]
    return out


def vrule(x: float, **line) -> dict:
    return dict(type="line", yref="y domain", y0=0, y1=1, xref="x", x0=x, x1=x, line=line)


def layer_sparsity_bars(results: dict[str, PruneResult], highlight: frozenset[str] = frozenset()) -> go.Figure:
    """Per-layer achieved sparsity for each scope (or allocation, by name) side by side; the ``highlight``
    layers (those pruned together with a chosen one) outlined. Built in one constructor: it is redrawn on every move."""
    bars = [
        go.Bar(
            name=scope,
            x=[x.name for x in r.layers],
            y=[100 * x.sparsity for x in r.layers],
            marker=dict(
                color=COLORS.get(scope),
                line=dict(width=[3 if x.name in highlight else 0 for x in r.layers], color="black"),
            ),
            hovertemplate="%{x}: %{y:.1f}% pruned<extra>" + scope + "</extra>",
        )
        for scope, r in results.items()
    ]
    title = "Per-layer sparsity (% of each layer's weights that are zero)"
    rule = hrule(100, "100% = layer gone", dash="dot", color="black")
    return go.Figure(bars, grouped_layout(title, "% pruned", 400, yaxis_range=[0, 105], **rule))


def importance_heatmap(
    layers: list[str], scores: list[list[float]], removed: list[list[bool]], sort: bool
) -> go.Figure:
    """Layers x filters, each row scaled to [0, 1]; removed filters marked with an x."""
    width = max(len(s) for s in scores)
    z, marks_x, marks_y = [], [], []
    for name, row, gone in zip(layers, scores, removed, strict=True):
        order = sorted(range(len(row)), key=lambda i: row[i]) if sort else list(range(len(row)))
        top = max(row) or 1.0
        z.append([row[i] / top for i in order] + [math.nan] * (width - len(row)))
        for pos, i in enumerate(order):
            if gone[i]:
                marks_x.append(pos)
                marks_y.append(name)
    fig = go.Figure(
        go.Heatmap(z=z, y=layers, colorscale="Viridis", colorbar_title="score / layer max", hoverongaps=False)
    )
    fig.add_scatter(
        x=marks_x, y=marks_y, mode="markers", marker=dict(symbol="x", color="white", size=6), name="removed"
    )
    fig.update_layout(
        title="Filter importance (each layer scaled to its max" + ("; sorted" if sort else "") + ")",
        xaxis_title="filter " + ("(rank within layer)" if sort else "index"),
        height=120 + 24 * len(layers),
        yaxis_autorange="reversed",
        margin=dict(t=50),
        legend_orientation="h",
    )
    return fig


def agreement_matrix(names: list[str], matrix: list[list[float]], title: str) -> go.Figure:
    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=names,
            y=names,
            zmin=0,
            zmax=1,
            colorscale="Blues",
            text=[[f"{v:.2f}" for v in row] for row in matrix],
            texttemplate="%{text}",
        )
    )
    fig.update_layout(title=title, height=420, margin=dict(t=50))
    return fig


def latency_staircase(counts: list[int], ms: list[float], layer: str, kept: int | None) -> go.Figure:
    """One layer's measured latency against its output width; widths that are multiples of 8 marked, and
    the width the configuration keeps as a dashed line."""
    colors = ["#1f77b4" if c % 8 == 0 else "#aec7e8" for c in counts]
    fig = go.Figure(
        go.Scatter(
            x=counts,
            y=ms,
            mode="lines+markers",
            marker=dict(color=colors, size=7),
            line=dict(color="#aec7e8", width=1),
            hovertemplate="%{x} channels: %{y:.3f} ms<extra></extra>",
        )
    )
    shapes = [] if kept is None else [vrule(kept, color="#d62728", dash="dash")]
    fig.update_layout(
        title=f"{layer} alone: median time per forward (dark: multiples of 8; dashed: this configuration)",
        xaxis_title="output channels kept",
        yaxis_title="ms",
        height=320,
        margin=dict(t=50),
        shapes=shapes,
    )
    return fig


def oracle_agreement_bars(rows: list[dict]) -> go.Figure:
    """Each criterion's Spearman with the oracle: over all channels and the median over layers."""
    names = [r["criterion"] for r in rows]
    fig = go.Figure(
        [
            go.Bar(name="all channels", x=names, y=[r["all channels"] for r in rows]),
            go.Bar(name="median per layer", x=names, y=[r["median per layer"] for r in rows]),
        ]
    )
    fig.update_layout(
        barmode="group",
        title="Spearman rank correlation with the measured loss increase (1: ranks filters as the truth does)",
        yaxis=dict(range=[-1, 1], title="Spearman's rho"),
        height=340,
        margin=dict(t=50),
        **hrule(0.93, "Molchanov et al. 2019: Taylor > 0.93", dash="dot", color="#888"),
    )
    return fig


def oracle_scatter(points: dict[str, tuple[list[float], list[float], list[str]]], criterion: str) -> go.Figure:
    """Per layer: a criterion's score against the oracle's loss increase, log axes (points > 0 only)."""
    fig = go.Figure(
        [
            go.Scatter(
                x=x,
                y=y,
                mode="markers",
                name=layer,
                text=names,
                hovertemplate="%{text}<br>score %{x:.3g}<br>loss +%{y:.3g}",
            )
            for layer, (x, y, names) in points.items()
        ]
    )
    fig.update_layout(
        title=f"{criterion}: score against the loss increase when the filter alone is removed",
        xaxis=dict(type="log", title=f"{criterion} score"),
        yaxis=dict(type="log", title="loss increase (mean cross-entropy)"),
        height=420,
        margin=dict(t=50),
    )
    return fig


def calibration_lines(curves: dict[str, list[tuple[str, float | None]]]) -> go.Figure:
    """Per data-driven criterion: its Spearman with the oracle against the calibration images its scores read."""
    fig = go.Figure(
        [
            go.Scatter(x=[x for x, _ in points], y=[y for _, y in points], mode="lines+markers", name=name)
            for name, points in curves.items()
        ]
    )
    fig.update_layout(
        title="Data-driven criteria against the truth, by the calibration images they read",
        xaxis=dict(type="category", title="calibration images (the last ones of the evaluation split)"),
        yaxis=dict(range=[-1, 1], title="Spearman's rho, all channels"),
        height=320,
        margin=dict(t=50),
    )
    return fig


def scores_bar(scores: list[float], removed: list[bool], layer: str) -> go.Figure:
    colors = ["#d62728" if r else "#2ca02c" for r in removed]
    fig = go.Figure(go.Bar(x=list(range(len(scores))), y=scores, marker_color=colors))
    fig.update_layout(
        title=f"{layer}: score of each filter (red = removed at this sparsity)",
        xaxis_title="filter index",
        height=300,
        margin=dict(t=50),
    )
    return fig


def kernel_grid(kernels, title: str) -> go.Figure:
    """First-layer kernels (out, in, kh, kw) as small images (channel-mean when in > 1)."""
    k = kernels.float().mean(1)
    n = k.shape[0]
    cols = min(n, 8)
    rows = math.ceil(n / cols)
    fig = make_subplots(rows=rows, cols=cols, horizontal_spacing=0.01, vertical_spacing=0.02)
    lim = float(k.abs().max()) or 1.0
    for i in range(n):
        fig.add_trace(
            go.Heatmap(z=k[i].tolist(), zmin=-lim, zmax=lim, colorscale="RdBu", showscale=False),
            row=i // cols + 1,
            col=i % cols + 1,
        )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    fig.update_layout(title=title, height=90 * rows + 60, margin=dict(t=50, l=5, r=5, b=5))
    return fig


def attribution_pair(image, dense_map, pruned_map, title: str) -> go.Figure:
    """An input image next to its dense and pruned attribution maps (H, W)."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=("input", "dense model", "pruned model"))
    fig.add_trace(go.Heatmap(z=image.tolist(), colorscale="gray", showscale=False), row=1, col=1)
    top = max(float(dense_map.abs().max()), float(pruned_map.abs().max())) or 1.0
    for col, m in ((2, dense_map), (3, pruned_map)):
        fig.add_trace(
            go.Heatmap(z=m.tolist(), zmin=-top, zmax=top, colorscale="RdBu", showscale=col == 3), row=1, col=col
        )
    fig.update_yaxes(autorange="reversed", visible=False)
    fig.update_xaxes(visible=False)
    fig.update_layout(title=title, height=330, margin=dict(t=60))
    return fig


def sensitivity_heatmap(layers: list[str], sparsities: list[float], drops: list[list[float]]) -> go.Figure:
    fig = go.Figure(
        go.Heatmap(
            z=[[100 * d for d in row] for row in drops],
            x=[f"{s:.0%}" for s in sparsities],
            y=layers,
            colorscale="Reds",
            colorbar_title="accuracy drop (points)",
            text=[[f"{100 * d:.1f}" for d in row] for row in drops],
            texttemplate="%{text}",
        )
    )
    fig.update_layout(
        title="Accuracy drop when only this layer is pruned",
        xaxis_title="layer sparsity",
        yaxis_autorange="reversed",
        height=120 + 26 * len(layers),
        margin=dict(t=50),
    )
    return fig

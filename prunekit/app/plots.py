"""Plotly figure builders from engine results (no streamlit here)."""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from prunekit.core.evaluate import Accuracy
from prunekit.core.lab import PruneResult
from prunekit.core.profile import Profile

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
    return _grouped(fig, f"Share of parameters vs {unit} per layer ({scope})", "% of total", 420)


def _grouped(fig: go.Figure, title: str, yaxis_title: str, height: int, **layout) -> go.Figure:
    """The layout every grouped bar chart here shares: bars side by side per layer or class, names slanted."""
    fig.update_layout(_grouped_layout(title, yaxis_title, height, **layout))
    return fig


def _grouped_layout(title: str, yaxis_title: str, height: int, **layout) -> dict:
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


def _hrule(y: float, text: str | None = None, position: str = "top right", **line) -> dict:
    """A horizontal line across the plot and its label, as layout entries: what ``add_hline`` draws, without
    its re-validation of the whole figure (6 ms a line; the Prune page redraws two figures on every move)."""
    out = {"shapes": [dict(type="line", xref="x domain", x0=0, x1=1, yref="y", y0=y, y1=y, line=line)]}
    if text is not None:
        x, xanchor, yanchor = _LABEL_AT[position]
        out["annotations"] = [
            dict(text=text, xref="x domain", x=x, yref="y", y=y, xanchor=xanchor, yanchor=yanchor, showarrow=False)
        ]
    return out


def _vrule(x: float, **line) -> dict:
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
    rule = _hrule(100, "100% = layer gone", dash="dot", color="black")
    return go.Figure(bars, _grouped_layout(title, "% pruned", 400, yaxis_range=[0, 105], **rule))


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
    shapes = [] if kept is None else [_vrule(kept, color="#d62728", dash="dash")]
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
        **_hrule(0.93, "Molchanov et al. 2019: Taylor > 0.93", dash="dot", color="#888"),
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


def _error_bars(acc: list[float], intervals: list[tuple[float, float]]) -> dict:
    """Asymmetric Wilson error bars, in accuracy points."""
    return dict(
        type="data",
        symmetric=False,
        array=[100 * (hi - a) for a, (_, hi) in zip(acc, intervals, strict=True)],
        arrayminus=[100 * (a - lo) for a, (lo, _) in zip(acc, intervals, strict=True)],
        thickness=1,
    )


def log_ticks(values: list[float]) -> list[float]:
    """Readable ticks for a log axis over ``values``: a few of 1, 1.5, 2, 3, 5, 10, ... (never crowded)."""
    lo, hi = min(values, default=1.0), max(values, default=1.0)
    nice = [m * 10**e for e in range(0, 5) for m in (1, 1.5, 2, 3, 5)]
    inside = [v for v in nice if lo / 1.05 <= v <= hi * 1.05] or [1.0]
    step = max(1, len(inside) // 6)
    return inside[::step]


def _collapse_line(label: str, at: float, color: str) -> go.Scatter:
    """A dashed vertical line named in the legend (no rotated text over the plot)."""
    return go.Scatter(
        x=[at, at], y=[0, 100], mode="lines", line=dict(dash="dash", color=color, width=1),
        name=f"collapse: {label} at {at:.1%}",
    )  # fmt: skip


def tradeoff_curves(curves: dict[str, dict], x_key: str, x_title: str, dense: float | None) -> go.Figure:
    """Accuracy against ``x_key`` ('sparsity' or 'speedup') per recipe, with 95% Wilson error bars.

    A recipe's collapse point is a dashed line of the recipe's colour, named in the legend (no
    rotated text over the plot); the legend sits above the plot, clear of the axis ticks.
    """
    fig = go.Figure()
    xs: list[float] = []
    for i, (label, c) in enumerate(curves.items()):
        color = PALETTE[i % len(PALETTE)]
        done = [(x, a, ci) for x, a, ci in zip(c[x_key], c["accuracy"], c["interval"], strict=True) if a is not None]
        xs += [x for x, _, _ in done if x != float("inf")]
        acc = [a for _, a, _ in done]
        fig.add_scatter(
            x=[x for x, _, _ in done],
            y=[100 * a for a in acc],
            error_y=_error_bars(acc, [ci for _, _, ci in done]),
            mode="lines+markers",
            name=label,
            line_color=color,
        )
        if x_key == "sparsity" and c.get("collapse_point") is not None:
            fig.add_trace(_collapse_line(label, c["collapse_point"], color))
    if dense is not None:
        fig.add_hline(y=100 * dense, line_dash="dot", annotation_text="dense", annotation_position="bottom left")
    fig.update_layout(
        xaxis_title=x_title,
        yaxis_title="top-1 accuracy (%)",
        yaxis_range=[0, 101],
        height=460,
        legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0, xanchor="left"),
        margin=dict(t=40 + 22 * ((len(fig.data) + 1) // 2), b=50),
    )
    if x_key == "speedup":
        ticks = log_ticks(xs)
        fig.update_xaxes(type="log", tickvals=ticks, ticktext=[f"{v:g}x" for v in ticks])
    return fig


def _slider_marker(scope: str, at: float, acc: Accuracy) -> go.Scatter:
    """The reading at the slider, with its 95% interval as an error bar (an estimate says so)."""
    lo, hi = acc.interval()
    return go.Scatter(
        x=[at],
        y=[100 * acc.top1],
        error_y=dict(type="data", symmetric=False, array=[100 * (hi - acc.top1)], arrayminus=[100 * (acc.top1 - lo)]),
        mode="markers",
        marker=dict(size=12, symbol="diamond", color=COLORS.get(scope), line=dict(width=1, color="black")),
        name=f"{scope} at {at:.0%}" + (" (estimate, 95% interval)" if acc.is_estimate else ""),
    )


def accuracy_curve(
    curves: dict[str, dict[float, float]], at: float, current: dict[str, Accuracy | None], dense: Accuracy | None
) -> go.Figure:
    """Full-split top-1 against sparsity per scope as the workers fill it; the slider's position marked.

    ``current`` holds each scope's best reading at the slider (an estimate carries its 95% interval). Built in
    one constructor: it is redrawn on every move.
    """
    traces = []
    for scope, points in curves.items():
        traces.append(
            go.Scatter(
                x=list(points),
                y=[100 * a for a in points.values()],
                mode="lines+markers",
                name=f"{scope} (full split)",
                line=dict(color=COLORS.get(scope)),
                marker=dict(size=4),
            )
        )
        if current.get(scope) is not None:
            traces.append(_slider_marker(scope, at, current[scope]))
    rules = _hrule(100 * dense.top1, "dense", "bottom left", dash="dot") if dense is not None else {}
    layout = dict(
        title="Accuracy against sparsity (filling in live)",
        xaxis_title="sparsity (fraction removed)",
        yaxis_title="top-1 accuracy (%)",
        xaxis_range=[-0.02, 1.0],
        height=380,
        legend=dict(orientation="h", y=-0.25),
        margin=dict(t=50, b=10),
        shapes=[*rules.get("shapes", []), _vrule(at, color="gray", width=1)],
        annotations=rules.get("annotations", []),
    )
    return go.Figure(traces, layout)


def recovery_curve(curves: dict[str, list], baselines: dict[str, float | None]) -> go.Figure:
    """Fine-tuning curves (label -> CurvePoints, estimates) against epochs, with dashed baseline lines."""
    fig = go.Figure()
    for i, (label, points) in enumerate(curves.items()):
        fig.add_trace(
            go.Scatter(
                x=[p.epoch for p in points],
                y=[p.top1 for p in points],
                mode="lines+markers",
                name=label,
                line={"color": PALETTE[i % len(PALETTE)]},
                hovertemplate="epoch %{x:.2f}: %{y:.1%} (estimate)<extra>" + label + "</extra>",
            )
        )
    for name, value in baselines.items():
        if value is not None:
            fig.add_hline(
                y=value, line_dash="dot", annotation_text=f"{name} {value:.1%}", annotation_position="top left"
            )
    fig.update_layout(
        xaxis_title="fine-tuning epochs",
        yaxis_title="top-1 (estimate)",
        yaxis_tickformat=".0%",
        height=340,
        margin={"t": 30, "b": 40},
        legend={"orientation": "h", "y": 1.12},
    )
    return fig


def class_change_bars(reports: dict) -> go.Figure:
    """Per class, accuracy change against dense (points) for each scope; classes ordered by the first
    scope's damage, worst first. ``reports``: scope -> ``prunekit.core.forget.Forgetting``."""
    first = next(iter(reports.values()))
    order = first.worst_first()
    fig = go.Figure()
    for scope, report in reports.items():
        fig.add_bar(
            name=scope,
            x=[report.classes[k] for k in order],
            y=[100 * report.change[k] for k in order],
            marker_color=COLORS.get(scope),
            hovertemplate="%{x}: %{y:+.1f} points<extra>" + scope + "</extra>",
        )
    fig.add_hline(y=0, line_color="black", line_width=1)
    return _grouped(fig, "Per-class accuracy change against the dense model (worst class first)", "points", 380)


def method_bars(labels: list[str], accuracies: list[Accuracy], dense: float | None) -> go.Figure:
    """Final top-1 per method (bars) with 95% Wilson intervals; the dense model's as a dotted line."""
    top1 = [a.top1 for a in accuracies]
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=[100 * a for a in top1],
            error_y=_error_bars(top1, [a.interval() for a in accuracies]),
            marker_color=[PALETTE[i % len(PALETTE)] for i in range(len(labels))],
            hovertemplate="%{x}: %{y:.2f}%<extra></extra>",
        )
    )
    if dense is not None:
        fig.add_hline(y=100 * dense, line_dash="dot", annotation_text=f"dense {dense:.1%}")
    low = min(top1 + ([dense] if dense is not None else []), default=0.0)
    fig.update_layout(
        yaxis_title="top-1 on the test split (%)", yaxis_range=[max(0, 100 * low - 10), 100], height=380,
        margin=dict(t=30, b=80),
    )  # fmt: skip
    return fig


def method_curves(curves: dict[str, list[tuple[int, float]]]) -> go.Figure:
    """Training curves: estimate top-1 against the method's optimizer steps so far (its search included)."""
    fig = go.Figure()
    for i, (label, points) in enumerate(curves.items()):
        fig.add_scatter(
            x=[s for s, _ in points], y=[a for _, a in points], mode="lines+markers", name=label,
            line_color=PALETTE[i % len(PALETTE)],
            hovertemplate="step %{x}: %{y:.1%} (estimate)<extra>" + label + "</extra>",
        )  # fmt: skip
    fig.update_layout(
        xaxis_title="optimizer steps (the method's whole cost so far)", yaxis_title="top-1 (estimate)",
        yaxis_tickformat=".0%", height=360, margin={"t": 30, "b": 40}, legend={"orientation": "h", "y": 1.12},
    )  # fmt: skip
    return fig


def submodel_spread(candidates: list[float], heuristics: dict[str, float], images: int) -> go.Figure:
    """Sub-model sampling: each random allocation's estimate top-1 (one dot each, before fine-tuning) beside the
    named allocations' scored the same way (filter pruning at the same target, BatchNorm recalibrated)."""
    fig = go.Figure()
    fig.add_scatter(
        x=["random allocations"] * len(candidates), y=candidates, mode="markers", name="random allocations",
        marker={"size": 11, "color": PALETTE[0], "opacity": 0.7},
        hovertemplate="candidate %{text}: %{y:.1%}<extra></extra>", text=[str(i + 1) for i in range(len(candidates))],
    )  # fmt: skip
    fig.add_scatter(
        x=list(heuristics), y=list(heuristics.values()), mode="markers", name="named allocations",
        marker={"size": 13, "color": PALETTE[1], "symbol": "diamond"},
        hovertemplate="%{x}: %{y:.1%}<extra></extra>",
    )  # fmt: skip
    fig.update_layout(
        yaxis_title=f"top-1 (estimate, {images:,} test images)", yaxis_tickformat=".0%", height=340,
        margin={"t": 30, "b": 40}, showlegend=False,
    )  # fmt: skip
    return fig

"""Plotly figures of accuracy against something (sparsity, speed-up, fine-tuning steps, a method), with their
Wilson intervals and baselines (no streamlit here). The other charts and the shared layout helpers: plots.py."""

from __future__ import annotations

import plotly.graph_objects as go

from prunekit.app.plots import COLORS, PALETTE, grouped, hrule, vrule
from prunekit.core.evaluate import Accuracy


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
    rules = hrule(100 * dense.top1, "dense", "bottom left", dash="dot") if dense is not None else {}
    layout = dict(
        title="Accuracy against sparsity (filling in live)",
        xaxis_title="sparsity (fraction removed)",
        yaxis_title="top-1 accuracy (%)",
        xaxis_range=[-0.02, 1.0],
        height=380,
        legend=dict(orientation="h", y=-0.25),
        margin=dict(t=50, b=10),
        shapes=[*rules.get("shapes", []), vrule(at, color="gray", width=1)],
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
    return grouped(fig, "Per-class accuracy change against the dense model (worst class first)", "points", 380)


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

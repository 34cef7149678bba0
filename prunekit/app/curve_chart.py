"""The Prune page's accuracy curve as a component that listens: drawn (SVG, in the page) from what the server
knows at a rerun, then each grid point added as it lands, pushed over the live channel
(:mod:`prunekit.app.channel`, one group key for the whole grid) with no rerun and no poll.

Every number comes from the server: a point is a full-split top-1 the workers measured (its text formatted by
:func:`prunekit.app.channel.value`); the browser only places it. If the channel cannot connect, the component says
so through the same fallback as the readouts, and the page draws the curve with Plotly and refreshes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st

from prunekit.app.channel import CHANNEL, LISTEN_JS, PATH
from prunekit.app.plots import COLORS
from prunekit.app.server_state import curve_fill_enabled, template
from prunekit.app.session_state import cfg
from prunekit.core.evaluate import Accuracy
from prunekit.core.lab import Lab
from prunekit.service.jobs import EvalJob
from prunekit.service.queue import curve_grid

TITLE = "Accuracy against sparsity (filling in live)"

CSS = """
.pk-curve { font-family: "Source Sans Pro", sans-serif; color: rgb(49, 51, 63); }
.pk-curve svg { width: 100%; height: auto; display: block; }
.pk-curve text { font-size: 12px; fill: rgb(49, 51, 63); }
.pk-curve .title { font-size: 16px; }
.pk-curve .grid { stroke: rgba(49, 51, 63, 0.12); }
.pk-curve .axis { stroke: rgba(49, 51, 63, 0.5); }
"""

JS = """
const NS = "http://www.w3.org/2000/svg";
const W = 720, H = 380, L = 60, R = 16, T = 40, B = 80;
function el(parent, name, attrs, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  parent.appendChild(e);
  return e;
}
function draw(root, d, series) {
  const ys = series.flatMap((s) => s.points.map((p) => p[1])).concat(d.marks.map((m) => m.top1));
  if (d.dense !== null) ys.push(d.dense);
  let lo = ys.length ? Math.min(...ys) : 0, hi = ys.length ? Math.max(...ys) : 1;
  const pad = Math.max(0.005, (hi - lo) * 0.06); lo = Math.max(0, lo - pad); hi = Math.min(1, hi + pad);
  const x = (s) => L + ((s + 0.02) / 1.02) * (W - L - R);
  const y = (v) => H - B - ((v - lo) / (hi - lo || 1)) * (H - T - B);
  root.innerHTML = "";
  const svg = el(root, "svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": d.title });
  el(svg, "text", { x: L, y: 22, class: "title" }, d.title);
  for (let i = 0; i <= 5; i++) {
    const s = i / 5, v = lo + ((hi - lo) * i) / 5;
    el(svg, "line", { x1: x(s), x2: x(s), y1: T, y2: H - B, class: "grid" });
    el(svg, "text", { x: x(s), y: H - B + 16, "text-anchor": "middle" }, s.toFixed(1));
    el(svg, "line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" });
    el(svg, "text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, (100 * v).toFixed(1));
  }
  el(svg, "text", { x: (L + W - R) / 2, y: H - B + 34, "text-anchor": "middle" }, "sparsity (fraction removed)");
  el(svg, "text", { x: 14, y: (T + H - B) / 2, transform: `rotate(-90 14 ${(T + H - B) / 2})`, "text-anchor": "middle" }, "top-1 accuracy (%)");
  el(svg, "line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" });
  el(svg, "line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" });
  if (d.dense !== null) {
    el(svg, "line", { x1: L, x2: W - R, y1: y(d.dense), y2: y(d.dense), stroke: "gray", "stroke-dasharray": "2 3" });
    el(svg, "text", { x: L + 4, y: y(d.dense) - 4 }, "dense");
  }
  el(svg, "line", { x1: x(d.at), x2: x(d.at), y1: T, y2: H - B, stroke: "gray" });
  let legend = L, drawn = 0;
  for (const s of series) {
    const pts = s.points.slice().sort((a, b) => a[0] - b[0]);
    drawn += pts.length;
    if (pts.length) el(svg, "polyline", { points: pts.map((p) => x(p[0]) + "," + y(p[1])).join(" "), fill: "none", stroke: s.color, "stroke-width": 2 });
    for (const p of pts) el(svg, "circle", { cx: x(p[0]), cy: y(p[1]), r: 2.5, fill: s.color, "data-series": s.id, "data-s": p[0] });
    el(svg, "rect", { x: legend, y: H - 26, width: 14, height: 4, fill: s.color });
    legend += 20 + 7 * el(svg, "text", { x: legend + 20, y: H - 20 }, s.label).textContent.length;
  }
  for (const m of d.marks) {
    const [cx, cy] = [x(d.at), y(m.top1)];
    el(svg, "polygon", { points: `${cx},${cy - 7} ${cx + 7},${cy} ${cx},${cy + 7} ${cx - 7},${cy}`, fill: m.estimate ? "white" : m.color, stroke: m.color, "stroke-width": 2, "data-mark": m.scope, "data-estimate": m.estimate });
  }
  root.dataset.points = drawn;
}
export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  if (parentElement.pkSource) parentElement.pkSource.close();  // a rerun's new data replaces the last listener
  parentElement.pkSource = null;
  let root = parentElement.querySelector(".pk-curve");
  if (!root) {
    root = document.createElement("div");
    root.className = "pk-curve";
    root.dataset.testid = "pkCurve";
    parentElement.appendChild(root);
  }
  const series = data.series.map((s) => Object.assign({}, s, { points: s.points.slice() }));
  const shown = Object.assign({}, data, { marks: data.marks.slice() });
  draw(root, shown, series);
  if (!data.group) return;
  const url = data.path + "?t=" + encodeURIComponent(data.token) + "&k=" + data.group;
  return listen(parentElement, url, (got) => {
    const [id, s] = data.pending[got.key] || [];
    const target = series.find((x) => x.id === id);
    if (!target || got.error) return;
    for (const t of s === 0 ? series : [target]) {  // sparsity 0 is the dense model: every scope's first point
      if (!t.points.some((p) => p[0] === s)) t.points.push([s, got.top1]);
    }
    if (s === 0) shown.dense = got.top1;
    if (s === data.at) {  // the slider's own full figure: its mark is no longer an estimate
      shown.marks = shown.marks.filter((m) => m.scope !== id);
      shown.marks.push({ scope: id, top1: got.top1, estimate: false, color: target.color });
    }
    draw(root, shown, series);
  }, setTriggerValue);
}
"""

COMPONENT = st.components.v2.component("prunekit_curve", css=CSS, js=LISTEN_JS + JS)


@dataclass(frozen=True)
class Series:
    """One scope's curve: the points known (sparsity -> full-split top-1) and the grid jobs still to land."""

    id: str
    label: str
    points: dict[float, float]
    pending: dict[float, EvalJob]


def curve_jobs(current: Lab, scope: str, known: dict[float, float]) -> dict[float, EvalJob]:
    """The points of ``scope``'s curve still to land, by sparsity: the whole grid while the curve fills in the
    background, else the slider's own point (its full figure lands on the curve too) and the dense model's at 0
    (the curve's dense line)."""
    base = dataclasses.replace(template(current, cfg()).with_scope(scope), subset=None)
    grid = {s for _, s in curve_grid()} if curve_fill_enabled() else set()
    return {s: base.at(s) for s in sorted(grid | {0.0, cfg().sparsity}) if s not in known}


def show(
    series: list[Series],
    at: float,
    marks: dict[str, Accuracy | None],
    dense: Accuracy | None,
    token: str,
    on_fallback: Callable[[], None],
    key: str = "prune_curve",
) -> None:
    """Draw ``series`` with the slider at ``at`` and each scope's reading there (``marks``; an estimate drawn
    hollow); the points still pending are added as they land."""
    jobs = {job: (s.id, sparsity) for s in series for sparsity, job in s.pending.items()}
    group, keys = CHANNEL.offer_group(token, jobs) if jobs else ("", {})
    data = {
        "path": PATH,
        "token": token if jobs else "",
        "group": group,
        "title": TITLE,
        "at": at,
        "dense": dense.top1 if dense is not None else None,
        "series": [
            {"id": s.id, "label": s.label, "color": COLORS.get(s.id, "gray"), "points": sorted(s.points.items())}
            for s in series
        ],
        "pending": {keys[job]: [sid, sparsity] for job, (sid, sparsity) in jobs.items()},
        "marks": [
            {"scope": scope, "top1": acc.top1, "estimate": acc.is_estimate, "color": COLORS.get(scope, "gray")}
            for scope, acc in marks.items()
            if acc is not None
        ],
    }
    COMPONENT(key=key, data=data, on_fallback_change=on_fallback)

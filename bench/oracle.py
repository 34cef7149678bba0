"""How long does the oracle take per bundled model, against the plain loop, and which criterion tracks it?

    python bench/oracle.py [--models fmnist-cnn,fmnist-vgg] [--images 1000] [--threads 2] [--plain-channels 2]

The oracle (``prunekit/core/oracle.py``: every channel group's loss increase when removed alone) runs on a
stratified subset of ``--images`` evaluation images (0: the whole split) with the fast path: the dense prefix
once per batch, removals stacked in the batch. The plain loop (mask one channel, run the whole network) is
timed on the first ``--plain-channels`` channels of every group, checked equal to the fast path's there, and
its time for every channel is extrapolated from that sample: an estimate, and the table says so. Then every
filter criterion's Spearman correlation with the oracle: over all channels and the median over layers.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import prunekit  # noqa: E402
from prunekit.core.evaluate import stratified_indices  # noqa: E402
from prunekit.core.oracle import plain_oracle  # noqa: E402
from prunekit.tasks import OracleReport  # noqa: E402


def _first(cluster, k: int):
    members = tuple(dataclasses.replace(m, index=m.index[:k]) for m in cluster.members)
    return dataclasses.replace(cluster, size=min(k, cluster.size), members=members)


def _plain_seconds(lab, report: OracleReport, images: int | None, k: int) -> tuple[float, float]:
    """(the plain loop's time for every channel, extrapolated from ``k`` per group; its largest difference from
    the fast path on those channels)."""
    data = lab.loaded.eval_data()
    picked = stratified_indices(data.labels, images) if images else torch.arange(len(data))
    sample = [_first(c, k) for c in lab.clusters]
    t0 = time.perf_counter()
    plain = plain_oracle(lab.loaded.model, sample, data.images[picked], data.labels[picked])
    per_channel = (time.perf_counter() - t0) / plain.channels
    diff = max(
        abs(a - b)
        for fast, slow in zip(report.truth.increases, plain.increases, strict=True)
        for a, b in zip(fast, slow, strict=False)  # the fast row is longer: the sample's channels only
    )
    return per_channel * report.truth.channels, diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fmnist-cnn,fmnist-vgg,fmnist-resnet,fmnist-mobilenet")
    parser.add_argument("--images", type=int, default=1000, help="0: the whole evaluation split")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--plain-channels", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = args.images or None
    print(f"machine: {platform.node()}, {os.cpu_count()} cores; torch {torch.__version__}, {args.threads} thread(s)")
    reports = {}
    print(
        "| model | groups | channels | images | oracle, fast path (s) | plain loop (s, estimate) | speedup | largest difference |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        lab = prunekit.load(name)
        report = lab.oracle(images)
        plain_s, diff = _plain_seconds(lab, report, images, args.plain_channels)
        t = report.truth
        print(
            f"| {name} | {len(t.groups)} | {t.channels} | {t.images:,} | {t.seconds:.1f} | {plain_s:.0f} | "
            f"{plain_s / t.seconds:.1f}x | {diff:.1e} |",
            flush=True,
        )
        reports[name] = report
    criteria = sorted({a.criterion for r in reports.values() for a in r.agreements})
    print("\nSpearman with the oracle: all channels / median per layer")
    print("| criterion | " + " | ".join(reports) + " |")
    print("|---|" + "---|" * len(reports))
    for criterion in criteria:
        cells = []
        for report in reports.values():
            found = next((a for a in report.agreements if a.criterion == criterion), None)
            cells.append("n/a" if found is None else f"{_rho(found.overall)} / {_rho(found.median_group)}")
        print(f"| {criterion} | " + " | ".join(cells) + " |")


def _rho(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


if __name__ == "__main__":
    main()

"""How fast is an evaluation pass, against what this core can do? Full 10k Fashion-MNIST split, per bundled model.

    python bench/evalspeed.py [--models fmnist-cnn,fmnist-vgg] [--threads 1] [--settings] [--json]

Default: each inference engine a worker can run a pass on (eager PyTorch as the worker runs it: channels_last,
batch 64; ONNX Runtime, one intra-op thread, batch 64, BatchNorm folded by its optimiser), dense and at 50%
filters (the compacted model), with its GMAC/s and its share of the core's peak, measured in the same run (a
1024x1024 float32 matmul, and a 128-channel 3x3 convolution at batch 64, channels_last), the engine's build time
and whether its correct count equals eager's. Each time is the best of 3 after a warm-up, in one process with
``--threads`` torch threads (a worker uses 1).

``--settings``: the eager settings instead (batch size, memory format, torch.compile), each the median of 3
timed runs; every variant's top-1 is checked against the first's, so a faster setting cannot change a number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prunekit.core.evaluate import accuracy_of  # noqa: E402
from prunekit.core.lab import Lab  # noqa: E402
from prunekit.core.spec import PruneSpec, Scope  # noqa: E402
from prunekit.deploy.engine import eager, onnxruntime, refereed_counts  # noqa: E402
from prunekit.models import zoo  # noqa: E402
from prunekit.service.jobs import EVAL_BATCH  # noqa: E402

VARIANTS = [
    ("batch 128", dict(batch=128)),
    ("batch 256 (default)", dict(batch=256)),
    ("batch 512", dict(batch=512)),
    ("batch 1000", dict(batch=1000)),
    ("batch 256, channels_last", dict(batch=256, channels_last=True)),
    ("batch 128, channels_last", dict(batch=128, channels_last=True)),
    ("batch 64, channels_last", dict(batch=64, channels_last=True)),
    ("batch 256, torch.compile", dict(batch=256, compile=True)),
]


def _prepared(model, images, channels_last=False, compile=False):
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    return model, images


def time_variant(name: str, batch: int, channels_last: bool = False, compile: bool = False) -> dict:
    loaded = zoo.load(name)
    data = loaded.eval_data()
    model, images = _prepared(loaded.model, data.images, channels_last, compile)
    t0 = time.perf_counter()
    acc = accuracy_of(model, images, data.labels, len(data), batch)  # warm-up (and compile)
    first = time.perf_counter() - t0
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        accuracy_of(model, images, data.labels, len(data), batch)
        runs.append(time.perf_counter() - t0)
    return {"seconds": statistics.median(runs), "first_call_s": first, "top1": acc.top1}


def _best(f, runs: int = 3) -> float:
    f()  # warm-up
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best


def core_peak() -> dict:
    """GMAC/s of this core on the two kernels a convolutional network is made of."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    matmul = 1024**3 / _best(lambda: a @ b, 10) / 1e9
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).eval().to(memory_format=torch.channels_last)
    x = torch.randn(64, 128, 28, 28).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        seconds = _best(lambda: conv(x), 5)
    return {"matmul": matmul, "conv3x3": 64 * 28 * 28 * 128 * 128 * 9 / seconds / 1e9}


def time_engines(name: str) -> list[dict]:
    """Eager and ONNX Runtime on ``name`` dense and at 50% filters (compacted), on the whole split."""
    lab = Lab(zoo.load(name))
    data = lab.loaded.eval_data()
    spec = PruneSpec("l1", "filter", sparsity=0.5).with_scope(Scope.LOCAL)  # global collapses a layer of fmnist-cnn
    compacted = lab.pruner(spec).compact(spec).model
    rows = []
    for config, model, macs in (
        ("dense", lab.loaded.model, lab.profile.total_macs),
        ("50% filters (local), compacted", compacted, lab.result(spec).remaining_macs),
    ):
        fast = model.to(memory_format=torch.channels_last)
        images = data.images.contiguous(memory_format=torch.channels_last)
        base = None
        for kind in ("eager", "onnxruntime"):
            t0 = time.perf_counter()
            engine = eager(fast) if kind == "eager" else onnxruntime(fast, tuple(data.images.shape[1:]))
            build = time.perf_counter() - t0
            # as a worker runs it: near ties scored eager
            counts = refereed_counts(engine, fast, images, data.labels, EVAL_BATCH)
            seconds = _best(lambda e=engine, m=fast, x=images: refereed_counts(e, m, x, data.labels, EVAL_BATCH))
            base = base or (seconds, counts.correct)
            rows.append(
                {
                    "model": name,
                    "config": config,
                    "engine": kind,
                    "seconds": seconds,
                    "build_s": build,
                    "gmacs": macs * len(data) / seconds / 1e9,
                    "speedup": base[0] / seconds,
                    "same_counts": counts.correct == base[1],
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(zoo.BUNDLED))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", default="", help="comma-separated prefixes of variant names to run")
    parser.add_argument("--settings", action="store_true", help="the eager settings instead of the engines")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.settings:
        engines_table(args)
        return
    chosen = [v for v in VARIANTS if not args.variants or any(v[0].startswith(p) for p in args.variants.split(","))]
    rows = []
    for name in args.models.split(","):
        base = None
        for label, opts in chosen:
            row = {"model": name, "variant": label, **time_variant(name, **opts)}
            base = base or row
            row["speedup"] = base["seconds"] / row["seconds"]
            row["same_top1"] = row["top1"] == base["top1"]
            rows.append(row)
    if args.json:
        print(json.dumps(rows))
        return
    print(f"machine: {platform.node()}, {os.cpu_count()} cores; torch {torch.__version__}, {args.threads} thread(s)")
    print("| model | variant | 10k eval (s) | vs first row | first call (s) | same top-1 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['variant']} | {r['seconds']:.3f} | {r['speedup']:.2f}x | {r['first_call_s']:.1f} "
            f"| {'yes' if r['same_top1'] else 'NO'} |"
        )


def engines_table(args) -> None:
    peak = core_peak()
    rows = [r for name in args.models.split(",") for r in time_engines(name)]
    if args.json:
        print(json.dumps({"peak_gmacs": peak, "rows": rows}))
        return
    print(f"machine: {platform.node()}, {os.cpu_count()} cores; torch {torch.__version__}, {args.threads} thread(s)")
    print(
        f"core peak, same run: {peak['matmul']:.0f} GMAC/s (1024x1024 matmul), "
        f"{peak['conv3x3']:.0f} GMAC/s (128-channel 3x3 convolution, batch 64, channels_last)"
    )
    print(
        "| model | configuration | engine | 10k pass (s) | GMAC/s | share of matmul peak | vs eager | build (s) | same correct count |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['config']} | {r['engine']} | {r['seconds']:.2f} | {r['gmacs']:.0f} "
            f"| {r['gmacs'] / peak['matmul']:.0%} | {r['speedup']:.2f}x | {r['build_s']:.2f} "
            f"| {'yes' if r['same_counts'] else 'NO'} |"
        )


if __name__ == "__main__":
    main()

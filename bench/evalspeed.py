"""Which evaluation settings are fastest on this machine? Full 10k Fashion-MNIST split, per bundled model.

    python bench/evalspeed.py [--models fmnist-cnn,fmnist-vgg] [--threads 1] [--json]

Rows: batch size, memory format (contiguous vs channels_last) and torch.compile, each the median of
3 timed runs after a warm-up, in one process with ``--threads`` torch threads (a worker uses 1).
Every variant's top-1 is checked against the baseline's, so a faster setting cannot change a number.
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
from prunekit.models import zoo  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(zoo.BUNDLED))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", default="", help="comma-separated prefixes of variant names to run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
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


if __name__ == "__main__":
    main()

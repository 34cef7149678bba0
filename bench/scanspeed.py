"""How long does a full sensitivity scan take in one worker, with and without reusing the dense prefix?

    python bench/scanspeed.py [--models fmnist-vgg,fmnist-resnet] [--structures unstructured,filter]

Every unit set of the model at 0.1, 0.2, ..., 0.9 on the estimate's 1,000 images (the Sensitivity page's scan),
measured by a worker (``JobRunner``, one thread, eager) that keeps the dense activations entering the pruned
part (``prunekit/core/prefix.py``) against one that runs the whole network per point, in the same process, one
after the other. Every point's figure is checked equal between the two.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prunekit.core.loaded import ModelSpec  # noqa: E402
from prunekit.core.spec import PruneSpec  # noqa: E402
from prunekit.service.fanout import sensitivity_jobs  # noqa: E402
from prunekit.service.jobs import ESTIMATE_IMAGES, EvalJob  # noqa: E402
from prunekit.service.runner import JobRunner  # noqa: E402

SPARSITIES = tuple(round(0.1 * i, 1) for i in range(1, 10))


def scan(name: str, structure: str, reuse: bool) -> tuple[float, list[tuple]]:
    runner = JobRunner(engines=False, prefixes=reuse)
    runner.load(name, ModelSpec("prunekit.models.zoo:load", (name,)))
    criterion = "l1" if structure == "filter" else "magnitude"
    template = EvalJob(name, PruneSpec(criterion, structure), subset=ESTIMATE_IMAGES)
    jobs = sensitivity_jobs(runner.labs[name], template, SPARSITIES)
    t0 = time.perf_counter()
    figures = [(lambda a: (a.top1, a.n))(runner.run(job)) for job in jobs]
    return time.perf_counter() - t0, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fmnist-vgg,fmnist-resnet")
    parser.add_argument("--structures", default="unstructured,filter")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"machine: {platform.node()}, {os.cpu_count()} cores; torch {torch.__version__}, 1 thread")
    print(
        "| model | structure | points | whole network per point (s) | dense prefix reused (s) | speedup | same figures |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for structure in args.structures.split(","):
            plain_s, plain = scan(name, structure, reuse=False)
            reuse_s, reused = scan(name, structure, reuse=True)
            print(
                f"| {name} | {structure} | {len(plain)} | {plain_s:.1f} | {reuse_s:.1f} | {plain_s / reuse_s:.2f}x "
                f"| {'yes' if plain == reused else 'NO'} |"
            )


if __name__ == "__main__":
    main()

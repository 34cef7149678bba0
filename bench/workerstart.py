"""How long does a new evaluation service take to its first figure, with workers spawned against forked by the
fork server (``prunekit.service.workers.worker_context``)? The first service of a process pays the fork server's
imports; every later one (a worker restarted after a crash, another service) forks a process that has them.

    python bench/workerstart.py [--services 4]

Each row starts ``--services`` services one after another in this process, each with one local worker, and times
from the service's construction to the first result of a small job (fmnist-cnn on 64 images, which includes
loading the model in the worker); the worker is closed before the next service starts.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prunekit.core.loaded import ModelSpec  # noqa: E402
from prunekit.service import workers  # noqa: E402
from prunekit.service.evaluation import EvalService  # noqa: E402
from prunekit.service.jobs import EvalJob  # noqa: E402

CNN = ModelSpec("prunekit.models.zoo:load", ("fmnist-cnn",))


def first_figure(context) -> float:
    """Seconds from a new one-worker service (started in ``context``) to its first result."""
    t0 = time.perf_counter()
    svc = EvalService(workers=1, spawn=lambda: workers.spawn_local(context, 1, 0))
    try:
        svc.register("fmnist-cnn", CNN)
        job = EvalJob("fmnist-cnn", subset=64)
        svc.request([(job, 0)], "bench")
        while svc.lookup(job) is None:
            time.sleep(0.005)
        return time.perf_counter() - t0
    finally:
        svc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=4)
    args = parser.parse_args()
    rows = {"spawn (each worker imports torch)": mp.get_context("spawn"), "fork server": workers.worker_context()}
    print(
        f"machine: {platform.processor() or platform.machine()}, {mp.cpu_count()} cores, Python {sys.version.split()[0]}"
    )
    print("| worker start | " + " | ".join(f"service {i + 1} (s)" for i in range(args.services)) + " |")
    print("|---|" + "---|" * args.services)
    for name, context in rows.items():
        times = [first_figure(context) for _ in range(args.services)]
        print(f"| {name} | " + " | ".join(f"{t:.2f}" for t in times) + " |")


if __name__ == "__main__":
    main()

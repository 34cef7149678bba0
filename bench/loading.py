"""Where should a big model load so that the room keeps moving? A thread, a lower-priority thread, or a process.

    python bench/loading.py [--models vgg16,regnet_y_16gf] [--json]

A stand-in for the room runs beside each load: one thread doing what a page rerun mostly is (pure Python, about
20 ms alone) every 10 ms, timed. The load is what the server does for a model it does not hold (the model built,
profiled, its score table sorted and the first position pruned in both scopes: ``prepared_lab``), done four ways,
each in a fresh process, the server's torch threads as ``prunekit app`` sets them (one per core):

- none: the stand-in alone (the baseline);
- script thread: on another thread at the pages' priority (how the app loaded before the loader);
- loader thread: on a ``prunekit.service.loading`` loader thread (``LOAD_NICE`` below the pages);
- process: in a child process at the same lower priority (the Lab would then still have to be shipped back:
  its weights alone are 4 bytes a parameter, not counted here).

The table gives the stand-in's rerun times (p50 / p95 / max) and the load's wall time per way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAYS = ("none", "script thread", "loader thread", "process")


def _rerun() -> float:
    t0 = time.perf_counter()
    total = 0
    for i in range(400_000):
        total += i * i
    return time.perf_counter() - t0


def _load(name: str) -> None:
    from prunekit.app.settings import Settings
    from prunekit.core.spec import COMPARED_SCOPES
    from prunekit.models import zoo
    from prunekit.service.loading import prepared_lab

    first = Settings().copy(model=name)
    prepared_lab(lambda: zoo.load(name), [first.spec(s) for s in COMPARED_SCOPES], lambda step: None)


def _loader_thread(name: str) -> None:
    from prunekit.service.loading import LOAD_NICE, _lower_priority

    _lower_priority(LOAD_NICE)
    _load(name)


def one(way: str, name: str) -> dict:
    """Run the stand-in while ``name`` loads the ``way`` way (in this process); its times and the load's."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    import prunekit.service.loading  # noqa: F401 - imported before timing, as in the server

    times: list[float] = []
    if way == "none":
        load = threading.Thread(target=time.sleep, args=(10,))
    elif way == "process":
        from prunekit.service.loading import LOAD_NICE

        here = os.path.dirname(os.path.abspath(__file__))
        code = f"import sys; sys.path.insert(0, {here!r}); import loading; loading._load({name!r})"
        child = subprocess.Popen(["nice", "-n", str(LOAD_NICE), sys.executable, "-c", code], cwd=ROOT)
        load = threading.Thread(target=child.wait)
    else:
        load = threading.Thread(target=_loader_thread if way == "loader thread" else _load, args=(name,))
    t0 = time.perf_counter()
    load.start()
    while load.is_alive():
        times.append(_rerun())
        time.sleep(0.01)
    wall = time.perf_counter() - t0
    times.sort()
    return {
        "model": name,
        "way": way,
        "reruns": len(times),
        "p50_ms": 1000 * statistics.median(times),
        "p95_ms": 1000 * times[min(len(times) - 1, round(0.95 * (len(times) - 1)))],
        "max_ms": 1000 * times[-1],
        "load_s": wall if way != "none" else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vgg16,regnet_y_16gf")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--one", nargs=2, metavar=("WAY", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one)))
        return
    rows = []
    for name in args.models.split(","):
        for way in WAYS:
            out = subprocess.run(
                [sys.executable, __file__, "--one", way, name], cwd=ROOT, capture_output=True, text=True, check=True
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}")
    print("| model | where the load runs | stand-in reruns | rerun p50 / p95 / max ms | load wall s |")
    print("|---|---|---|---|---|")
    for r in rows:
        load = f"{r['load_s']:.1f}" if r["load_s"] is not None else "-"
        print(
            f"| {r['model']} | {r['way']} | {r['reruns']} | {r['p50_ms']:.0f} / {r['p95_ms']:.0f} / {r['max_ms']:.0f} "
            f"| {load} |"
        )


if __name__ == "__main__":
    main()

"""Sweep throughput by backend: this process, local worker processes, and a private Ray instance.

    python bench/scale.py [--model fmnist-vgg] [--points 24] [--json]

One sweep = ``--points`` accuracy jobs on the full evaluation split (the model pruned at evenly spaced
sparsities, magnitude, global), each backend starting from an empty result store so nothing is cached.
"start" is the time to bring the backend up (worker processes, or the Ray instance); "sweep" is from
the first request to the last point, model loading in the workers included. For Ray, "idle" is what
its processes hold while nothing runs: resident memory, and CPU used over 10 idle seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from prunekit.core.lab import Lab  # noqa: E402
from prunekit.core.loaded import ModelSpec  # noqa: E402
from prunekit.core.spec import Allocation, PruneSpec  # noqa: E402
from prunekit.deploy.latency import machine_name  # noqa: E402
from prunekit.models import zoo  # noqa: E402
from prunekit.service.evaluation import EvalService  # noqa: E402
from prunekit.service.fanout import Backend, collect, run_jobs, sweep_jobs  # noqa: E402
from prunekit.service.jobs import EvalJob  # noqa: E402
from prunekit.service.store import ResultStore  # noqa: E402

IDLE_S = 10.0


def jobs_for(model: str, points: int) -> list[EvalJob]:
    template = EvalJob(model, PruneSpec("magnitude", "unstructured", allocation=Allocation("global")))
    return sweep_jobs(template, [round(0.95 * k / (points - 1), 4) for k in range(1, points)])


def in_process(jobs: list[EvalJob], spec: ModelSpec, fingerprint: str) -> dict:
    t = time.perf_counter()
    run_jobs(jobs, spec, fingerprint, Backend())
    return {"start_s": 0.0, "sweep_s": time.perf_counter() - t}


def on_service(jobs: list[EvalJob], spec: ModelSpec, fingerprint: str, workers: int, ray_cpus: int | None) -> dict:
    t = time.perf_counter()
    remote = None
    if ray_cpus:
        from prunekit.service.raypool import RayPool  # noqa: PLC0415 - only the Ray rows import Ray

        remote = RayPool("local", cpus=ray_cpus)
    store = ResultStore(Path(tempfile.mkdtemp(prefix="prunekit-scale-")) / "r.sqlite3")
    svc = EvalService(workers=workers, store=store, remote=remote)
    svc.register(jobs[0].model, spec, fingerprint)
    started = time.perf_counter()
    try:
        collect(svc, jobs, lambda done, total: None)
        out = {"start_s": started - t, "sweep_s": time.perf_counter() - started}
        if remote is not None:
            out.update(idle_cost())
        return out
    finally:
        svc.close()


def idle_cost() -> dict:
    """Resident memory and CPU of this machine's Ray processes over IDLE_S idle seconds."""
    import psutil  # noqa: PLC0415 - installed with ray

    procs = [p for p in psutil.process_iter(["cmdline"]) if _is_ray(p.info["cmdline"] or [])]
    before = {p.pid: sum(p.cpu_times()[:2]) for p in procs}
    time.sleep(IDLE_S)
    alive = [p for p in procs if p.is_running()]
    cpu = sum(sum(p.cpu_times()[:2]) - before[p.pid] for p in alive)
    rss = sum(p.memory_info().rss for p in alive)
    return {"idle_rss_mb": rss / 2**20, "idle_cpu_pct": 100 * cpu / IDLE_S, "ray_processes": len(alive)}


def _is_ray(cmdline: list[str]) -> bool:
    text = " ".join(cmdline)
    return text.startswith("ray::") or "/ray/" in text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fmnist-vgg")
    parser.add_argument("--points", type=int, default=24)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    torch.set_num_threads(1)  # the in-process row on one thread, like each worker
    lab = Lab(zoo.load(args.model))
    spec, fp = lab.loaded.spec, lab.fingerprint
    jobs = jobs_for(args.model, args.points)
    backends = {
        "in-process (the CLI without --workers/--ray)": lambda: in_process(jobs, spec, fp),
        "local-1 (1 worker process)": lambda: on_service(jobs, spec, fp, 1, None),
        "local-2 (2 worker processes)": lambda: on_service(jobs, spec, fp, 2, None),
        "Ray, 1 worker (private instance, 1 CPU)": lambda: on_service(jobs, spec, fp, 0, 1),
        "Ray, 2 workers (private instance, 2 CPUs)": lambda: on_service(jobs, spec, fp, 0, 2),
    }
    rows = []
    for name, run in backends.items():
        got = run()
        rows.append({"backend": name, "points": len(jobs), **got, "points_per_s": len(jobs) / got["sweep_s"]})
        print(f"{name}: {rows[-1]['points_per_s']:.2f} points/s", file=sys.stderr)
    header = f"machine: {machine_name()}; model {args.model}, {len(jobs)} points on the full split, 1 torch thread each"
    if args.json:
        print(json.dumps({"machine": header, "rows": rows}, indent=1))
        return 0
    print(header)
    print("\n| backend | start s | sweep s | points/s | Ray idle: RSS MB / CPU % / processes |")
    print("|---|---|---|---|---|")
    for r in rows:
        idle = f"{r['idle_rss_mb']:.0f} / {r['idle_cpu_pct']:.1f} / {r['ray_processes']}" if "idle_rss_mb" in r else ""
        print(f"| {r['backend']} | {r['start_s']:.1f} | {r['sweep_s']:.1f} | {r['points_per_s']:.2f} | {idle} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

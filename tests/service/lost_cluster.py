"""Run by tests/service/test_ray.py in its own process: join the Ray head on port ARGV[1], measure a point, kill
the head, ask for four more points, and print what the service said before and after, as JSON."""

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

from prunekit.core.evaluate import Accuracy
from prunekit.core.loaded import ModelSpec
from prunekit.core.spec import PruneSpec
from prunekit.service.evaluation import EvalService
from prunekit.service.jobs import EvalJob
from prunekit.service.raypool import RayPool


def head_pids(port: int) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if f":{port}" in text or f"port={port}" in text:
                pids.append(int(cmdline.parent.name))
    return pids


def main(port: int) -> dict:
    svc = EvalService(workers=0, remote=RayPool(f"127.0.0.1:{port}"))
    try:
        svc.register("fmnist-cnn", ModelSpec("prunekit.models.zoo:load", ("fmnist-cnn",)))
        assert svc.wait([EvalJob("fmnist-cnn", subset=300)], timeout=120)
        before = {"notice": svc.notice, "backend": svc.status().backend}
        for pid in head_pids(port):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        later = [EvalJob("fmnist-cnn", PruneSpec("magnitude", sparsity=s / 10), subset=300) for s in range(1, 5)]
        assert svc.wait(later, timeout=120)
        after = {"notice": svc.notice, "backend": svc.status().backend}
        return {"before": before, "after": after, "measured": [isinstance(svc.lookup(j), Accuracy) for j in later]}
    finally:
        svc.close()


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]))))

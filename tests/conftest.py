"""Test-wide settings: results go to a throw-away store, and the app's evaluation service runs one
worker without background curve filling (a test that checks the curve turns it on)."""

import os
import tempfile

os.environ["PRUNEKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="prunekit-test-cache-")
os.environ.setdefault("PRUNEKIT_WORKERS", "1")
os.environ.setdefault("PRUNEKIT_CURVE_FILL", "0")
# pytest-xdist runs one process per core: torch threads beyond a process's share make OpenMP kernels
# spin against each other (a float64 probe of EfficientNet-B7 went from 15 s to many minutes).
if "PYTEST_XDIST_WORKER" in os.environ:
    _share = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["PRUNEKIT_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(_share)

    import torch

    torch.set_num_threads(_share)

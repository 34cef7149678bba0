"""Test-wide settings: results go to a throw-away store, and the app's evaluation service runs one
worker without background curve filling (a test that checks the curve turns it on)."""

import os
import tempfile

os.environ["PRUNEKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="prunekit-test-cache-")
# timm weights come from a Hugging Face cache that the tests themselves write (tests.helpers.write_hf_weights),
# never from the machine's own cache nor the network; set before any worker process starts, so workers see it too.
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="prunekit-test-hf-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("PRUNEKIT_WORKERS", "1")
os.environ.setdefault("PRUNEKIT_CURVE_FILL", "0")
# The app's workers run niced below the server (pages stay responsive). Here the "server" is an AppTest that
# sleeps while it waits for them, and the other xdist process runs at full priority: a niced worker got a tenth
# of a core and a 20 s recovery took 90 s. Same priority in tests; what they check does not depend on it.
os.environ.setdefault("PRUNEKIT_WORKER_NICE", "0")
# pytest-xdist runs one process per core: torch threads beyond a process's share make OpenMP kernels
# spin against each other (a float64 probe of EfficientNet-B7 went from 15 s to many minutes).
if "PYTEST_XDIST_WORKER" in os.environ:
    _share = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["PRUNEKIT_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(_share)

    import torch

    torch.set_num_threads(_share)


import pytest  # noqa: E402  (after the thread settings above, which must precede torch's first import)


@pytest.fixture
def services(tmp_path):
    """Build evaluation services that are closed when the test ends, whatever happens in it.

    ``services(workers, store="r.sqlite3", tiny=True, **options)``: ``store`` names a result store file in the
    test's folder (the same name twice is the same store, as after a restart) or is a store; ``tiny`` registers the seeded
    tiny residual model as "tiny"; other options go to ``EvalService`` (``spawn``, ``remote``).
    """
    from prunekit.service.evaluation import EvalService
    from prunekit.service.store import ResultStore
    from tests.helpers import TINY_SPEC

    built = []

    def build(workers: int = 1, *, store=None, tiny: bool = False, **options):
        if store is not None:
            options["store"] = ResultStore(tmp_path / store) if isinstance(store, str) else store
        options.setdefault("nice", int(os.environ["PRUNEKIT_WORKER_NICE"]))
        service = EvalService(workers=workers, **options)
        built.append(service)
        if tiny:
            service.register("tiny", TINY_SPEC, fingerprint="tiny-seed0")
        return service

    yield build
    for service in reversed(built):
        service.close()


def pytest_addoption(parser):
    parser.addoption(
        "--wide", action="store_true", help="also every model of the zoo, not one per family (~3 min more)"
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--wide"):
        return
    skip = pytest.mark.skip(reason="one model per family runs by default; every model with ./dev test --wide")
    for item in items:
        if "wide" in item.keywords:
            item.add_marker(skip)


def pytest_collection_finish(session):
    """On an xdist worker under ``--dist loadgroup``, every ``xdist_group`` test must carry its group in its id:
    otherwise the groups (one Ray instance, one browser server, the zoo's giants one at a time) silently split
    across workers, as with pytest 9.2.0 (pytest-xdist #1386)."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    split = [i.nodeid for i in session.items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
    if split:
        raise pytest.UsageError(f"pytest-xdist's loadgroup did not group {len(split)} tests, e.g. {split[0]}")

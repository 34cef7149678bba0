"""The evaluation service's workers: what one is, how a local one starts, and which jobs may leave the machine."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import sys
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from prunekit.service.jobs import CollapseJob, EvalJob, PathJob, PredictJob
from prunekit.service.runner import worker_main


@dataclass
class Worker:
    """A worker as the scheduler holds it: a local process or a remote pool's slot, and the job in hand."""

    process: mp.Process
    conn: object
    loaded: set[str] = field(default_factory=set)
    job: EvalJob | None = None
    background: bool = False  # the job in hand is background work
    preempting: bool = False  # asked to hand its job back for live work
    remote: bool = False  # a slot of a remote pool (Ray): accuracy jobs only
    chunks_left: int | None = None  # chunks of a full pass it was sent to score (None: not known yet)


def runs_remotely(job: EvalJob) -> bool:
    """Accuracy and path-test jobs may run on a remote pool; latency (bound to this machine) and recovery
    (stoppable, with progress) stay on local workers."""
    return type(job) in (EvalJob, PathJob, CollapseJob, PredictJob)


class RemotePool(Protocol):
    """Slots that look like worker processes to the scheduler (see ``prunekit.service.raypool.RayPool``)."""

    address: str

    def slots(self) -> int: ...

    def describe(self) -> str: ...

    on_lost: Callable[[str], None]  # set by the service: called once when the pool is lost

    def spawn(self) -> tuple[object, object]: ...

    def close(self) -> None: ...


def spawn_local(ctx, threads: int, nice: int) -> Worker:
    """A local worker process (``ctx``: a spawn context) running ``worker_main`` with ``threads`` torch threads."""
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=worker_main, args=(child, threads, nice), daemon=True, name="prunekit-worker")
    with _bare_main():
        proc.start()
    child.close()
    return Worker(proc, parent)


@contextlib.contextmanager
def _bare_main() -> Iterator[None]:
    """Start a spawned worker without re-running ``__main__``: workers need nothing from it, and while
    Streamlit runs a page, ``__main__`` is that page script (a worker restarted then would run the page)."""
    with _MAIN_LOCK:  # two services spawning at once must not restore each other's stand-in
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            sys.modules["__main__"] = main


_MAIN_LOCK = threading.Lock()

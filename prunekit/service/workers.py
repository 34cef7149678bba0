"""The evaluation service's workers: what one is, how a local one starts, and the pool the scheduler holds
(local processes and a remote pool's slots; restarts after a crash, falls back to local ones)."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import sys
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from prunekit.service.jobs import EvalJob
from prunekit.service.policy import Slot
from prunekit.service.worker import worker_main

log = logging.getLogger(__name__)
# What a worker imports: torch and the engine (1.7 s of CPU), and what its first ONNX Runtime engine imports
# (0.7 s; the export itself then takes 0.04 s on fmnist-cnn). Imports only: the fork server runs no torch operation.
PRELOAD = ["prunekit.service.worker", "torch.onnx", "onnx", "onnxruntime"]
MAX_DEATHS_IN_A_ROW = 6  # workers dying with no job finished in between: they cannot start, so stop trying


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

    def slot(self) -> Slot:
        """What the scheduling policy reads of this worker."""
        alive = self.process.is_alive()
        return Slot(self.job, self.remote, alive, self.background, self.preempting, self.chunks_left)


class RemotePool(Protocol):
    """Slots that look like worker processes to the scheduler (see ``prunekit.service.raypool.RayPool``)."""

    address: str

    def slots(self) -> int: ...

    def describe(self) -> str: ...

    on_lost: Callable[[str], None]  # set by the service: called once when the pool is lost

    def spawn(self) -> tuple[object, object]: ...

    def close(self) -> None: ...


class WorkerPool:
    """The workers the scheduler holds: ``local`` processes (started by ``spawn``, default
    :func:`spawn_local`) and one per slot of a ``remote`` pool. Not thread-safe: the scheduler calls it
    with its lock held."""

    def __init__(self, local: int, spawn: Callable[[], Worker], remote: RemotePool | None = None) -> None:
        self._spawn, self.remote = spawn, remote
        self.workers = [spawn() for _ in range(local)]
        self.workers += [self._spawn_remote() for _ in range(remote.slots() if remote else 0)]
        self.restarts = 0
        self._deaths_in_a_row = 0

    def __iter__(self) -> Iterator[Worker]:
        return iter(self.workers)

    def __len__(self) -> int:
        return len(self.workers)

    def waitables(self) -> list:
        """Every worker's connection and process sentinel, for ``multiprocessing.connection.wait``."""
        return [w.conn for w in self.workers] + [w.process.sentinel for w in self.workers]

    def running(self, job: EvalJob) -> Worker | None:
        return next((w for w in self.workers if w.job == job), None)

    def finished_one(self) -> None:
        """A job came back: the workers can start, whatever died before."""
        self._deaths_in_a_row = 0

    def replace(self, w: Worker) -> str | None:
        """``w`` died: start another in its place; returns why to give up instead (they keep dying at start)."""
        code = w.process.exitcode
        self._deaths_in_a_row += 1
        if self._deaths_in_a_row > MAX_DEATHS_IN_A_ROW:
            return f"evaluation workers keep dying at start (last exit code {code})"
        log.warning("evaluation worker %s died (exit code %s); restarting it", w.process.pid, code)
        self.restarts += 1
        self.workers[self.workers.index(w)] = self._spawn_remote() if w.remote else self._spawn()
        return None

    def drop_remote(self) -> tuple[RemotePool | None, list[Worker]]:
        """The remote pool is lost: its slots leave the pool and local processes fill it up to one per core.
        Returns the pool (to close) and the slots dropped (their jobs go back to the queue)."""
        pool, self.remote = self.remote, None
        if pool is None:
            return None, []
        slots = [w for w in self.workers if w.remote]
        for w in slots:
            w.conn.close()
        self.workers = [w for w in self.workers if not w.remote]
        self.workers += [self._spawn() for _ in range(max(1, os.cpu_count() or 1) - len(self.workers))]
        return pool, slots

    def describe(self) -> str:
        return self.remote.describe() if self.remote else "local worker processes"

    def close(self) -> None:
        for w in self.workers:
            w.conn.close()
            w.process.kill()
            w.process.join(5)
        if self.remote is not None:
            self.remote.close()

    def _spawn_remote(self) -> Worker:
        proc, conn = self.remote.spawn()
        return Worker(proc, conn, remote=True)


def worker_context():
    """How local workers start: forked by a fork server that imported :data:`PRELOAD` once, so that a worker (a
    restart after a crash, every worker of a new service) starts without importing torch again; spawned where
    the platform has no fork server. Never a plain fork: it would copy the server's threads and torch's pool
    (the fork server is a fresh process that runs no torch operation)."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def spawn_local(ctx, threads: int, nice: int) -> Worker:
    """A local worker process (``ctx``: :func:`worker_context`) running ``worker_main`` with ``threads`` torch
    threads, in this process's environment as it is now (a forked worker would otherwise have the fork
    server's, as it was when the fork server started)."""
    parent, child = ctx.Pipe()
    args = (child, threads, nice, dict(os.environ))
    proc = ctx.Process(target=worker_main, args=args, daemon=True, name="prunekit-worker")
    with _bare_main():
        proc.start()
    child.close()
    return Worker(proc, parent)


@contextlib.contextmanager
def _bare_main() -> Iterator[None]:
    """Start a worker without re-running ``__main__``: workers need nothing from it, and while
    Streamlit runs a page, ``__main__`` is that page script (a worker restarted then would run the page)."""
    with _MAIN_LOCK:  # two services spawning at once must not restore each other's stand-in
        main = sys.modules.get("__main__")
        sys.modules["__main__"] = types.ModuleType("__main__")
        try:
            yield
        finally:
            sys.modules["__main__"] = main


_MAIN_LOCK = threading.Lock()

"""The evaluation service: what pages, the CLI and scripts ask for, and what they read back.

:class:`EvalService` is a front over four parts, each a module of its own: the queue (priorities, latest-wins,
dedup; ``queue``), the results (memory, the disk store, curve snapshots; ``cache``), the workers (local
processes and Ray slots; ``workers``, ``raypool``) and the scheduler thread between them (``scheduler``, which
follows ``policy``). Callers never block: they ask and read what is there.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prunekit.core.evaluate import Accuracy
from prunekit.core.loaded import ModelSpec
from prunekit.deploy.recover import Recovery
from prunekit.errors import ClusterUnavailableError, InvalidArgumentError
from prunekit.service.cache import ResultCache, code_version
from prunekit.service.codec import Outcome
from prunekit.service.jobs import EvalJob, JobError
from prunekit.service.queue import CURVE, LIVE_FULL, curve_grid
from prunekit.service.scheduler import Scheduler
from prunekit.service.store import ResultStore
from prunekit.service.watch import is_noting, note
from prunekit.service.workers import RemotePool, Worker, WorkerPool, spawn_local, worker_context

__all__ = ["RAY_ENV", "EvalService", "ServiceStatus", "open_service"]
RAY_ENV = "PRUNEKIT_RAY_ADDRESS"  # the app's Ray cluster: 'host:port', 'auto' or 'local'


def open_service(
    ray: str | None, workers: int | None, store: ResultStore | None = None, fall_back: bool = False, nice: int = 10
) -> EvalService:
    """An evaluation service whose accuracy jobs run on the Ray cluster at ``ray`` (Ray is imported only
    then) beside ``workers`` local processes (None: one per core). A cluster that cannot be joined raises
    ClusterUnavailableError, or with ``fall_back`` gives a local service whose ``notice`` says why. ``nice``: the
    local workers' CPU priority below the server's."""
    remote, notice = None, None
    if ray:
        from prunekit.service.raypool import RayPool  # noqa: PLC0415 - nothing of Ray is loaded without an address

        try:
            remote = RayPool(ray)
        except ClusterUnavailableError as exc:
            if not fall_back:
                raise
            notice, workers = f"{exc}; evaluations run on local worker processes instead", None
    svc = EvalService(workers=workers, store=store, remote=remote, nice=nice)
    svc.notice = notice
    return svc


@dataclass(frozen=True)
class ServiceStatus:
    workers: int
    alive: int
    busy: int
    queued_live: int
    queued_background: int
    done: int
    restarts: int
    backend: str = "local worker processes"
    preempted: int = 0  # background passes handed back for live work (and resumed later)


class EvalService:
    """Jobs evaluated by ``workers`` local processes of ``threads`` torch threads each, and by the slots
    of a ``remote`` pool when one is given (then local workers only take what must stay local, and
    ``workers`` may be 0). If the remote pool is lost, local workers take over and ``notice`` says why.
    ``spawn`` starts one local worker (default: a process at ``nice``); tests give stand-ins."""

    def __init__(
        self,
        workers: int | None = None,
        threads: int = 1,
        store: ResultStore | None = None,
        nice: int = 10,
        remote: RemotePool | None = None,
        spawn: Callable[[], Worker] | None = None,
    ) -> None:
        workers = max(1, os.cpu_count() or 1) if workers is None else workers
        if workers < (0 if remote else 1) or threads <= 0:
            raise InvalidArgumentError(f"workers and threads must be positive, got {workers} and {threads}")
        self.threads, self.store, self.nice = threads, store, nice
        ctx = worker_context()
        self._results = ResultCache(store, code_version())  # its own lock
        self._filled: set[tuple] = set()  # curves already queued: a rerun asking again costs one set lookup
        pool = WorkerPool(workers, spawn or (lambda: spawn_local(ctx, threads, nice)), remote)
        self._sched = Scheduler(pool, self._results, ctx)
        self._notice: str | None = None
        atexit.register(self.close)

    @property
    def remote(self) -> RemotePool | None:
        return self._sched.pool.remote

    @property
    def notice(self) -> str | None:
        """Why the service runs otherwise than asked (the remote pool was lost), or None."""
        return self._sched.notice or self._notice

    @notice.setter
    def notice(self, value: str | None) -> None:
        self._notice = value

    @property
    def broken(self) -> str | None:
        """Why the workers cannot run, once they cannot: every job then reads it as its error."""
        return self._sched.broken

    def register(self, key: str, spec: ModelSpec, fingerprint: Callable[[], str] | str | None = None) -> None:
        """Say how workers load model ``key``; ``fingerprint`` (weights + eval set) enables the disk store.
        Every rerun registers its model again: then it is one dict read, without the lock."""
        if self._sched.specs.get(key) == spec and (fingerprint is None or self._results.registered(key)):
            return
        with self._sched.lock:
            self._sched.specs[key] = spec
        if fingerprint is not None:
            self._results.register(key, fingerprint)

    def lookup(self, job: EvalJob) -> Outcome | None:
        """The outcome of ``job`` if known (memory, then disk once); never computes."""
        job = job.canonical()
        # One dict read without the scheduler's lock (30 sessions polling would queue on it): a stale
        # answer costs at most one store read, or one poll's wait.
        outcome = self._results.lookup(job, read_disk=job not in self._sched.queue)
        if outcome is None:
            note(job)  # a page part drawn within ``noting`` listens for it
        return outcome

    def watch(
        self, jobs: Iterable[EvalJob], callback: Callable[[EvalJob, object], None], progress: bool = False
    ) -> Callable[[], None]:
        """Call ``callback(job, outcome)`` (on the scheduler's thread: hand over, never block) for each outcome
        of ``jobs`` that lands from now on, and with ``progress`` ``callback(job, Stirred(...))`` as one reports
        progress or is dropped; returns the function that stops it. What is known already is read with
        :meth:`lookup`, after watching, so that nothing falls between the two."""
        return self._results.watchers.add([job.canonical() for job in jobs], callback, progress)

    def request(self, jobs: Iterable[tuple[EvalJob, int]], session: str = "") -> dict[EvalJob, Outcome | None]:
        """Ask for ``(job, priority)`` pairs; returns what is known now (None: queued or running).

        For a named ``session`` this call replaces its previous request: jobs it no longer asks for
        are demoted to background (computed when the workers are idle), never dropped while running.
        """
        asked = [(job.canonical(), prio) for job, prio in jobs]
        known = {job: self.lookup(job) for job, _ in asked}
        if self.broken:
            return {job: value or JobError(self.broken) for job, value in known.items()}
        with self._sched.lock:
            for job, prio in asked:
                if known[job] is None:
                    self._sched.queue.want(job, session, prio)
            if session:
                self._sched.queue.supersede(session, {job for job, _ in asked if known[job] is None})
        self._sched.wake()
        return known

    def fill_curve(self, template: EvalJob, scopes: Iterable[str], session: str = "") -> None:
        """Queue the full-split accuracy of ``template`` for each scope on the slider's grid, coarse to fine
        (once per configuration: every later call, one per rerun of every session, is a set lookup)."""
        key = (dataclasses.replace(template.at(0.0), subset=None, shard=None), tuple(scopes), session)
        with self._sched.lock:
            if key in self._filled:
                return
            self._filled.add(key)
        jobs = [
            (dataclasses.replace(template.with_scope(scope).at(s), subset=None), CURVE + level)
            for level, s in curve_grid()
            for scope in scopes
        ]
        missing = [(job.canonical(), prio) for job, prio in jobs if self.lookup(job) is None]
        with self._sched.lock:
            for job, prio in missing:
                self._sched.queue.want(job, session, prio, keep=True)
        self._sched.wake()

    def curve(self, template: EvalJob) -> dict[float, Accuracy]:
        """Full-split results known so far on the slider's grid for ``template``'s configuration and scope
        (a snapshot replaced as results land: a rerun or poll of any session is a dict read)."""
        grid = [s for _, s in curve_grid()]
        known = self._results.curve(template, grid)
        if is_noting():  # a page part drawing this curve listens for the points still to land
            base = dataclasses.replace(template, subset=None, shard=None)
            for s in grid:
                if s not in known:
                    note(base.at(s).canonical())
        return known

    def progress(self, job: EvalJob) -> Recovery | None:
        """The latest progress a running recovery reported, or None."""
        with self._sched.lock:
            return self._sched.progress.get(job.canonical())

    def stop(self, job: EvalJob) -> None:
        """Stop ``job``: a running recovery ends after its current batch (its partial result is kept in
        memory, never stored); a queued job is dropped."""
        self._sched.stop(job.canonical())

    def drop_model(self, key: str) -> None:
        """The server let model ``key`` go (its memory budget): the workers forget it too, and its queued jobs
        go; results already measured stay in the store. Registering it again brings it back."""
        self._sched.drop_model(key)

    def forget(self, job: EvalJob) -> None:
        """Drop ``job``'s in-memory outcome (a stopped run or an error), so that asking again reruns it."""
        self._results.forget(job.canonical())

    def status(self) -> ServiceStatus:
        sched = self._sched
        with sched.lock:
            live, background = sched.queue.queued()
            return ServiceStatus(
                workers=len(sched.pool),
                alive=sum(w.process.is_alive() for w in sched.pool),
                busy=sum(w.job is not None for w in sched.pool),
                queued_live=live,
                queued_background=background,
                done=len(self._results),
                restarts=sched.pool.restarts,
                preempted=sched.preemptions,
                backend=sched.pool.describe(),
            )

    def wait(self, jobs: Iterable[EvalJob], timeout: float) -> bool:
        """Block until ``jobs`` are done (for start-up warming and scripts, never in a page); True if all are."""
        jobs = list(jobs)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(v is not None for v in self.request([(j, LIVE_FULL) for j in jobs]).values()):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        """Stop the scheduler and the workers (also run at interpreter exit); idempotent."""
        if getattr(self, "_shut", False):
            return
        self._shut = True
        self._sched.close()
        self._results.close()

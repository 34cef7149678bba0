"""The evaluation service: accuracy jobs run in worker processes, fed by one scheduler thread.

:class:`EvalService` is a facade over three parts, each a module of its own: the queue (priorities,
latest-wins, dedup; ``prunekit.service.queue``), the results (memory, the disk store, curve snapshots;
``prunekit.service.cache``) and the workers (local processes here, Ray slots in ``raypool``). The scheduler
thread gives idle workers the best queued jobs, preempts background passes for live work, and takes the
answers. A worker that dies is restarted and its job retried once; a second death is reported as the
job's error. Callers never block: they ask and read what is there.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import logging
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

from prunekit.core.connectivity import Connectivity
from prunekit.core.evaluate import Accuracy
from prunekit.core.loaded import ModelSpec
from prunekit.deploy.latency import Latency
from prunekit.deploy.recover import Recovery
from prunekit.errors import ClusterUnavailableError, InvalidArgumentError
from prunekit.service.cache import ResultCache
from prunekit.service.chunks import Resume
from prunekit.service.jobs import ESTIMATE_IMAGES, Collapse, EvalJob, Predictions
from prunekit.service.protocol import Order, Status
from prunekit.service.queue import CURVE, LIVE_ESTIMATE, LIVE_FULL, STALE, Entry, JobQueue
from prunekit.service.store import ResultStore
from prunekit.service.workers import RemotePool, Worker, runs_remotely, spawn_local

log = logging.getLogger(__name__)
__all__ = ["CURVE", "LIVE_ESTIMATE", "LIVE_FULL", "STALE", "EvalService", "JobError", "Outcome", "open_service"]
MAX_ATTEMPTS = 2
RAY_ENV = "PRUNEKIT_RAY_ADDRESS"  # the app's Ray cluster: 'host:port', 'auto' or 'local'
MAX_DEATHS_IN_A_ROW = 6  # workers dying with no job finished in between: they cannot start, so stop trying
CURVE_GRIDS = (0.1, 0.05, 0.01)  # coarse to fine


def open_service(
    ray: str | None, workers: int | None, store: ResultStore | None = None, fall_back: bool = False
) -> EvalService:
    """An evaluation service whose accuracy jobs run on the Ray cluster at ``ray`` (Ray is imported only
    then) beside ``workers`` local processes (None: one per core). A cluster that cannot be joined raises
    ClusterUnavailableError, or with ``fall_back`` gives a local service whose ``notice`` says why."""
    remote, notice = None, None
    if ray:
        from prunekit.service.raypool import RayPool  # noqa: PLC0415 - nothing of Ray is loaded without an address

        try:
            remote = RayPool(ray)
        except ClusterUnavailableError as exc:
            if not fall_back:
                raise
            notice, workers = f"{exc}; evaluations run on local worker processes instead", None
    svc = EvalService(workers=workers, store=store, remote=remote)
    svc.notice = notice
    return svc


def code_version(root: Path | None = None) -> str:
    """A digest of every Python file of the package (``root``, default prunekit/) except the app's:
    editing any of them invalidates stored results. The whole package, not a hand-kept list, so that
    no file a result depends on (how data is read, calibration, the zoo) can be forgotten; the app only
    shows results, so restyling a page keeps them."""
    root = root or Path(__file__).parent.parent
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*.py") if p.relative_to(root).parts[0] != "app"):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class JobError:
    """A job that could not be measured; ``message`` is shown on the page."""

    message: str


Outcome = Accuracy | Latency | Recovery | Connectivity | Collapse | Predictions | JobError


def curve_grid() -> list[tuple[int, float]]:
    """(level, sparsity) for the slider grid, coarse to fine: every 0.1, then 0.05, then 0.01."""
    seen, out = set(), []
    for level, step in enumerate(CURVE_GRIDS):
        for k in range(round(1 / step)):
            s = round(k * step, 2)
            if s not in seen and s < 1.0:
                seen.add(s)
                out.append((level, s))
    return out


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
    ``workers`` may be 0). If the remote pool is lost, local workers take over and ``notice`` says why."""

    def __init__(
        self,
        workers: int | None = None,
        threads: int = 1,
        store: ResultStore | None = None,
        nice: int = 10,
        remote: RemotePool | None = None,
    ) -> None:
        workers = max(1, os.cpu_count() or 1) if workers is None else workers
        if workers < (0 if remote else 1) or threads <= 0:
            raise InvalidArgumentError(f"workers and threads must be positive, got {workers} and {threads}")
        self.threads, self.store, self.nice, self.remote = threads, store, nice, remote
        self.notice: str | None = None  # e.g. the remote pool was lost and local workers took over
        self._ctx = mp.get_context("spawn")  # fork would copy the server's threads and torch's thread pool
        self._lock = threading.Lock()
        self._specs: dict[str, ModelSpec] = {}
        self._queue = JobQueue()  # guarded by self._lock
        self._results = ResultCache(store, code_version())  # its own lock
        self._filled: set[tuple] = set()  # curves already queued: a rerun asking again costs one set lookup
        self._restarts = 0
        self._preemptions = 0
        self._splitting: set[EvalJob] = set()  # live passes asked to hand back so that idle workers share them
        self._deaths_in_a_row = 0
        self._progress: dict[EvalJob, Recovery] = {}  # the latest progress of running recoveries
        self.broken: str | None = None  # why the workers cannot run, once they cannot
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        self._wake_lock, self._wake_pending = threading.Lock(), False
        self._workers = [self._spawn() for _ in range(workers)]
        self._workers += [self._spawn_remote() for _ in range(remote.slots() if remote else 0)]
        if remote is not None:
            remote.on_lost = self._fall_back
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="prunekit-scheduler", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # --- public, non-blocking ------------------------------------------------------------------

    def register(self, key: str, spec: ModelSpec, fingerprint: Callable[[], str] | str | None = None) -> None:
        """Say how workers load model ``key``; ``fingerprint`` (weights + eval set) enables the disk store.
        Every rerun registers its model again: then it is one dict read, without the lock."""
        if self._specs.get(key) == spec and (fingerprint is None or self._results.registered(key)):
            return
        with self._lock:
            self._specs[key] = spec
        if fingerprint is not None:
            self._results.register(key, fingerprint)

    def lookup(self, job: EvalJob) -> Outcome | None:
        """The outcome of ``job`` if known (memory, then disk once); never computes."""
        job = job.canonical()
        # One dict read without the scheduler's lock (30 sessions polling would queue on it): a stale
        # answer costs at most one store read, or one poll's wait.
        return self._results.lookup(job, read_disk=job not in self._queue)

    def request(self, jobs: Iterable[tuple[EvalJob, int]], session: str = "") -> dict[EvalJob, Outcome | None]:
        """Ask for ``(job, priority)`` pairs; returns what is known now (None: queued or running).

        For a named ``session`` this call replaces its previous request: jobs it no longer asks for
        are demoted to background (computed when the workers are idle), never dropped while running.
        """
        asked = [(job.canonical(), prio) for job, prio in jobs]
        known = {job: self.lookup(job) for job, _ in asked}
        if self.broken:
            return {job: value or JobError(self.broken) for job, value in known.items()}
        with self._lock:
            for job, prio in asked:
                if known[job] is None:
                    self._queue.want(job, session, prio)
            if session:
                self._queue.supersede(session, {job for job, _ in asked if known[job] is None})
        self._wake()
        return known

    def fill_curve(self, template: EvalJob, scopes: Iterable[str], session: str = "") -> None:
        """Queue the full-split accuracy of ``template`` for each scope on the slider's grid, coarse to fine
        (once per configuration: every later call, one per rerun of every session, is a set lookup)."""
        key = (dataclasses.replace(template.at(0.0), subset=None, shard=None), tuple(scopes), session)
        with self._lock:
            if key in self._filled:
                return
            self._filled.add(key)
        jobs = [
            (dataclasses.replace(template.with_scope(scope).at(s), subset=None), CURVE + level)
            for level, s in curve_grid()
            for scope in scopes
        ]
        missing = [(job.canonical(), prio) for job, prio in jobs if self.lookup(job) is None]
        with self._lock:
            for job, prio in missing:
                self._queue.want(job, session, prio, keep=True)
        self._wake()

    def curve(self, template: EvalJob) -> dict[float, Accuracy]:
        """Full-split results known so far on the slider's grid for ``template``'s configuration and scope
        (a snapshot replaced as results land: a rerun or poll of any session is a dict read)."""
        return self._results.curve(template, [s for _, s in curve_grid()])

    def progress(self, job: EvalJob) -> Recovery | None:
        """The latest progress a running recovery reported, or None."""
        with self._lock:
            return self._progress.get(job.canonical())

    def stop(self, job: EvalJob) -> None:
        """Stop ``job``: a running recovery ends after its current batch (its partial result is kept in
        memory, never stored); a queued job is dropped."""
        job = job.canonical()
        with self._lock:
            worker = next((w for w in self._workers if w.job == job), None)
            if worker is None:
                self._queue.remove(job)
                return
        with contextlib.suppress(OSError, ValueError):  # a dying worker: its sentinel reports it
            worker.conn.send((Order.STOP, job))

    def forget(self, job: EvalJob) -> None:
        """Drop ``job``'s in-memory outcome (a stopped run or an error), so that asking again reruns it."""
        self._results.forget(job.canonical())

    def status(self) -> ServiceStatus:
        with self._lock:
            live, background = self._queue.queued()
            return ServiceStatus(
                workers=len(self._workers),
                alive=sum(w.process.is_alive() for w in self._workers),
                busy=sum(w.job is not None for w in self._workers),
                queued_live=live,
                queued_background=background,
                done=len(self._results),
                restarts=self._restarts,
                preempted=self._preemptions,
                backend=self.remote.describe() if self.remote else "local worker processes",
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
        self._shut = self._closed = True
        self._wake()
        self._thread.join(5)
        for w in self._workers:
            w.conn.close()
            w.process.kill()
            w.process.join(5)
        if self.remote is not None:
            self.remote.close()
        self._results.close()

    def _finish(self, job: EvalJob, outcome: Outcome) -> None:
        """``job`` is done (call with the lock held; the store is written outside it, see ``_store``)."""
        self._queue.remove(job)
        self._progress.pop(job, None)
        self._results.put(job, outcome)

    def _store(self, job: EvalJob, outcome: Outcome) -> None:
        if not isinstance(outcome, JobError):
            self._results.persist(job, outcome)

    # --- the scheduler thread ------------------------------------------------------------------

    def _spawn(self) -> Worker:
        return spawn_local(self._ctx, self.threads, self.nice)

    def _spawn_remote(self) -> Worker:
        proc, conn = self.remote.spawn()
        return Worker(proc, conn, remote=True)

    def _accepts(self, w: Worker, job: EvalJob) -> bool:
        return runs_remotely(job) if w.remote else self.remote is None or not runs_remotely(job)

    def _wake(self) -> None:
        if self._wake_pending:  # the scheduler has not read the last wake yet: it will see this too
            return
        self._wake_pending = True
        try:
            with self._wake_lock:
                self._wake_w.send_bytes(b"!")
        except OSError:
            pass

    def _loop(self) -> None:
        try:
            while not self._closed:
                self._dispatch()
                waitables = [self._wake_r] + [w.conn for w in self._workers]
                for ready in wait(waitables + [w.process.sentinel for w in self._workers], timeout=1.0):
                    self._handle(ready)
        except Exception as exc:  # a bug here would leave every page waiting: say so on each of them instead
            log.exception("the evaluation scheduler failed")
            with self._lock:
                self._give_up(f"the evaluation scheduler failed ({type(exc).__name__}: {exc})")

    def _handle(self, ready) -> None:
        if ready is self._wake_r:
            self._wake_pending = False  # before reading: a wake after this point writes again
            while self._wake_r.poll():
                self._wake_r.recv_bytes()
            return
        for w in list(self._workers):
            if ready is w.conn:
                self._receive(w)
                return
            if ready == w.process.sentinel and not w.process.is_alive():
                self._crashed(w)
                return

    def _receive(self, w: Worker) -> None:
        try:
            status, job, payload = w.conn.recv()
        except (EOFError, OSError):
            self._crashed(w)
            return
        if status == Status.PROGRESS:
            with self._lock:
                self._progress[job] = payload
            return
        if status == "lost":
            self._fall_back(payload)
            return
        if status == Status.PREEMPTED:
            self._handed_back(w, job, payload)
            return
        if status == Status.PART:
            self._handed_back(w, job, payload, preempted=False)
            return
        if status == Status.PARTIAL:  # the estimate a full pass scored first
            with self._lock:
                new = self._results.lookup(job, read_disk=False) is None
                if new:
                    self._finish(job, payload)
            if new:
                self._store(job, payload)
            return
        outcome = payload if status == Status.OK else JobError(payload)
        with self._lock:
            self._release(w, job)  # done before it saw a preemption, if it was asked to hand back
            if status != Status.OK:
                w.loaded.discard(job.model)  # a failed load is retried with the spec next time
            self._finish(job, outcome)
        self._store(job, outcome)

    def _handed_back(self, w: Worker, job: EvalJob, resume: Resume, preempted: bool = True) -> None:
        """A pass handed back (``preempted``: for live work, or to be shared) or a share of one scored: its
        counts join the entry's, which goes back in the queue to resume from them, or is complete."""
        with self._lock:
            self._preemptions += preempted and job not in self._splitting  # sharing a pass preempts nothing
            entry = self._release(w, job)
            if entry is None:
                return
            entry.resume = entry.resume.merged(resume) if entry.resume else resume
            figure = entry.resume.accuracy()
            if figure is not None:
                self._finish(job, figure)
        if figure is not None:
            self._store(job, figure)

    def _release(self, w: Worker, job: EvalJob) -> Entry | None:
        """``w`` is done with ``job`` (call with the lock held); returns the job's entry if still queued."""
        w.job, w.preempting, w.chunks_left, self._deaths_in_a_row = None, False, None, 0
        self._splitting.discard(job)
        entry = self._queue.get(job)
        if entry is not None:
            entry.in_flight = max(0, entry.in_flight - 1)
        return entry

    def _crashed(self, w: Worker) -> None:
        w.process.join(1)
        code = w.process.exitcode
        w.conn.close()
        with self._lock:
            if w not in self._workers:
                return  # a remote slot already replaced by the fall-back
            self._deaths_in_a_row += 1
            if self._closed or self._deaths_in_a_row > MAX_DEATHS_IN_A_ROW:
                self._give_up(f"evaluation workers keep dying at start (last exit code {code})")
                return
            log.warning("evaluation worker %s died (exit code %s); restarting it", w.process.pid, code)
            self._restarts += 1
            i = self._workers.index(w)
            job, self._workers[i] = w.job, self._spawn_remote() if w.remote else self._spawn()
            entry = self._queue.get(job)
            self._splitting.discard(job)
            if entry is not None:
                entry.in_flight = max(0, entry.in_flight - 1)
                entry.attempts += 1
                if entry.attempts >= MAX_ATTEMPTS:
                    self._finish(job, JobError(f"the evaluation worker died {entry.attempts} times (exit code {code})"))

    def _fall_back(self, why: str) -> None:
        """The remote pool is gone: requeue its jobs and run everything on local workers from now on."""
        with self._lock:
            pool, self.remote = self.remote, None
            if pool is None:
                return
            slots = [w for w in self._workers if w.remote]
            for w in slots:
                entry = self._queue.get(w.job)
                if entry is not None:
                    entry.in_flight = max(0, entry.in_flight - 1)
                w.conn.close()
            self._workers = [w for w in self._workers if not w.remote]
            missing = max(1, os.cpu_count() or 1) - len(self._workers)
            self._workers += [self._spawn() for _ in range(missing)]
            self.notice = f"{why}; evaluations now run on {len(self._workers)} local worker processes"
            log.warning("%s", self.notice)
        self._wake()
        threading.Thread(target=pool.close, name="prunekit-ray-close", daemon=True).start()

    def _give_up(self, why: str) -> None:
        self.broken = self.broken or why
        for job in self._queue.jobs():
            self._finish(job, JobError(why))
        self._closed = True

    def _dispatch(self) -> None:
        """Give idle workers the best queued jobs; background work never takes the last idle worker,
        so a live request finds one free and a core stays with the web server. Idle workers with nothing
        live to do share a live full pass (see ``_share``) before they take background work."""
        with self._lock:
            for w in self._workers:
                if not self._idle(w):
                    continue
                entry = self._queue.best(lambda job, w=w: self._accepts(w, job) and not self._covered(job))
                if entry is None or (entry.background and (self._share() or not self._background_slot())):
                    continue
                self._start(w, self._superset(w, entry))
            self._share()
            self._preempt()

    def _idle(self, w: Worker) -> bool:
        return w.job is None and w.process.is_alive()

    def _start(self, w: Worker, entry: Entry) -> None:
        """Send ``entry`` to ``w``; a live full pass whose chunks are known goes to every idle local worker
        that takes it, each scoring an even share of the chunks left (their counts add up in ``_handed_back``)."""
        resume = entry.resume
        shareable = not (w.remote or entry.background or resume is None or not resume.chunks)
        crew = [w] + [
            v for v in self._workers if shareable and v is not w and self._idle(v) and self._shares(v, entry.job)
        ]
        if len(crew) == 1:
            self._send(w, entry, resume)
            return
        for v, part in zip(crew, resume.share(len(crew)), strict=False):
            self._send(v, entry, part)

    def _shares(self, w: Worker, job: EvalJob) -> bool:
        return not w.remote and self._accepts(w, job)

    def _share(self) -> bool:
        """An idle local worker with nothing live to do, and a live full pass on another that has chunks to
        go: ask that pass to hand back after its current chunk (the estimate's chunk always comes first), so
        that ``_start`` shares what is left between the two. One pass at a time; a share of one chunk stays.
        True while a pass is asked to hand back: the idle workers wait for it rather than take background work."""
        if self._splitting:
            return True
        for v in self._workers:
            entry = self._queue.get(v.job)
            if v.preempting or not self._preemptible(v) or entry.background:
                continue
            if v.chunks_left is not None and v.chunks_left < 2:
                continue
            if not any(self._idle(w) and self._shares(w, v.job) for w in self._workers):
                return False
            with contextlib.suppress(OSError, ValueError):  # a dying worker: its sentinel reports it
                v.conn.send((Order.PREEMPT, v.job))
                v.preempting = True
                self._splitting.add(v.job)
            return bool(self._splitting)
        return False

    def _preempt(self) -> None:
        """Live work waiting and no worker free: ask full passes of less urgent work (background, or a full
        figure while an estimate waits) to hand their workers back after their current chunk. Each is resumed
        later from its counts, so nothing is lost or scored twice; the least urgent pass goes first."""
        waiting = sorted(e.priority()[0] for e in self._queue if self._waiting_live(e))
        waiting = waiting[sum(w.preempting for w in self._workers) :]
        victims = sorted(
            (w for w in self._workers if not w.preempting and self._preemptible(w)), key=self._urgency, reverse=True
        )
        for prio, w in zip(waiting, victims, strict=False):
            if self._urgency(w) <= prio:
                return  # the rest wait for work at least as urgent as their own
            with contextlib.suppress(OSError, ValueError):  # a dying worker: its sentinel reports it
                w.conn.send((Order.PREEMPT, w.job))
                w.preempting = True

    def _waiting_live(self, entry: Entry) -> bool:
        return not entry.in_flight and not entry.background and not self._covered(entry.job)

    def _covered(self, job: EvalJob) -> bool:
        """An estimate whose full pass runs on a local worker: that pass reports it after its first chunk."""
        if type(job) is not EvalJob or job.subset != ESTIMATE_IMAGES or job.shard is not None:
            return False
        full = job.with_subset(None)
        return any(w.job == full and not w.remote for w in self._workers)

    def _urgency(self, w: Worker) -> int:
        entry = self._queue.get(w.job)
        return entry.priority()[0] if entry is not None else STALE

    def _preemptible(self, w: Worker) -> bool:
        """A local worker on a full pass (an accuracy job over the whole split, which runs in chunks)."""
        job = w.job
        if w.remote or job is None or type(job) is not EvalJob or job.subset is not None or job.shard is not None:
            return False
        return job in self._queue

    def _superset(self, w: Worker, entry: Entry) -> Entry:
        """For an estimate whose full job is queued too, the full job: a local worker's full pass scores
        the estimate's images first and reports them, so the estimate comes as soon and nothing is scored twice."""
        job = entry.job
        if w.remote or type(job) is not EvalJob or job.subset != ESTIMATE_IMAGES or job.shard is not None:
            return entry
        full = self._queue.get(job.with_subset(None))
        return full if full is not None and not full.in_flight and self._accepts(w, full.job) else entry

    def _background_slot(self) -> bool:
        busy = sum(1 for w in self._workers if w.job is not None and w.background)
        return busy < max(1, len(self._workers) - 1)

    def _send(self, w: Worker, entry: Entry, resume: Resume | None = None) -> None:
        job = entry.job
        spec = None if job.model in w.loaded else self._specs.get(job.model)
        if job.model not in w.loaded and spec is None:
            self._finish(job, JobError(f"model {job.model!r} is not registered with the evaluation service"))
            return
        try:
            w.conn.send((job, spec, resume))
        except (OSError, ValueError):
            return  # the worker is dying: its sentinel brings it back, the entry stays queued
        w.loaded.add(job.model)
        w.job, w.background = job, entry.background
        w.chunks_left = None if resume is None or not resume.chunks else len(resume.todo or resume.remaining())
        entry.in_flight += 1

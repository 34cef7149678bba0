"""The scheduler thread: it applies the policy's decisions to the workers and takes their answers.

One thread owns the conversation with the workers (``protocol``): it wakes when a request arrives or a worker
answers or dies, asks ``policy.decide`` what to start and whom to preempt, sends it, and files every answer in
the results. A worker that dies is restarted and its job retried once; a second death is reported as the job's
error. If the scheduler itself fails, every waiting and later job reads its error instead of waiting forever.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from multiprocessing.connection import wait

from prunekit.core.loaded import ModelSpec
from prunekit.deploy.recover import Recovery
from prunekit.service.cache import ResultCache
from prunekit.service.chunks import Resume
from prunekit.service.codec import Outcome
from prunekit.service.jobs import EvalJob, JobError
from prunekit.service.policy import HandBack, Start, decide
from prunekit.service.protocol import Order, Status
from prunekit.service.queue import Entry, JobQueue
from prunekit.service.watch import Stirred
from prunekit.service.workers import Worker, WorkerPool

log = logging.getLogger(__name__)
MAX_ATTEMPTS = 2


class Scheduler:
    """The queue, the workers' state and the thread between them. Callers take ``lock`` to change the queue
    and call ``wake`` after; everything else here runs on the scheduler thread."""

    def __init__(self, pool: WorkerPool, results: ResultCache, ctx) -> None:
        self.pool, self.results = pool, results
        self.lock = threading.Lock()
        self.queue = JobQueue()  # guarded by lock
        self.specs: dict[str, ModelSpec] = {}
        self.progress: dict[EvalJob, Recovery] = {}  # the latest progress of running recoveries
        self.preemptions = 0
        self.broken: str | None = None  # why the workers cannot run, once they cannot
        self.notice: str | None = None  # e.g. the remote pool was lost and local workers took over
        self._dropping: list[str] = []  # models the server let go: the workers are told on the next dispatch
        self._splitting: set[EvalJob] = set()  # live passes asked to hand back so that idle workers share them
        self._wake_r, self._wake_w = ctx.Pipe(duplex=False)
        self._wake_lock, self._wake_pending = threading.Lock(), False
        self.closed = False
        if pool.remote is not None:
            pool.remote.on_lost = self.fall_back
        self._thread = threading.Thread(target=self._loop, name="prunekit-scheduler", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        if self._wake_pending:  # the scheduler has not read the last wake yet: it will see this too
            return
        self._wake_pending = True
        try:
            with self._wake_lock:
                self._wake_w.send_bytes(b"!")
        except OSError:
            pass

    def stop(self, job: EvalJob) -> None:
        """Stop a running recovery after its current batch, or drop ``job`` from the queue."""
        with self.lock:
            worker = self.pool.running(job)
            if worker is None:
                self.queue.remove(job)
                return
        with contextlib.suppress(OSError, ValueError):  # a dying worker: its sentinel reports it
            worker.conn.send((Order.STOP, job))

    def close(self) -> None:
        self.closed = True
        self.wake()
        self._thread.join(5)
        self.pool.close()

    def finish(self, job: EvalJob, outcome: Outcome) -> None:
        """``job`` is done (call with the lock held; the store is written outside it, see ``_store``)."""
        self.queue.remove(job)
        self.progress.pop(job, None)
        self.results.put(job, outcome)

    def _store(self, job: EvalJob, outcome: Outcome) -> None:
        if not isinstance(outcome, JobError):
            self.results.persist(job, outcome)

    # --- the thread ------------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while not self.closed:
                self._dispatch()
                for ready in wait([self._wake_r, *self.pool.waitables()], timeout=1.0):
                    self._handle(ready)
        except Exception as exc:  # a bug here would leave every page waiting: say so on each of them instead
            log.exception("the evaluation scheduler failed")
            with self.lock:
                self._give_up(f"the evaluation scheduler failed ({type(exc).__name__}: {exc})")

    def drop_model(self, key: str) -> None:
        """The server let model ``key`` go: forget how to load it, drop its queued jobs that are not running,
        and tell every worker that has it to forget it once its running job ends (sent from this thread)."""
        with self.lock:
            self.specs.pop(key, None)
            dropped = [entry.job for entry in self.queue if entry.job.model == key and not entry.in_flight]
            for job in dropped:
                self.queue.remove(job)
            self._dropping.append(key)
        self.wake()
        for job in dropped:  # whoever listens for them asks again (and registers the model again)
            self.results.watchers.tell(job, Stirred(dropped=True))

    def _send_drops(self, workers: list[Worker]) -> None:
        for key in self._dropping:
            for w in workers:
                if key in w.loaded:
                    with contextlib.suppress(OSError, ValueError):  # a dying worker forgets everything anyway
                        w.conn.send((Order.DROP, key))
                    w.loaded.discard(key)
        self._dropping.clear()

    def _dispatch(self) -> None:
        with self.lock:
            workers = list(self.pool)
            self._send_drops(workers)
            pooled = self.pool.remote is not None
            for action in decide(self.queue, [w.slot() for w in workers], self._splitting, pooled):
                w = workers[action.slot]
                if isinstance(action, Start):
                    self._send(w, action.entry, action.resume)
                elif isinstance(action, HandBack):
                    self._hand_back(w, share=action.share)

    def _send(self, w: Worker, entry: Entry, resume: Resume | None) -> None:
        job = entry.job
        spec = None if job.model in w.loaded else self.specs.get(job.model)
        if job.model not in w.loaded and spec is None:
            self.finish(job, JobError(f"model {job.model!r} is not registered with the evaluation service"))
            return
        try:
            w.conn.send((job, spec, resume))
        except (OSError, ValueError):
            return  # the worker is dying: its sentinel brings it back, the entry stays queued
        w.loaded.add(job.model)
        w.job, w.background = job, entry.background
        w.chunks_left = None if resume is None or not resume.chunks else len(resume.todo or resume.remaining())
        entry.in_flight += 1

    def _hand_back(self, w: Worker, share: bool) -> None:
        with contextlib.suppress(OSError, ValueError):  # a dying worker: its sentinel reports it
            w.conn.send((Order.PREEMPT, w.job))
            w.preempting = True
            if share:
                self._splitting.add(w.job)

    def _handle(self, ready) -> None:
        if ready is self._wake_r:
            self._wake_pending = False  # before reading: a wake after this point writes again
            while self._wake_r.poll():
                self._wake_r.recv_bytes()
            return
        for w in list(self.pool):
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
        match status:
            case Status.PROGRESS:
                with self.lock:
                    self.progress[job] = payload
                self.results.watchers.tell(job, Stirred(progress=payload))
            case Status.LOST:
                self.fall_back(payload)
            case Status.PREEMPTED | Status.PART:
                self._handed_back(w, job, payload, preempted=status == Status.PREEMPTED)
            case Status.PARTIAL:  # the estimate a full pass scored first
                self._partial(job, payload)
            case _:
                self._done(w, job, payload if status == Status.OK else JobError(payload), failed=status != Status.OK)

    def _done(self, w: Worker, job: EvalJob, outcome: Outcome, failed: bool) -> None:
        with self.lock:
            self._release(w, job)  # done before it saw a preemption, if it was asked to hand back
            if failed:
                w.loaded.discard(job.model)  # a failed load is retried with the spec next time
            self.finish(job, outcome)
        self._store(job, outcome)

    def _partial(self, job: EvalJob, outcome: Outcome) -> None:
        with self.lock:
            new = self.results.lookup(job, read_disk=False) is None
            if new:
                self.finish(job, outcome)
        if new:
            self._store(job, outcome)

    def _handed_back(self, w: Worker, job: EvalJob, resume: Resume, preempted: bool) -> None:
        """A pass handed back (``preempted``: for live work, or to be shared) or a share of one scored: its
        counts join the entry's, which goes back in the queue to resume from them, or is complete."""
        with self.lock:
            self.preemptions += preempted and job not in self._splitting  # sharing a pass preempts nothing
            entry = self._release(w, job)
            if entry is None:
                return
            entry.resume = entry.resume.merged(resume) if entry.resume else resume
            figure = entry.resume.accuracy()
            if figure is not None:
                self.finish(job, figure)
        if figure is not None:
            self._store(job, figure)

    def _release(self, w: Worker, job: EvalJob | None) -> Entry | None:
        """``w`` is done with ``job`` (call with the lock held); returns the job's entry if still queued."""
        w.job, w.preempting, w.chunks_left = None, False, None
        self.pool.finished_one()
        self._splitting.discard(job)
        entry = self.queue.get(job)
        if entry is not None:
            entry.in_flight = max(0, entry.in_flight - 1)
        return entry

    def _crashed(self, w: Worker) -> None:
        w.process.join(1)
        code = w.process.exitcode
        w.conn.close()
        with self.lock:
            if w not in self.pool.workers:
                return  # a remote slot already replaced by the fall-back
            why = "the service is closing" if self.closed else self.pool.replace(w)
            if why is not None:
                self._give_up(why)
                return
            self._splitting.discard(w.job)
            entry = self.queue.get(w.job)
            if entry is not None:
                entry.in_flight = max(0, entry.in_flight - 1)
                entry.attempts += 1
                if entry.attempts >= MAX_ATTEMPTS:
                    self.finish(
                        w.job, JobError(f"the evaluation worker died {entry.attempts} times (exit code {code})")
                    )

    def fall_back(self, why: str) -> None:
        """The remote pool is gone: requeue its jobs and run everything on local workers from now on."""
        with self.lock:
            remote, slots = self.pool.drop_remote()
            if remote is None:
                return
            for w in slots:
                entry = self.queue.get(w.job)
                if entry is not None:
                    entry.in_flight = max(0, entry.in_flight - 1)
            self.notice = f"{why}; evaluations now run on {len(self.pool)} local worker processes"
            log.warning("%s", self.notice)
        self.wake()
        threading.Thread(target=remote.close, name="prunekit-ray-close", daemon=True).start()

    def _give_up(self, why: str) -> None:
        self.broken = self.broken or why
        for job in self.queue.jobs():
            self.finish(job, JobError(why))
        self.closed = True

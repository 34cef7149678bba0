"""Which worker runs what next: the scheduling policy, as a pure function of a snapshot.

:func:`decide` reads the queue and a :class:`Slot` per worker and returns what to do: start an entry on a
worker (:class:`Start`), or ask a worker to hand its full pass back after the current chunk (:class:`HandBack`),
for live work waiting or to share the pass with idle workers. It neither sends nor changes anything, so the
rules are unit-tested with no processes; the scheduler applies the actions. The rules:

- the best queued entry goes to each idle worker that may run it; background work never takes the last idle
  worker, so a live request finds one free and a core stays with the web server;
- an estimate whose full pass is queued runs as that full pass (which reports the estimate's images first),
  and an estimate whose full pass already runs on a local worker is not started at all;
- a live full pass whose chunks are known is split between every idle local worker that may run it;
- idle workers with nothing live to do ask one live full pass to hand back so that they can share it;
- live work waiting with no worker free preempts the least urgent full passes, never one at least as urgent.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence, Set
from dataclasses import dataclass

from prunekit.service.chunks import Resume
from prunekit.service.jobs import (
    ESTIMATE_IMAGES,
    CollapseJob,
    EvalJob,
    MethodJob,
    OracleJob,
    PathJob,
    PredictJob,
    RecoverJob,
    ScoresJob,
)
from prunekit.service.queue import STALE, Entry, JobQueue


def runs_remotely(job: EvalJob) -> bool:
    """Every job but a latency (bound to this machine) may run on a remote pool: accuracies, path tests,
    recoveries, training methods (their progress and stop travel through the pool, see raypool) and the oracle."""
    return type(job) in (EvalJob, PathJob, CollapseJob, PredictJob, RecoverJob, MethodJob, OracleJob, ScoresJob)


@dataclass
class Slot:
    """A worker as the policy sees it."""

    job: EvalJob | None = None
    remote: bool = False  # a slot of a remote pool: no latency jobs, never shared or preempted
    alive: bool = True
    background: bool = False  # the job in hand is background work
    preempting: bool = False  # already asked to hand its job back
    chunks_left: int | None = None  # chunks of a full pass it was sent (None: not known yet)

    @property
    def idle(self) -> bool:
        return self.job is None and self.alive


@dataclass(frozen=True)
class Start:
    """Send ``entry`` to worker ``slot``, going on from ``resume`` (a share of the chunks left, or None)."""

    slot: int
    entry: Entry
    resume: Resume | None


@dataclass(frozen=True)
class HandBack:
    """Ask worker ``slot`` to hand its full pass back after its current chunk; ``share``: for idle workers to
    share it (not a preemption)."""

    slot: int
    share: bool


Action = Start | HandBack


def decide(queue: JobQueue, slots: Sequence[Slot], splitting: Set[EvalJob], pooled: bool) -> list[Action]:
    """What to start and whom to ask to hand back, given the ``queue``, one ``Slot`` per worker, the passes
    already asked to hand back for sharing (``splitting``) and whether a remote pool takes every job but latencies
    (``pooled``). Nothing passed in is changed."""
    plan = _Plan(queue, [dataclasses.replace(s) for s in slots], set(splitting), pooled)
    for i, slot in enumerate(plan.slots):
        if not slot.idle:
            continue
        entry = plan.best(slot)
        if entry is None or (entry.background and (plan.share() or not plan.background_slot())):
            continue
        plan.start(i, plan.superset(slot, entry))
    plan.share()
    plan.preempt()
    return plan.actions


class _Plan:
    """The snapshot as the actions decided so far leave it (the caller's objects are never written)."""

    def __init__(self, queue: JobQueue, slots: list[Slot], splitting: set[EvalJob], pooled: bool) -> None:
        self.queue, self.slots, self.splitting, self.pooled = queue, slots, splitting, pooled
        self.started: Counter[EvalJob] = Counter()
        self.actions: list[Action] = []

    def in_flight(self, entry: Entry) -> int:
        return entry.in_flight + self.started[entry.job]

    def accepts(self, slot: Slot, job: EvalJob) -> bool:
        return runs_remotely(job) if slot.remote else not self.pooled or not runs_remotely(job)

    def best(self, slot: Slot) -> Entry | None:
        return self.queue.best(lambda job: not self.started[job] and self.accepts(slot, job) and not self.covered(job))

    def start(self, i: int, entry: Entry) -> None:
        """``entry`` to slot ``i``; a live full pass whose chunks are known goes to every idle local worker
        that takes it, each scoring an even share of the chunks left (their counts add up when handed back)."""
        resume = entry.resume
        shareable = not (self.slots[i].remote or entry.background or resume is None or not resume.chunks)
        crew = [i] + [
            j
            for j, other in enumerate(self.slots)
            if shareable and j != i and other.idle and self.shares(other, entry.job)
        ]
        parts = [resume] if len(crew) == 1 else resume.share(len(crew))
        for j, part in zip(crew, parts, strict=False):
            slot = self.slots[j]
            slot.job, slot.background = entry.job, entry.background
            slot.chunks_left = None if part is None or not part.chunks else len(part.todo or part.remaining())
            self.started[entry.job] += 1
            self.actions.append(Start(j, entry, part))

    def shares(self, slot: Slot, job: EvalJob) -> bool:
        return not slot.remote and self.accepts(slot, job)

    def share(self) -> bool:
        """An idle local worker with nothing live to do, and a live full pass on another with chunks to go:
        ask that pass to hand back after its current chunk (the estimate's chunk always comes first), so that
        what is left is shared. One pass at a time; a share of one chunk stays. True while a pass is asked to
        hand back: the idle workers wait for it rather than take background work."""
        if self.splitting:
            return True
        for j, slot in enumerate(self.slots):
            entry = self.queue.get(slot.job)
            if slot.preempting or not self.preemptible(slot) or entry.background:
                continue
            if slot.chunks_left is not None and slot.chunks_left < 2:
                continue
            if not any(other.idle and self.shares(other, slot.job) for other in self.slots):
                return False
            slot.preempting = True
            self.splitting.add(slot.job)
            self.actions.append(HandBack(j, share=True))
            return True
        return False

    def preempt(self) -> None:
        """Live work waiting and no worker free: ask full passes of less urgent work (background, or a full
        figure while an estimate waits) to hand back after their current chunk, the least urgent first. Each
        is resumed later from its counts, so nothing is lost or scored twice."""
        waiting = sorted(e.priority()[0] for e in self.queue if self.waiting_live(e))
        waiting = waiting[sum(s.preempting for s in self.slots) :]
        victims = sorted(
            (j for j, s in enumerate(self.slots) if not s.preempting and self.preemptible(s)),
            key=lambda j: self.urgency(self.slots[j]),
            reverse=True,
        )
        for prio, j in zip(waiting, victims, strict=False):
            if self.urgency(self.slots[j]) <= prio:
                return  # the rest wait for work at least as urgent as their own
            self.slots[j].preempting = True
            self.actions.append(HandBack(j, share=False))

    def waiting_live(self, entry: Entry) -> bool:
        return not self.in_flight(entry) and not entry.background and not self.covered(entry.job)

    def covered(self, job: EvalJob) -> bool:
        """An estimate whose full pass runs on a local worker: that pass reports it after its first chunk."""
        if not _is_estimate(job):
            return False
        full = job.with_subset(None)
        return any(s.job == full and not s.remote for s in self.slots)

    def urgency(self, slot: Slot) -> int:
        entry = self.queue.get(slot.job)
        return entry.priority()[0] if entry is not None else STALE

    def preemptible(self, slot: Slot) -> bool:
        """A local worker on a full pass (an accuracy job over the whole split, which runs in chunks)."""
        job = slot.job
        if slot.remote or job is None or type(job) is not EvalJob or job.subset is not None or job.shard is not None:
            return False
        return job in self.queue

    def superset(self, slot: Slot, entry: Entry) -> Entry:
        """For an estimate whose full job is queued too, the full job: a local worker's full pass scores the
        estimate's images first and reports them, so the estimate comes as soon and nothing is scored twice."""
        if slot.remote or not _is_estimate(entry.job):
            return entry
        full = self.queue.get(entry.job.with_subset(None))
        if full is None or self.in_flight(full) or not self.accepts(slot, full.job):
            return entry
        return full

    def background_slot(self) -> bool:
        busy = sum(1 for s in self.slots if s.job is not None and s.background)
        return busy < max(1, len(self.slots) - 1)


def _is_estimate(job: EvalJob) -> bool:
    return type(job) is EvalJob and job.subset == ESTIMATE_IMAGES and job.shard is None

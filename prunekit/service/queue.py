"""The evaluation service's queue: which jobs are wanted, by whom, at what priority.

Lower priorities run first: live estimates, then live full-split figures, then background work (curves,
coarse to fine) and last what nobody waits for any more. Each session's latest request wins: what it asked
before is demoted to background, never dropped. Identical requests are one entry. No processes and no
locks here: the service calls the queue with its own lock held, and tests drive it directly.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prunekit.service.chunks import Resume
from prunekit.service.jobs import EvalJob

LIVE_ESTIMATE, LIVE_FULL, CURVE, STALE = 0, 1, 10, 100  # lower runs first; curve levels add 0, 1, 2
ASKED = 5  # long work a person asked for (the oracle's slices): after the room's live figures, before curves
CURVE_GRIDS = (0.1, 0.05, 0.01)  # the slider's accuracy curve fills in coarse to fine


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


@dataclass
class Entry:
    """One queued or running job and everyone who wants it."""

    job: EvalJob
    seq: int
    wanted: dict[str, int] = field(default_factory=dict)  # requester (a session, or "" for background) -> priority
    attempts: int = 0
    in_flight: int = 0  # workers running it: one, or several sharing a live full pass's chunks
    resume: Resume | None = None  # where a preempted run stopped: the next run goes on from there

    def priority(self) -> tuple[int, int]:
        return (min(self.wanted.values(), default=STALE), self.seq)

    @property
    def background(self) -> bool:
        """Nobody waits for it on a page now (curve filling, or a request since superseded)."""
        return self.priority()[0] >= CURVE


class JobQueue:
    """Entries by job, with each session's latest request remembered (not thread-safe: see the module)."""

    def __init__(self) -> None:
        self._entries: dict[EvalJob, Entry] = {}
        self._sessions: dict[str, set[EvalJob]] = {}
        self._seq = itertools.count()

    def __contains__(self, job: EvalJob) -> bool:
        return job in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(list(self._entries.values()))

    def get(self, job: EvalJob | None) -> Entry | None:
        return self._entries.get(job) if job is not None else None

    def want(self, job: EvalJob, requester: str, prio: int, keep: bool = False) -> None:
        """``requester`` wants ``job`` at ``prio``; ``keep``: not part of its latest request (never superseded)."""
        entry = self._entries.get(job)
        if entry is None:
            entry = self._entries[job] = Entry(job, next(self._seq))
        elif prio < entry.priority()[0]:
            entry.seq = next(self._seq)  # promoted: first come, first served among its new peers
        entry.wanted[requester] = min(prio, entry.wanted.get(requester, prio))
        if requester and not keep:
            self._sessions.setdefault(requester, set()).add(job)

    def supersede(self, session: str, now: set[EvalJob]) -> None:
        """``session``'s request is now ``now``: what it asked before and no longer asks is demoted."""
        for job in self._sessions.get(session, set()) - now:
            entry = self._entries.get(job)
            if entry is not None and entry.wanted.pop(session, None) is not None:
                entry.wanted.setdefault("", STALE)
        self._sessions[session] = now

    def remove(self, job: EvalJob) -> Entry | None:
        return self._entries.pop(job, None)

    def best(self, accepts: Callable[[EvalJob], bool]) -> Entry | None:
        """The queued entry to run next among those ``accepts`` admits, or None."""
        queued = (e for e in self._entries.values() if not e.in_flight and accepts(e.job))
        return min(queued, key=Entry.priority, default=None)

    def live_waiting(self) -> int:
        """Live entries queued and not running."""
        return sum(1 for e in self._entries.values() if not e.in_flight and not e.background)

    def queued(self) -> tuple[int, int]:
        """(live, background) entries queued and not running."""
        waiting = [e for e in self._entries.values() if not e.in_flight]
        live = sum(1 for e in waiting if not e.background)
        return live, len(waiting) - live

    def jobs(self) -> list[EvalJob]:
        return list(self._entries)

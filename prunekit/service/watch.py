"""Callbacks waiting for jobs' outcomes: how a result reaches whoever waits for it the moment it lands, with
no poll. A callback runs on the thread that files the result (the scheduler's), so it must only hand over,
e.g. ``loop.call_soon_threadsafe``; one that raises is logged and never stops the others.

:func:`noting` is the other half: what a piece of code asked the service for and found not there yet, so that a
page part can listen for exactly those jobs instead of asking again and again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from prunekit.service.jobs import EvalJob

log = logging.getLogger(__name__)
Callback = Callable[[EvalJob, object], None]
_NOTED: ContextVar[dict[EvalJob, None] | None] = ContextVar("prunekit_noted", default=None)


@dataclass(frozen=True)
class Stirred:
    """Told to a watcher that asked for it (``progress=True``) when a job moved without landing: a running job
    reported progress (``progress``, e.g. a recovery so far), or its queued job was dropped (``dropped``: the
    server let its model go), so whoever waits should look again."""

    progress: object | None = None
    dropped: bool = False


@contextlib.contextmanager
def noting() -> Iterator[dict[EvalJob, None]]:
    """Collect, in order and once each, the canonical jobs that :meth:`EvalService.lookup` or ``request`` found not
    known within this block (this thread or task only)."""
    noted: dict[EvalJob, None] = {}
    token = _NOTED.set(noted)
    try:
        yield noted
    finally:
        _NOTED.reset(token)


def is_noting() -> bool:
    """Whether :func:`note` keeps what it is told here (so that building the jobs to note may be skipped)."""
    return _NOTED.get() is not None


def note(job: EvalJob) -> None:
    """``job`` (canonical) was looked for and is not known yet: remember it where :func:`noting` collects."""
    noted = _NOTED.get()
    if noted is not None:
        noted[job] = None


@dataclass(eq=False)
class _Watch:
    callback: Callback
    progress: bool


class Watchers:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_job: dict[EvalJob, list[_Watch]] = {}

    def add(self, jobs: Iterable[EvalJob], callback: Callback, progress: bool = False) -> Callable[[], None]:
        """Call ``callback(job, outcome)`` for each outcome that lands for one of ``jobs`` (canonical), and with
        ``progress`` also ``callback(job, Stirred(...))`` as a job moves without landing; returns the function
        that stops it."""
        jobs = list(dict.fromkeys(jobs))
        watch = _Watch(callback, progress)  # one registration: removing it leaves the same callback's others
        with self._lock:
            for job in jobs:
                self._by_job.setdefault(job, []).append(watch)

        def remove() -> None:
            with self._lock:
                for job in jobs:
                    left = [w for w in self._by_job.get(job, []) if w is not watch]
                    if left:
                        self._by_job[job] = left
                    else:
                        self._by_job.pop(job, None)

        return remove

    def tell(self, job: EvalJob, outcome: object) -> None:
        """``outcome`` of ``job`` landed (or, a :class:`Stirred`, ``job`` moved: only those who asked hear it)."""
        stirred = isinstance(outcome, Stirred)
        with self._lock:
            callbacks = [w.callback for w in self._by_job.get(job, ()) if w.progress or not stirred]
        for callback in callbacks:
            try:
                callback(job, outcome)
            except Exception:  # one listener's bug must not stop the scheduler or the others
                log.exception("a result watcher failed")

    def __len__(self) -> int:
        with self._lock:
            return sum(len(c) for c in self._by_job.values())

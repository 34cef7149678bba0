"""Callbacks waiting for jobs' outcomes: how a result reaches whoever waits for it the moment it lands, with
no poll. A callback runs on the thread that files the result (the scheduler's), so it must only hand over,
e.g. ``loop.call_soon_threadsafe``; one that raises is logged and never stops the others."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from prunekit.service.jobs import EvalJob

log = logging.getLogger(__name__)
Callback = Callable[[EvalJob, object], None]


class Watchers:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_job: dict[EvalJob, list[Callback]] = {}

    def add(self, jobs: Iterable[EvalJob], callback: Callback) -> Callable[[], None]:
        """Call ``callback(job, outcome)`` for each outcome that lands for one of ``jobs`` (canonical); returns
        the function that stops it."""
        jobs = list(dict.fromkeys(jobs))
        with self._lock:
            for job in jobs:
                self._by_job.setdefault(job, []).append(callback)

        def remove() -> None:
            with self._lock:
                for job in jobs:
                    left = [c for c in self._by_job.get(job, []) if c is not callback]
                    if left:
                        self._by_job[job] = left
                    else:
                        self._by_job.pop(job, None)

        return remove

    def tell(self, job: EvalJob, outcome: object) -> None:
        with self._lock:
            callbacks = list(self._by_job.get(job, ()))
        for callback in callbacks:
            try:
                callback(job, outcome)
            except Exception:  # one listener's bug must not stop the scheduler or the others
                log.exception("a result watcher failed")

    def __len__(self) -> int:
        with self._lock:
            return sum(len(c) for c in self._by_job.values())

"""Models loaded apart from the pages: a big model's load runs on a loader thread, not on a session's script.

Loading a large torchvision model and sorting its scores once takes tens of seconds to minutes (vgg16: about
20 s, regnet_y_128gf: 154 s). On the asking session's script thread that page hangs with a spinner the whole
time; on a loader thread the page shows which step the load is at and stays usable, and the one who asked can
pick another model meanwhile. Measured with ``bench/loading.py``: the heavy steps (weight initialisation,
scoring, sorting, masking) are torch kernels that release the GIL, so a thread keeps the room's pages moving
about as well as a separate process would, without shipping the loaded weights back across processes. The
loader threads run at a lower CPU priority than the pages (``LOAD_NICE``), and at most ``LOAD_THREADS`` loads
run at once, so a burst of links cannot take both cores from the room.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Generic, TypeVar

from prunekit.core.lab import Lab
from prunekit.core.loaded import Loaded
from prunekit.core.spec import PruneSpec
from prunekit.service.memory import ModelBudget, gigabytes

T = TypeVar("T")

LOAD_THREADS = 2  # loads at once; a third waits for one of them (its page says so)
LOAD_NICE = 10  # the loader threads' CPU priority below the pages' (Linux: per thread)

LAB_STEPS = (
    "building the model and reading its weights",
    "profiling its layers",
    "scoring and sorting its weights",
    "pruning it at the first slider position",
)


def prepared_lab(load: Callable[[], Loaded], specs: Sequence[PruneSpec], progress: Callable[[int], None]) -> Lab:
    """A :class:`Lab` on what ``load`` returns, with its one-off work done: profile, the score table of
    ``specs`` and their results (what the first page asks for). ``progress(step)`` names each of ``LAB_STEPS``."""
    progress(1)
    lab = Lab(load())
    progress(2)
    lab.profile  # noqa: B018 - computed now, on this thread
    progress(3)
    for spec in specs:
        lab.table(*spec.table_key)
    progress(4)
    for spec in specs:
        lab.result(spec, paths=lab.paths_in_move)
    return lab


@dataclass(frozen=True)
class LoadStatus:
    """Where a model's load stands: ``step`` 0 while it waits for a loader thread, else 1..``len(steps)``."""

    name: str
    step: int
    steps: tuple[str, ...]
    elapsed_s: float
    bytes: int  # the budget's estimate of what it will hold

    @property
    def fraction(self) -> float:
        """Steps begun, as a fraction (0 while waiting): a count of steps, not of time."""
        return self.step / len(self.steps)

    def sentence(self) -> str:
        what = (
            "waiting for a loader (other models are loading)"
            if self.step == 0
            else f"step {self.step} of {len(self.steps)}: {self.steps[self.step - 1]}"
        )
        return (
            f"Loading {self.name} (first time on this server; it will hold about {gigabytes(self.bytes)}, an "
            f"estimate): {what}, {self.elapsed_s:.0f} s so far."
        )


class _Task:
    def __init__(self, clock: Callable[[], float]) -> None:
        self.future: Future = Future()
        self.step = 0
        self.started = clock()

    def advance(self, step: int) -> None:
        self.step = step


def _lower_priority(nice: int) -> None:
    """Run this thread ``nice`` steps below the pages (Linux schedules threads one by one)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)


class Loads(Generic[T]):
    """Loads of a :class:`ModelBudget`'s models on loader threads; a page asks without waiting long.

    ``get(name, wait_s)`` returns the model when it is held or loads within ``wait_s`` seconds, else its
    :class:`LoadStatus` (starting the load if none is under way); a failed load raises its error to the next
    asker (and is tried again by the one after). ``wait_s=None`` waits for the model, as a script would.
    """

    def __init__(
        self,
        budget: ModelBudget[T],
        steps: Sequence[str] = LAB_STEPS,
        threads: int = LOAD_THREADS,
        nice: int = LOAD_NICE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = budget
        self.steps = tuple(steps)
        self._clock = clock
        self._tasks: dict[Hashable, _Task] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(
            threads, thread_name_prefix="prunekit-load", initializer=_lower_priority, initargs=(nice,)
        )

    def get(self, name: Hashable, wait_s: float | None = None) -> T | LoadStatus:
        if name in self.budget:
            return self.budget.get(name)  # held: marks it used
        task = self._task(name)
        try:
            value = task.future.result(timeout=wait_s)
        except FutureTimeout:
            return self._status(name, task)
        except BaseException:
            self._forget(name, task)  # told once; the next asker tries again
            raise
        self._forget(name, task)
        return value

    def status(self, name: Hashable) -> LoadStatus | None:
        """The status of ``name``'s load while it runs; None when none is under way (held, failed or never asked)."""
        with self._lock:
            task = self._tasks.get(name)
        return None if task is None or task.future.done() else self._status(name, task)

    def _task(self, name: Hashable) -> _Task:
        with self._lock:
            task = self._tasks.get(name)
            if task is None:
                task = self._tasks[name] = _Task(self._clock)
                self._pool.submit(self._run, name, task)
            return task

    def _run(self, name: Hashable, task: _Task) -> None:
        if not task.future.set_running_or_notify_cancel():
            return
        task.started = self._clock()  # waiting for a thread is not part of the load's time
        try:
            value = self.budget.get(name, task.advance)
        except BaseException as exc:  # kept for the next asker, whose page shows it (or whose test fails)
            task.future.set_exception(exc)
            return
        self._forget(name, task)  # the budget holds it now: a task kept here would outlive its eviction
        task.future.set_result(value)  # to the askers waiting on it

    def _forget(self, name: Hashable, task: _Task) -> None:
        with self._lock:
            if self._tasks.get(name) is task:
                del self._tasks[name]

    def _status(self, name: Hashable, task: _Task) -> LoadStatus:
        elapsed = self._clock() - task.started if task.step else 0.0
        return LoadStatus(str(name), task.step, self.steps, elapsed, self.budget.estimate(name))

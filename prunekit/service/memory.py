"""A memory budget for the models a server holds: estimated before loading, evicted least-recently-used.

A room shares one server process; every model a session opens stays in it (its weights, score tables,
pooled working copies and the path test's twin). :class:`ModelBudget` holds them under a byte budget:
a model's footprint is estimated from its parameter count before it is loaded (:func:`footprint`); when
a new one would not fit, the least recently used models are dropped, never the ones kept for good (the
default) nor one any session used in the last minute; a model that alone exceeds the budget is refused
with one sentence naming its size and the budget.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from prunekit.errors import InvalidArgumentError, MemoryBudgetError

T = TypeVar("T")

MEMORY_ENV = "PRUNEKIT_MEMORY_GB"  # set by `prunekit app --memory-gb`
# Of the machine's memory. The evaluation workers hold the same models again, about twice what the server does
# (docs/workshop.md, big-links: server 5.1 GB, two workers 10.4 GB in an 8 GB budget), so a third leaves them room.
DEFAULT_SHARE = 1 / 3
IN_USE_S = 60.0  # a model any session used this recently is never evicted
GB = 1024**3

# Bytes the server holds per parameter of a loaded model, measured (bench/memory.py): the float32 weights
# (4), the global and local score tables with their sorted order (about 16), two pooled working copies (8),
# the path test's twin (4) and the allocator's slack. A first estimate: bench/memory.py prints it beside RSS.
BYTES_PER_PARAM = 36
BASE_BYTES = 64 * 1024**2  # a small model's profile, tables and caches: not proportional to its weights


def footprint(params: int) -> int:
    """Estimated bytes the server holds for a model of ``params`` parameters, once a slider moved on it."""
    if params < 0:
        raise InvalidArgumentError(f"a parameter count must be >= 0, got {params}")
    return BASE_BYTES + BYTES_PER_PARAM * params


def machine_bytes() -> int:
    """Physical memory of this machine (bytes)."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def budget_bytes(environ: dict[str, str] | None = None) -> int:
    """The server's model budget: ``$PRUNEKIT_MEMORY_GB`` gigabytes, else a third of the machine's memory."""
    raw = (environ if environ is not None else os.environ).get(MEMORY_ENV, "").strip()
    if not raw:
        return int(DEFAULT_SHARE * machine_bytes())
    try:
        gb = float(raw)
    except ValueError:
        raise InvalidArgumentError(f"{MEMORY_ENV} must be a number of gigabytes, got {raw!r}") from None
    if not gb > 0 or gb == float("inf"):
        raise InvalidArgumentError(f"{MEMORY_ENV} must be a positive number of gigabytes, got {raw!r}")
    return int(gb * GB)


def release_freed_memory() -> None:
    """Collect what an eviction freed and hand the heap's free pages back to the system (glibc keeps them
    otherwise, and the next model would find the server's resident memory still high)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def gigabytes(n: int) -> str:
    return f"{n / GB:.1f} GB"


def _silent(step: int) -> None:
    pass


@dataclass
class _Held(Generic[T]):
    value: T
    bytes: int
    used: float  # clock time of the last get


class ModelBudget(Generic[T]):
    """Models by name under a byte budget, loaded once however many sessions ask at the same moment.

    ``estimate(name)`` gives a model's bytes before it is loaded, ``load(name, progress)`` loads it (calling
    ``progress(step)`` as it goes, see :mod:`prunekit.service.loading`), ``on_evict(name, value)`` hears of every
    eviction (the evaluation workers drop it too). ``keep`` names are never evicted.
    """

    def __init__(
        self,
        budget: int,
        estimate: Callable[[Hashable], int],
        load: Callable[[Hashable, Callable[[int], None]], T],
        keep: frozenset = frozenset(),
        on_evict: Callable[[Hashable, T], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        in_use_s: float = IN_USE_S,
    ) -> None:
        if budget <= 0:
            raise InvalidArgumentError(f"the memory budget must be positive, got {budget} bytes")
        self.budget = budget
        self._estimate, self._load, self._keep = estimate, load, keep
        self._on_evict = on_evict or (lambda name, value: None)
        self._clock, self._in_use_s = clock, in_use_s
        self._held: OrderedDict[Hashable, _Held[T]] = OrderedDict()  # least recently used first
        self._reserved: dict[Hashable, int] = {}  # loads under way
        self._loading: dict[Hashable, threading.Event] = {}  # a second asker of a name waits for the first
        self._lock = threading.Lock()

    def get(self, name: Hashable, progress: Callable[[int], None] | None = None) -> T:
        """The model ``name``, loading it (after making room) if it is not held; a load calls ``progress(step)``.
        Raises MemoryBudgetError when it alone exceeds the budget, or when the models in use leave no room now."""
        while True:
            with self._lock:
                held = self._held.get(name)
                if held is not None:
                    held.used = self._clock()
                    self._held.move_to_end(name)
                    return held.value
                loading = self._loading.get(name)
                if loading is None:
                    self._loading[name] = threading.Event()
                    break
            loading.wait()  # then look again: held now, or the first load failed and this one tries
        try:
            return self._load_within_budget(name, progress or _silent)
        finally:
            with self._lock:
                self._loading.pop(name).set()

    def _load_within_budget(self, name: Hashable, progress: Callable[[int], None]) -> T:
        need = self._estimate(name)
        if need > self.budget:
            raise MemoryBudgetError(
                f"{name} needs about {gigabytes(need)} in the server, more than its whole memory budget of "
                f"{gigabytes(self.budget)}: it is not loaded (the person starting the server can raise the budget "
                f"with --memory-gb)"
            )
        with self._lock:
            evicted = self._make_room(name, need)
            self._reserved[name] = need
        freed = bool(evicted)
        while evicted:  # popped one by one: no reference to a dropped model outlives its notice
            self._on_evict(*evicted.pop())
        if freed:
            release_freed_memory()
        try:
            value = self._load(name, progress)
        finally:
            with self._lock:
                self._reserved.pop(name, None)
        with self._lock:
            self._held[name] = _Held(value, need, self._clock())
        return value

    def _make_room(self, name: Hashable, need: int) -> list[tuple[Hashable, T]]:
        """Evict least recently used models until ``need`` fits; raises, evicting nothing, if it cannot."""
        now = self._clock()
        free = self.budget - self._used()
        victims = []
        for other, held in self._held.items():
            if free >= need:
                break
            if other in self._keep or now - held.used < self._in_use_s:
                continue
            victims.append(other)
            free += held.bytes
        if free < need:
            busy = [n for n, h in self._held.items() if n not in victims]
            raise MemoryBudgetError(
                f"{name} needs about {gigabytes(need)} in the server and only {gigabytes(free)} of its "
                f"{gigabytes(self.budget)} budget can be freed now: {', '.join(map(str, busy))} "
                f"{'is' if len(busy) == 1 else 'are'} in use; try again in a minute"
            )
        return [(other, self._held.pop(other).value) for other in victims]

    def estimate(self, name: Hashable) -> int:
        """Estimated bytes ``name`` holds once loaded (nothing is loaded to say it)."""
        return self._estimate(name)

    def __contains__(self, name: Hashable) -> bool:
        """Whether ``name`` is held now (a get would not load it)."""
        with self._lock:
            return name in self._held

    def used(self) -> int:
        """Estimated bytes held and reserved by loads under way."""
        with self._lock:
            return self._used()

    def _used(self) -> int:
        return sum(h.bytes for h in self._held.values()) + sum(self._reserved.values())

    def held(self) -> list[tuple[Hashable, int]]:
        """(name, estimated bytes) of every model held, least recently used first."""
        with self._lock:
            return [(n, h.bytes) for n, h in self._held.items()]

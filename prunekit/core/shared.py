"""Thread-safe building blocks for objects shared by every session of one server process.

``SingleFlight`` computes each key once however many threads ask at the same moment; a hit takes
one dict lookup under a lock that is never held while computing. ``Pool`` lends a bounded number of
expensive objects (working copies of a model), so memory does not grow with sessions.
"""

from __future__ import annotations

import queue
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from prunekit.errors import InvalidArgumentError

T = TypeVar("T")


class _Flight:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: object = None
        self.error: BaseException | None = None


class SingleFlight(Generic[T]):
    """A bounded LRU cache whose misses are computed once: concurrent askers of one key wait for that one."""

    def __init__(self, maxsize: int = 4096) -> None:
        if maxsize <= 0:
            raise InvalidArgumentError(f"maxsize must be positive, got {maxsize}")
        self.maxsize = maxsize
        self._values: OrderedDict[Hashable, T] = OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()

    def peek(self, key: Hashable) -> T | None:
        """The cached value, or None; never computes and never waits."""
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
        return None

    def get(self, key: Hashable, compute: Callable[[], T]) -> T:
        """The value of ``key``, computing it (once, in this thread) if no one has."""
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
            flight = self._flights.get(key)
            owner = flight is None
            if owner:
                flight = self._flights[key] = _Flight()
        if not owner:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value  # type: ignore[return-value]
        try:
            flight.value = compute()
        except BaseException as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                self._flights.pop(key, None)
                if flight.error is None:
                    self._store(key, flight.value)
            flight.done.set()
        return flight.value  # type: ignore[return-value]

    def _store(self, key: Hashable, value) -> None:
        self._values[key] = value
        self._values.move_to_end(key)
        while len(self._values) > self.maxsize:
            self._values.popitem(last=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)


class Pool(Generic[T]):
    """At most ``size`` objects made by ``make``, lent one borrower at a time."""

    def __init__(self, make: Callable[[], T], size: int = 2) -> None:
        if size <= 0:
            raise InvalidArgumentError(f"pool size must be positive, got {size}")
        self._make = make
        self._free: queue.SimpleQueue[T] = queue.SimpleQueue()
        self._made = 0
        self.size = size
        self._lock = threading.Lock()

    @property
    def made(self) -> int:
        return self._made

    @contextmanager
    def borrow(self) -> Iterator[T]:
        item = self._take()
        try:
            yield item
        finally:
            self._free.put(item)

    def _take(self) -> T:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            grow = self._made < self.size
            if grow:
                self._made += 1
        if grow:
            try:
                return self._make()
            except BaseException:
                with self._lock:
                    self._made -= 1
                raise
        return self._free.get()

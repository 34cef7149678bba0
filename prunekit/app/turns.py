"""Script runs take turns: at most a few run at once, in the order they were asked for, and the part of a page
before its first figures goes before any page's remainder.

Why: every session's rerun is a thread of the one server process, and Python runs one thread at a time. With
30 reruns started together, each got a thirtieth of the interpreter, and so did the event loop that reads the
browsers' messages and sends the figures: the room's first figures left the server only when nearly all
reruns had finished (bench/workshop.py, docs/workshop.md). In turns, the event loop is never starved, each
rerun finishes as soon as it alone can, and a page that calls :meth:`Turns.head_done` after drawing what a
person waits for (the Prune page's readouts) lets every waiting session's head run before its own remainder.

A turn is a slot handed from one run to the next (no wake-up of every waiting thread). A run that waits longer
than ``wait_s`` goes on without one, so a stuck run can slow the room but never stop it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Iterator

from prunekit.errors import InvalidArgumentError

log = logging.getLogger(__name__)

SLOTS = 1  # one run at a time: a second one only halves the interpreter for each (a run steps aside while it computes)
WAIT_S = 20.0
HEAD, TAIL = 0, 1


class Turns:
    """At most ``slots`` holders at once; waiting runs in two first-come-first-served lines, heads first."""

    def __init__(self, slots: int = SLOTS, wait_s: float = WAIT_S) -> None:
        if slots < 1:
            raise InvalidArgumentError(f"slots must be at least 1, got {slots}")
        self.slots, self.wait_s = slots, wait_s
        self._lock = threading.Lock()
        self._free = slots
        self._lines: tuple[deque[threading.Event], deque[threading.Event]] = (deque(), deque())
        self._mine = threading.local()  # which line the calling thread holds a turn from, if any
        self.waited_out = 0  # runs that went on without a turn (counted, for the benchmark and the tests)

    @contextlib.contextmanager
    def turn(self, line: int = HEAD) -> Iterator[None]:
        """Hold a turn for a run, from ``line``: ``HEAD`` for a page's run, ``TAIL`` for a part refreshing
        itself (behind every head); a nested call (a part drawn within its page's run) is a no-op."""
        if self.holding() is not None:
            yield
            return
        self._take(line)
        try:
            yield
        finally:
            self._give()

    def head_done(self) -> None:
        """The calling run has drawn what a person waits for: its remainder waits behind every waiting head."""
        if self.holding() == HEAD:
            self._give()
            self._take(TAIL)

    @contextlib.contextmanager
    def aside(self) -> Iterator[None]:
        """Give the turn up while the calling run waits on something that needs no interpreter (a load)."""
        line = self.holding()
        if line is None:
            yield
            return
        self._give()
        try:
            yield
        finally:
            self._take(line)

    def holding(self) -> int | None:
        """The line the calling thread holds its turn from (``HEAD``/``TAIL``), or None."""
        return getattr(self._mine, "line", None)

    def waiting(self) -> int:
        with self._lock:
            return sum(len(line) for line in self._lines)

    def _take(self, line: int) -> None:
        called = threading.Event()
        with self._lock:
            if self._free > 0 and not any(self._lines):
                self._free -= 1
                self._mine.line = line
                return
            self._lines[line].append(called)
        if not called.wait(self.wait_s):
            with self._lock:
                if not called.is_set():  # else it was handed over just as the wait ran out
                    self._lines[line].remove(called)
                    self.waited_out += 1
                    self._mine.line = None
                    log.warning("a script run waited %.0f s for its turn and goes on without one", self.wait_s)
                    return
        self._mine.line = line

    def _give(self) -> None:
        if getattr(self._mine, "line", None) is None:
            return  # went on without a turn: nothing to hand over
        self._mine.line = None
        with self._lock:
            for line in self._lines:
                if line:
                    line.popleft().set()  # the slot passes straight to the next in line
                    return
            self._free += 1

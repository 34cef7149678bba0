"""How often a pending part of a page polls: every poll is a script rerun in the one server process, so
the room's polls together are held near a rate the server can serve besides the reruns people cause."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

POLLS_PER_S = 60.0  # a poll costs the server ~10 ms (bench/workshop.py): about 0.6 of a core for the room
BACKGROUND_POLLS_PER_S = 10.0  # a figure filling in the background (the curve): a sixth of the room's rate
ACTIVE_WINDOW_S = 30.0  # a session that drew a pending part this recently counts as polling


class Pacing:
    """Sessions seen recently, and the poll interval that keeps their polls near ``polls_per_s``."""

    def __init__(
        self,
        polls_per_s: float = POLLS_PER_S,
        window_s: float = ACTIVE_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.polls_per_s, self.window_s, self.clock = polls_per_s, window_s, clock
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def seen(self, session: str) -> None:
        with self._lock:
            self._seen[session] = self.clock()

    def active(self) -> int:
        """Sessions seen within the window (older ones are forgotten)."""
        cutoff = self.clock() - self.window_s
        with self._lock:
            self._seen = {s: t for s, t in self._seen.items() if t >= cutoff}
            return len(self._seen)

    def every(self, base: float, polls_per_s: float | None = None) -> float:
        """The interval for a part that would poll every ``base`` seconds alone: slower as the room grows, so that
        the room's polls of this part stay near ``polls_per_s`` (default: the room's whole rate)."""
        return max(base, self.active() / (polls_per_s or self.polls_per_s))

"""Progress as people expect it, drawn by tqdm: a widget in a Jupyter notebook, a bar with rate and ETA on a
terminal, and in a log (stderr not a terminal) one plain line every few seconds, never a carriage return."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

LOG_EVERY_S = 10.0  # a log gets one line this often while a bar runs, and always its first and last


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (where tqdm.auto draws a widget)."""
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    ip = shell.get_ipython()
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


class Bar:
    """A ``progress(done, total)`` callable. A call whose ``total`` differs from the last one's, or whose ``done``
    went back, starts a new bar (one object can follow several runs in turn); ``done == total`` closes it.

    ``file`` defaults to stderr; ``clock`` is injectable for tests."""

    def __init__(
        self,
        desc: str,
        unit: str = "point",
        file: TextIO | None = None,
        every_s: float = LOG_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.desc, self.unit, self.every_s, self.clock = desc, unit, every_s, clock
        self._file = file
        self._bar = None  # tqdm, while a bar is drawn live
        self._total: int | None = None
        self._done = 0
        self._start = 0.0
        self._last: float | None = None  # when the last plain line was written

    @property
    def file(self) -> TextIO:
        return self._file if self._file is not None else sys.stderr

    def live(self) -> bool:
        """Drawn by tqdm (a notebook or a terminal), else plain lines."""
        return in_notebook() or bool(getattr(self.file, "isatty", lambda: False)())

    def __call__(self, done: int, total: int) -> None:
        self.update(done, total)

    def update(self, done: int, total: int, postfix: str = "") -> None:
        """``done`` of ``total`` units finished; ``postfix`` is shown after the rate (e.g. the last estimate)."""
        if total != self._total or done < self._done:
            self.close()
            self._open(total)
        self._done = done
        if self._bar is not None:
            self._bar.n = done
            self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.refresh()
        else:
            now = self.clock()
            if self._last is None or done >= total or now - self._last >= self.every_s:
                self._line(done, total, now, postfix)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._total, self._done = None, None, 0

    def _open(self, total: int) -> None:
        self._total, self._done = total, 0
        self._start, self._last = self.clock(), None
        if self.live():
            from tqdm.auto import tqdm

            file = None if in_notebook() else self.file
            self._bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=file, dynamic_ncols=True)

    def _line(self, done: int, total: int, now: float, postfix: str) -> None:
        from tqdm import tqdm

        self._last = now
        text = tqdm.format_meter(
            done, total, now - self._start, prefix=self.desc, unit=self.unit, postfix=postfix, ascii=True
        )
        print(text, file=self.file, flush=True)

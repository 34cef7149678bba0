"""A worker the scheduler can hold that is a thread of this process rather than a process of its own."""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)


class ThreadProcess:
    """A thread shaped like the ``multiprocessing.Process`` the scheduler expects: ``sentinel`` becomes
    readable when the thread ends. Behind a Ray slot, and behind the stand-in workers of tests."""

    def __init__(self, target, name: str) -> None:
        self._read, self._write = os.pipe()
        self._thread = threading.Thread(target=self._main, args=(target,), name=name, daemon=True)
        self.pid = None
        self.exitcode: int | None = None

    def _main(self, target) -> None:
        try:
            target()
            self.exitcode = 0
        except Exception:
            log.exception("%s failed", self._thread.name)
            self.exitcode = 1
        finally:
            os.close(self._write)

    @property
    def sentinel(self) -> int:
        return self._read

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def kill(self) -> None:
        """The thread ends when its pipe closes (the service closes it before calling this)."""

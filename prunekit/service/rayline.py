"""A long Ray task's line to the driver: its latest progress one way, a stop the other.

An actor of its own module, importing nothing but Ray: the process Ray starts for it imports this module only,
and the progress it holds stays pickled bytes, so that process never loads torch or prunekit's engine.
"""

from __future__ import annotations

import ray


@ray.remote(num_cpus=0)
class Line:
    def __init__(self) -> None:
        self.progress: bytes | None = None
        self.stopped = False

    def report(self, progress: bytes) -> bool:
        """The task's latest progress (pickled); returns whether to go on."""
        self.progress = progress
        return not self.stopped

    def stop(self) -> None:
        self.stopped = True

    def latest(self) -> bytes | None:
        return self.progress

"""The chunk protocol of a full pass: how far it has gone (:class:`Resume`), the signal that hands its worker
back (:class:`Preempted`), and a running job's line to the scheduler (:class:`Control`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from prunekit.core.evaluate import Accuracy, Counts, from_counts
from prunekit.service.jobs import EvalJob, Report


@dataclass(frozen=True)
class Resume:
    """A full pass in chunks, as far as it has gone: the counts of chunks already scored (by any worker), and
    the chunks one run is to score (``todo``; None: every chunk not counted yet). ``chunks`` and ``images``
    size the whole pass; the figure is complete once every chunk is counted."""

    counted: tuple[tuple[int, Counts], ...] = ()  # (chunk index, its counts), in index order
    chunks: int = 0
    images: int = 0
    todo: tuple[int, ...] | None = None

    def merged(self, other: Resume) -> Resume:
        """Both runs' counts together (what the service keeps between runs: no ``todo``)."""
        counted = dict(self.counted) | dict(other.counted)
        return Resume(tuple(sorted(counted.items())), max(self.chunks, other.chunks), max(self.images, other.images))

    def remaining(self) -> list[int]:
        done = dict(self.counted)
        return [i for i in range(self.chunks) if i not in done]

    def share(self, ways: int) -> list[Resume]:
        """The remaining chunks cut into at most ``ways`` runs of consecutive chunks, as even as they go."""
        left = self.remaining()
        cut = [left[k * len(left) // ways : (k + 1) * len(left) // ways] for k in range(ways)]
        return [replace(self, todo=tuple(part)) for part in cut if part]

    def accuracy(self) -> Accuracy | None:
        """The full figure once every chunk is counted (the same however the chunks were shared), else None."""
        if self.chunks == 0 or self.remaining():
            return None
        return from_counts([c for _, c in self.counted], self.images)


class Preempted(Exception):  # noqa: N818 - a signal, not an error: the pass hands its worker back
    """Raised between chunks of a full pass when the scheduler wants its worker for live work."""

    def __init__(self, resume: Resume) -> None:
        super().__init__(f"preempted after {len(resume.counted)} of {resume.chunks} chunks")
        self.resume = resume


def _never() -> bool:
    return False


@dataclass
class Control:
    """A running job's line to the scheduler (a worker's pipe); a plain call passes none of it."""

    report: Report | None = None  # a recovery's progress
    partial: Callable[[EvalJob, Accuracy], None] | None = None  # the estimate a full pass scored first
    preempted: Callable[[], bool] = _never  # asked between chunks of a full pass; True: hand the worker back
    resume: Resume | None = None  # where an earlier, preempted run of this job stopped

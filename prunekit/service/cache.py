"""The evaluation service's results: in memory, and on disk when a :class:`ResultStore` is given.

Disk keys are the model's fingerprint (weights + evaluation set), the job and the code version. A job read
from the store and absent is remembered as absent (a rerun or poll never reads SQLite for it again), and
every configuration's accuracy curve is one snapshot, replaced as each point lands, so reading a curve is
a dict read. Thread-safe: pages read from their threads while the scheduler thread writes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path

from prunekit.core.evaluate import Accuracy
from prunekit.service.codec import decode, encode
from prunekit.service.jobs import EvalJob
from prunekit.service.store import ResultStore, digest
from prunekit.service.watch import Watchers

MAX_OUTCOMES = 100_000
MAX_MISSES = 200_000


def code_version(root: Path | None = None) -> str:
    """A digest of every Python file of the package (``root``, default prunekit/) except the app's:
    editing any of them invalidates stored results. The whole package, not a hand-kept list, so that
    no file a result depends on (how data is read, calibration, the zoo) can be forgotten; the app only
    shows results, so restyling a page keeps them."""
    root = root or Path(__file__).parent.parent
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*.py") if p.relative_to(root).parts[0] != "app"):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def curve_key(job: EvalJob) -> EvalJob:
    """The configuration a grid point belongs to: the job at sparsity 0 on the full split."""
    return dataclasses.replace(job.at(0.0), subset=None, shard=None)


class ResultCache:
    """Outcomes by canonical job (memory, then the store)."""

    def __init__(self, store: ResultStore | None, code: str) -> None:
        self.store, self._code = store, code
        self._lock = threading.Lock()
        self._outcomes: OrderedDict[EvalJob, object] = OrderedDict()
        self._misses: set[EvalJob] = set()
        self._fingerprints: dict[str, Callable[[], str] | str] = {}
        self._points: dict[EvalJob, dict[float, Accuracy]] = {}  # per configuration: its curve, replaced whole
        self._points_read: set[EvalJob] = set()  # configurations whose grid was read from the store once
        self.watchers = Watchers()  # told of every outcome put here, as it lands

    def __len__(self) -> int:
        return len(self._outcomes)

    def register(self, model: str, fingerprint: Callable[[], str] | str) -> None:
        """``model``'s results may be stored, keyed by ``fingerprint`` (computed on first use if callable)."""
        with self._lock:
            self._fingerprints[model] = fingerprint

    def registered(self, model: str) -> bool:
        return model in self._fingerprints

    def lookup(self, job: EvalJob, read_disk: bool = True) -> object | None:
        """The outcome of canonical ``job`` if known; the store is read once per job, and only with ``read_disk``.
        A hit or a known miss is a dict read without the lock (every poll of every session makes them)."""
        outcome = self._outcomes.get(job)  # oldest written first out: no reordering on a read
        if outcome is not None or not read_disk or job in self._misses:
            return outcome
        return self._from_disk(job)

    def put(self, job: EvalJob, outcome: object) -> None:
        """Keep ``outcome`` in memory (readers see it at once) and tell whoever watches ``job``."""
        with self._lock:
            self._keep(job, outcome)
        self.watchers.tell(job, outcome)

    def persist(self, job: EvalJob, outcome: object) -> None:
        """Write ``outcome`` to the store, if there is one and ``job``'s model has a fingerprint (a
        SQLite write: the scheduler calls it outside its lock)."""
        key = self._key(job)
        value = encode(job, outcome) if key else None
        if value is not None:
            self.store.put(key, value)

    def forget(self, job: EvalJob) -> None:
        with self._lock:
            self._outcomes.pop(job, None)

    def curve(self, template: EvalJob, grid: Iterable[float]) -> dict[float, Accuracy]:
        """The snapshot of ``template``'s configuration and scope: sparsity -> full-split accuracy, the
        dense figure at 0. The first call reads the grid from the store once; later ones are dict reads."""
        key = curve_key(template)
        with self._lock:
            points = self._points.get(key) if key in self._points_read else None
        if points is None:
            for s in grid:  # lands in the snapshot through _keep
                self.lookup(dataclasses.replace(template.at(s), subset=None, shard=None).canonical())
            with self._lock:
                self._points_read.add(key)
                points = self._points.get(key, {})
        dense = self.lookup(EvalJob(template.model)) if 0.0 not in points else None
        return {0.0: dense, **points} if isinstance(dense, Accuracy) else points

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    # --- with the lock held ------------------------------------------------------------------------

    def _keep(self, job: EvalJob, outcome: object) -> None:
        self._outcomes[job] = outcome
        self._misses.discard(job)
        if type(job) is EvalJob and job.subset is None and job.shard is None and isinstance(outcome, Accuracy):
            key = curve_key(job)  # a new dict: readers keep the one they hold
            self._points[key] = {**self._points.get(key, {}), job.spec.sparsity: outcome}
        while len(self._outcomes) > MAX_OUTCOMES:
            self._outcomes.popitem(last=False)

    # --- the disk store ------------------------------------------------------------------------------

    def _key(self, job: EvalJob) -> str | None:
        with self._lock:
            fp = self._fingerprints.get(job.model)
        if self.store is None or fp is None:
            return None
        if callable(fp):
            fp = fp()
            with self._lock:
                self._fingerprints[job.model] = fp
        return digest(job.key(), fp, self._code)

    def _from_disk(self, job: EvalJob) -> object | None:
        key = self._key(job)
        value = self.store.get(key) if key else None
        if value is None:
            if key:  # known absent until this service computes it (other writers' later results: not seen)
                with self._lock:
                    if len(self._misses) > MAX_MISSES:
                        self._misses.clear()
                    self._misses.add(job)
            return None
        try:
            outcome = decode(job, value)
        except (TypeError, KeyError):
            return None  # written by another version of the result type: ignored, never shown
        with self._lock:
            self._keep(job, outcome)
        return outcome

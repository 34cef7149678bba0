"""What the evaluation service computes: an :class:`EvalJob` names one accuracy measurement, and
:func:`run_job` measures it inside a worker process. Jobs are small, frozen and hashable: identical
requests from many sessions are the same job, and a job is the key of its result.
"""

from __future__ import annotations

import base64
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace

import torch

from prunekit.core.allocate import PruneConfig, check_sparsity
from prunekit.core.connectivity import Connectivity
from prunekit.core.data import EvalData
from prunekit.core.evaluate import (
    Accuracy,
    Counts,
    accuracy_of,
    count_correct,
    from_counts,
    predict_logits,
    stratified_indices,
)
from prunekit.core.forget import prediction_dtype
from prunekit.core.importance import FILTER
from prunekit.core.lab import Lab, Pruner
from prunekit.core.loaded import ModelSpec
from prunekit.deploy.latency import UNSTRUCTURED_NOTE, Latency, LatencyConfig, machine_name, measure
from prunekit.deploy.recover import CurvePoint, Recipe, Recovery, recover
from prunekit.errors import CompactionError, InvalidArgumentError, ProbeUnsupportedError

DENSE = "dense"  # the criterion of a job that prunes nothing
EVAL_BATCH = 64  # with channels_last, the fastest one-thread setting on the bundled models (bench/evalspeed.py)
ESTIMATE_IMAGES = 1000  # an estimate scores this fixed stratified subset; a full pass scores it first
CHUNK_IMAGES = 1000  # a full pass looks for preemption between chunks this big (fmnist-vgg: ~0.5 s of a core)


@dataclass(frozen=True)
class EvalJob:
    """The accuracy of ``model`` pruned by one configuration, on the full evaluation split
    (``subset=None``) or on a fixed stratified subset of about ``subset`` images (an estimate)."""

    model: str
    criterion: str = DENSE
    structure: str = "unstructured"
    normalise: str = "none"
    sparsity: float = 0.0
    scope: str = "global"
    keep_first_last: bool = False
    overrides: tuple[tuple[str, float], ...] = ()
    subset: int | None = None
    shard: tuple[int, int] | None = None  # images [start, stop) only: one part of a full-split figure

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        if self.subset is not None and self.subset <= 0:
            raise InvalidArgumentError(f"subset must be a positive image count or None, got {self.subset}")
        if self.shard is not None and not (0 <= self.shard[0] < self.shard[1]):
            raise InvalidArgumentError(f"a shard is [start, stop) with 0 <= start < stop, got {self.shard}")

    @property
    def is_dense(self) -> bool:
        return self.criterion == DENSE

    def canonical(self) -> EvalJob:
        """The same measurement under one name: every configuration that prunes nothing is the dense job."""
        if self.sparsity == 0.0 and not self.overrides and not self.is_dense:
            return EvalJob(self.model, subset=self.subset)
        return self

    def with_subset(self, subset: int | None) -> EvalJob:
        return replace(self, subset=subset)

    def config(self) -> PruneConfig:
        return PruneConfig(self.sparsity, self.scope, self.keep_first_last, dict(self.overrides))

    def key(self) -> list:
        """A JSON-friendly identity (for the persistent store)."""
        return [
            self.model,
            self.criterion,
            self.structure,
            self.normalise,
            round(self.sparsity, 6),
            self.scope,
            self.keep_first_last,
            [list(o) for o in self.overrides],
            self.subset,
            *([list(self.shard)] if self.shard else []),  # unsharded keys stay as they were
        ]


@dataclass(frozen=True)
class SpeedJob(EvalJob):
    """Latency of the dense, masked and (filter structure) compacted model at one configuration."""

    def canonical(self) -> SpeedJob:
        return self

    def key(self) -> list:
        return ["speed", machine_name(), *super().key()]


@dataclass(frozen=True)
class PathJob(EvalJob):
    """The path test (effective sparsity, collapse) of one configuration: a whole forward and backward of
    the linearised model, measured apart from the slider move on models too big to do it inline."""

    def canonical(self) -> PathJob:
        return self

    def key(self) -> list:
        return ["paths", *super().key()]


@dataclass(frozen=True)
class CollapseJob(EvalJob):
    """The smallest sparsity at which ``scope`` collapses the network (a bisection of path tests), measured
    apart from the page on models too big to run it in a rerun; the job's sparsity is 0."""

    def canonical(self) -> CollapseJob:
        return self

    def key(self) -> list:
        return ["collapse", *super().key()]


@dataclass(frozen=True)
class PredictJob(EvalJob):
    """The predicted class of every image of the evaluation set (file order), for what pruning forgets."""

    def canonical(self) -> PredictJob:
        return self

    def key(self) -> list:
        return ["predict", *super().key()]


@dataclass(frozen=True)
class Predictions:
    """A :class:`PredictJob`'s outcome, compact: one byte per image up to 256 classes (``dtype``)."""

    data: bytes
    dtype: str  # a torch dtype's name: "uint8" or "int32"

    @classmethod
    def of(cls, classes: torch.Tensor, n_classes: int) -> Predictions:
        dtype = prediction_dtype(n_classes)
        return cls(classes.to(dtype).contiguous().numpy().tobytes(), str(dtype).removeprefix("torch."))

    def tensor(self) -> torch.Tensor:
        """(N,) int64 predicted classes."""
        return torch.frombuffer(bytearray(self.data), dtype=getattr(torch, self.dtype)).long()


@dataclass(frozen=True)
class Collapse:
    """A :class:`CollapseJob`'s outcome: the collapse point, or None when the scope never collapses."""

    point: float | None


@dataclass(frozen=True)
class RecoverJob(EvalJob):
    """Recovery (BN recalibration, masked fine-tune, a schedule) of one configuration by ``recipe``."""

    recipe: Recipe = field(default_factory=Recipe)

    def canonical(self) -> RecoverJob:
        return self

    def key(self) -> list:
        return ["recover", *super().key(), asdict(self.recipe)]


SPEED = LatencyConfig(runs=15, budget_s=3.0)
Report = Callable[[Recovery], bool]  # a recovery's progress; False: stop


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


def encode(outcome: Accuracy | Latency | Recovery | Connectivity | Collapse | Predictions) -> dict | None:
    """A JSON-friendly form for the result store; None for what must not be stored (a stopped run)."""
    if isinstance(outcome, Predictions):
        return {"data": base64.b64encode(outcome.data).decode("ascii"), "dtype": outcome.dtype}
    if isinstance(outcome, Latency):
        return outcome.to_json()
    if isinstance(outcome, Recovery):
        if outcome.stopped:
            return None
        return {
            "accuracy": {k: asdict(v) if v else None for k, v in outcome.accuracy.items()},
            "curve": [asdict(p) for p in outcome.curve],
            **{k: getattr(outcome, k) for k in ("step", "total_steps", "stopped", "seconds", "train_images")},
        }
    return asdict(outcome)


def decode(job: EvalJob, value: dict) -> Accuracy | Latency | Recovery | Connectivity | Collapse | Predictions:
    """The inverse of :func:`encode` for ``job``'s kind; TypeError/KeyError when written by another version."""
    if isinstance(job, PredictJob):
        return Predictions(base64.b64decode(value["data"]), value["dtype"])
    if isinstance(job, PathJob):
        return Connectivity(**value)
    if isinstance(job, CollapseJob):
        return Collapse(**value)
    if isinstance(job, SpeedJob):
        return Latency.from_json(value)
    if isinstance(job, RecoverJob):
        acc = {k: Accuracy(**v) if v else None for k, v in value["accuracy"].items()}
        rest = {k: v for k, v in value.items() if k not in ("accuracy", "curve")}
        return Recovery(acc, [CurvePoint(**p) for p in value["curve"]], **rest)
    return Accuracy(**value)


class JobRunner:
    """Worker-side state: loaded models and a bounded set of pruners (working copies) per process."""

    def __init__(self, max_pruners: int = 4, channels_last: bool = True) -> None:
        self.labs: dict[str, Lab] = {}
        self.pruners: OrderedDict[tuple, Pruner] = OrderedDict()
        self.max_pruners = max_pruners
        self.channels_last = channels_last
        self._images: dict[str, torch.Tensor] = {}
        self._folder_data: dict[str, EvalData] = {}
        self._compacted: OrderedDict[tuple, torch.nn.Module | None] = OrderedDict()
        self._subsets: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def load(self, key: str, spec: ModelSpec) -> None:
        """Load a model into this worker. Its copy and images go channels_last (bench/evalspeed.py:
        2.7x on fmnist-cnn, same top-1); they belong to this process alone, so nothing shared changes."""
        if key in self.labs:
            return
        lab = Lab(spec.load())
        if lab.loaded.eval_folder is not None:  # read a shard at a time, by the job that needs it
            if self.channels_last:
                lab.loaded.model.to(memory_format=torch.channels_last)
            self.labs[key] = lab
            return
        images = lab.loaded.eval_data().images
        if self.channels_last and images.dim() == 4:
            lab.loaded.model.to(memory_format=torch.channels_last)
            images = images.contiguous(memory_format=torch.channels_last)
        self._images[key] = images
        self._warm(lab, images)
        self.labs[key] = lab

    @staticmethod
    def _warm(lab: Lab, images: torch.Tensor) -> None:
        """The first forward of a model is slow (allocator, kernels): pay it at load, not in a live job."""
        few = images[:8]
        accuracy_of(lab.loaded.model, few, torch.zeros(few.shape[0], dtype=torch.long), few.shape[0])

    def run(self, job: EvalJob, control: Control | None = None) -> Accuracy | Latency | Recovery | Resume:
        """Measure ``job``; ``control`` carries a recovery's progress, a full pass's estimate and preemption
        (raises :class:`Preempted` between chunks when asked to), and the chunks of a shared pass to score
        (then the answer is a :class:`Resume` with their counts unless they completed the pass)."""
        control = control or Control()
        lab = self.labs.get(job.model)
        if lab is None:
            raise InvalidArgumentError(f"model {job.model!r} was never loaded in this worker")
        if isinstance(job, SpeedJob):
            return self._speed(lab, job)
        if isinstance(job, PathJob):
            return self._paths(lab, job)
        if isinstance(job, CollapseJob):
            return Collapse(self._pruner(lab, job).collapse_point(job.config()))
        if isinstance(job, PredictJob):
            return self._predict(lab, job)
        if isinstance(job, RecoverJob):
            out = recover(lab, (job.criterion, job.structure, job.normalise), job.config(), job.recipe, control.report)
            return replace(out, model=None)
        model = lab.loaded.model if job.is_dense else self._scored(lab, job)
        if job.shard is not None:
            return self._shard(lab, job, model)
        data, images = self._whole(job.model, lab)
        if job.subset is None and len(data) > ESTIMATE_IMAGES:
            return self._progressive(job, model, self._chunks(job.model, images, data.labels), len(data), control)
        if job.subset is None or job.subset >= len(data):
            return accuracy_of(model, images, data.labels, len(data), EVAL_BATCH)
        sub_images, sub_labels = self._subset(job.model, images, data.labels, job.subset)
        return accuracy_of(model, sub_images, sub_labels, len(data), EVAL_BATCH)

    def _progressive(self, job: EvalJob, model, chunks: list, total: int, control: Control) -> Accuracy | Resume:
        """One pass over the set in chunks: the estimate's stratified images first (reported at once as the
        estimate job's result, identical to running it), then the rest; the counts add up to the full figure.
        After the first chunk (the estimate, always reported) the pass may be preempted between chunks,
        handing back its counts so far to resume from. A run given some chunks only (``control.resume.todo``:
        the service shares a live pass among idle workers) answers their counts; the service adds them up."""
        start = control.resume or Resume()
        counted, todo = dict(start.counted), start.todo if start.todo is not None else range(len(chunks))
        for i in todo:
            if i in counted:
                continue
            if counted and control.preempted():
                raise Preempted(Resume(tuple(sorted(counted.items())), len(chunks), total))
            counted[i] = count_correct(model, *chunks[i], EVAL_BATCH)
            if i == 0 and control.partial is not None:
                control.partial(job.with_subset(ESTIMATE_IMAGES), from_counts([counted[0]], total))
        done = Resume(tuple(sorted(counted.items())), len(chunks), total)
        figure = done.accuracy()
        return done if figure is None else figure

    def _chunks(
        self, model: str, images: torch.Tensor, labels: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The pass order: the estimate's images, then the others in file order, in chunks of CHUNK_IMAGES."""
        if (model, "chunks") not in self._subsets:
            head = self._subset(model, images, labels, ESTIMATE_IMAGES)
            keep = torch.ones(len(labels), dtype=torch.bool)
            keep[stratified_indices(labels, ESTIMATE_IMAGES)] = False
            rest = keep.nonzero().flatten()
            chunks = [head] + [self._pick(images, labels, idx) for idx in rest.split(CHUNK_IMAGES)]
            self._subsets[(model, "chunks")] = chunks
        return self._subsets[(model, "chunks")]

    @staticmethod
    def _pick(images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``images[idx]`` in the layout ``images`` have (channels_last stays channels_last)."""
        layout = (
            torch.channels_last
            if images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last)
            else None
        )
        picked = images[idx].contiguous(memory_format=layout) if layout else images[idx]
        return picked, labels[idx]

    def _whole(self, key: str, lab: Lab) -> tuple[EvalData, torch.Tensor]:
        """The whole evaluation set and its images as this worker keeps them (a folder is read once, by the
        first job that is not a shard: the app asks for whole-set figures)."""
        if lab.loaded.eval_folder is None:
            return lab.loaded.eval_data(), self._images[key]
        if key not in self._folder_data:
            data = lab.loaded.eval_data()
            images = data.images.contiguous(memory_format=torch.channels_last) if self.channels_last else data.images
            self._folder_data[key], self._images[key] = data, images
        return self._folder_data[key], self._images[key]

    def _shard(self, lab: Lab, job: EvalJob, model: torch.nn.Module) -> Accuracy:
        """Accuracy on images ``job.shard`` only (read from the folder, or cut from the images in memory)."""
        start, stop = job.shard
        if lab.loaded.eval_folder is not None:
            part = lab.loaded.eval_folder.read(start, stop)
            images, labels = part.images, part.labels
        else:
            images, labels = self._images[job.model][start:stop], lab.loaded.eval_data().labels[start:stop]
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return accuracy_of(model, images, labels, len(labels), EVAL_BATCH)

    def _pruner(self, lab: Lab, job: EvalJob) -> Pruner:
        key = (job.model, job.criterion, job.structure, job.normalise)
        if key not in self.pruners:
            self.pruners[key] = lab.pruner(job.criterion, job.structure, job.normalise)
            while len(self.pruners) > self.max_pruners:
                self.pruners.popitem(last=False)
        self.pruners.move_to_end(key)
        return self.pruners[key]

    def _scored(self, lab: Lab, job: EvalJob) -> torch.nn.Module:
        """The model ``job``'s accuracy is measured on: for filters the compacted one (the same outputs,
        2-4x fewer multiply-adds), the masked one where compaction is refused (collapse, uneven groups)."""
        if job.structure != FILTER or job.subset is not None:  # an estimate's few images do not pay for surgery
            return self._pruned(lab, job)
        key = (job.model, job.criterion, job.normalise, job.config().key())
        if key not in self._compacted:
            try:
                model = self._pruner(lab, job).compact(job.config()).model
                self._compacted[key] = model.to(memory_format=torch.channels_last) if self.channels_last else model
            except CompactionError:
                self._compacted[key] = None
            while len(self._compacted) > 2:  # the shards of one job share it; keep little
                self._compacted.popitem(last=False)
        return self._compacted[key] or self._pruned(lab, job)

    def _pruned(self, lab: Lab, job: EvalJob) -> torch.nn.Module:
        pruner = self._pruner(lab, job)
        pruner.apply_(job.config())
        return pruner.model

    def _predict(self, lab: Lab, job: PredictJob) -> Predictions:
        """Every image's predicted class, on the model an accuracy of ``job`` is measured on."""
        model = lab.loaded.model if job.is_dense else self._scored(lab, job)
        data, images = self._whole(job.model, lab)
        with torch.no_grad():
            classes = predict_logits(model, images, EVAL_BATCH).argmax(1)
        return Predictions.of(classes, len(data.classes))

    def _paths(self, lab: Lab, job: PathJob) -> Connectivity:
        conn = self._pruner(lab, job).paths(job.config())
        if conn is None:
            raise ProbeUnsupportedError(lab.probe_unavailable)
        return conn

    def _speed(self, lab: Lab, job: SpeedJob) -> Latency:
        """Dense, masked and compacted latency, each in this worker's memory layout and thread count."""
        pruner, note, compact = self._pruner(lab, job), UNSTRUCTURED_NOTE, {}
        if job.structure == FILTER:
            try:
                layout = torch.channels_last if self.channels_last else torch.contiguous_format
                compact["compact"] = pruner.compact(job.config()).model.to(memory_format=layout)
                note = None
            except CompactionError as exc:
                note = str(exc)
        models = {"dense": lab.loaded.model, "masked": self._pruned(lab, job), **compact}
        latency = measure(models, lab.loaded.input_spec.shape, SPEED)
        latency.note = note
        return latency

    def _subset(
        self, model: str, images: torch.Tensor, labels: torch.Tensor, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if (model, n) not in self._subsets:
            self._subsets[(model, n)] = self._pick(images, labels, stratified_indices(labels, n))
        return self._subsets[(model, n)]


def worker_main(conn, threads: int, nice: int = 0) -> None:
    """A worker process: receive ``(job, spec-or-None, resume-or-None)``, answer as :func:`answer` does
    (ok, error, preempted or part); meanwhile send ``("partial", ...)`` and
    ``("progress", ...)`` and heed ``("stop", job)`` and ``("preempt", job)``.

    ``nice`` lowers the worker's CPU priority so that the web server (and a browser on the same
    machine) stay responsive while the workers keep every core busy.
    """
    if nice:
        os.nice(nice)
    torch.set_num_threads(threads)
    runner = JobRunner()
    for job, spec, resume in jobs_from(conn):
        try:
            conn.send(answer(runner, job, spec, _control(conn, job, resume)))
        except (BrokenPipeError, EOFError, OSError):
            return  # the server went away


def jobs_from(conn) -> Iterator[tuple[EvalJob, ModelSpec | None, Resume | None]]:
    """The ``(job, spec, resume)`` messages a worker receives, until the service closes the pipe; a stop or
    preempt read here is for a job that has already finished, and is dropped."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if not isinstance(message[0], str):
            yield message


PROGRESS_EVERY_S = 0.25


class _Inbox:
    """What the scheduler says about the running job while it runs: stop (a recovery), preempt (a full pass)."""

    def __init__(self, conn, job: EvalJob) -> None:
        self.conn, self.job = conn, job
        self.stop = self.preempt = False

    def read(self) -> None:
        while self.conn.poll():
            kind, target = self.conn.recv()
            if target == self.job:
                self.stop |= kind == "stop"
                self.preempt |= kind == "preempt"


def _control(conn, job: EvalJob, resume: Resume | None) -> Control:
    """A worker's :class:`Control` over its pipe; a recovery's progress goes at most every PROGRESS_EVERY_S."""
    inbox, last = _Inbox(conn, job), [0.0]

    def report(progress: Recovery) -> bool:
        inbox.read()
        now = time.monotonic()
        if inbox.stop or now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            conn.send(("progress", job, replace(progress, model=None, curve=list(progress.curve))))
        return not inbox.stop

    def preempted() -> bool:
        inbox.read()
        return inbox.preempt

    return Control(report, lambda estimate, acc: conn.send(("partial", estimate, acc)), preempted, resume)


def answer(runner: JobRunner, job: EvalJob, spec: ModelSpec | None, control: Control | None = None) -> tuple:
    """Load ``spec`` if given, then run ``job``: ``("ok", job, outcome)``, ``("error", job, text)``,
    ``("preempted", job, Resume)`` when ``control`` asked the pass to hand its worker back, or
    ``("part", job, Resume)`` when it was given some of a pass's chunks and has scored them."""
    try:
        if spec is not None:
            runner.load(job.model, spec)
        outcome = runner.run(job, control)
        return ("part", job, outcome) if isinstance(outcome, Resume) else ("ok", job, outcome)
    except Preempted as stop:
        return ("preempted", job, stop.resume)
    except Exception as exc:  # reported on the page; the worker lives on
        return ("error", job, f"{type(exc).__name__}: {exc}")

"""A worker's side of the service: :class:`JobRunner` measures jobs on the models it has loaded (``worker`` runs
it in a process and speaks the protocol)."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path

import torch

from prunekit.core import prefix
from prunekit.core.connectivity import Connectivity
from prunekit.core.data import EvalData
from prunekit.core.evaluate import (
    Accuracy,
    Counts,
    accuracy_of,
    count_correct,
    counts_of,
    from_counts,
    predict_logits,
    stratified_indices,
)
from prunekit.core.importance import get_criterion
from prunekit.core.lab import Lab, Pruner
from prunekit.core.loaded import ModelSpec
from prunekit.core.oracle import GroupScores, Oracle, channel_slice, dense_loss, oracle
from prunekit.core.spec import Structure
from prunekit.deploy.engine import Choice, Engine, EngineKind, built_for, eager, fastest, refereed_counts
from prunekit.deploy.latency import UNSTRUCTURED_NOTE, Latency, measure
from prunekit.deploy.methods import train_sparse, write_result
from prunekit.deploy.recover import Recovery, recover
from prunekit.deploy.staircase import Staircase, staircase
from prunekit.deploy.training import MethodResult
from prunekit.errors import (
    CompactionError,
    InvalidArgumentError,
    ProbeUnsupportedError,
    UnknownNameError,
)
from prunekit.service.chunks import Control, Preempted, Resume
from prunekit.service.jobs import (
    CHUNK_IMAGES,
    ESTIMATE_IMAGES,
    EVAL_BATCH,
    SPEED,
    Collapse,
    CollapseJob,
    EvalJob,
    MethodJob,
    OracleJob,
    PathJob,
    Predictions,
    PredictJob,
    RecoverJob,
    ScoresJob,
    SpeedJob,
    StaircaseJob,
)
from prunekit.service.memory import release_freed_memory
from prunekit.service.store import default_path, digest

log = logging.getLogger(__name__)
ENGINE_ENV = "PRUNEKIT_ENGINE"  # "eager": never build another engine
MAX_ENGINES = 2  # configurations whose engine a worker keeps (the shards and chunks of one pass share it)
CHOICE_MACS = 2e9  # the engine choice at load times each engine on about this much work


class JobRunner:
    """Worker-side state: loaded models and a bounded set of pruners (working copies) per process."""

    def __init__(
        self,
        max_pruners: int = 4,
        channels_last: bool = True,
        writes_weights: bool = True,
        engines: bool | None = None,
        prefixes: bool = True,
    ) -> None:
        self.writes_weights = writes_weights  # False on a Ray node: the driver writes a method's weights itself
        # False: every pass runs eager (a test's reference; ``PRUNEKIT_ENGINE=eager`` if an engine misbehaves)
        self.engines = os.environ.get(ENGINE_ENV, "auto") != "eager" if engines is None else engines
        self.choices: dict[str, Choice] = {}  # per model: the engine its full passes run on, as measured at load
        self._engines: OrderedDict[tuple, Engine | str] = OrderedDict()  # per configuration: built, or why not
        self.prefixes: prefix.PrefixCache | None = prefix.PrefixCache() if prefixes else None
        self._traced: dict[str, torch.fx.GraphModule | None] = {}
        self.labs: dict[str, Lab] = {}
        self.pruners: OrderedDict[tuple, Pruner] = OrderedDict()
        self.max_pruners = max_pruners
        self.channels_last = channels_last
        self._images: dict[str, torch.Tensor] = {}
        self._folder_data: dict[str, EvalData] = {}
        self._compacted: OrderedDict[tuple, torch.nn.Module | None] = OrderedDict()
        self._subsets: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._dense_losses: dict[tuple[str, int | None], float] = {}  # the oracle's baseline per image set

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
        if self.engines:
            self.choices[key] = _choice(lab, images)
        self.labs[key] = lab

    def drop(self, key: str) -> None:
        """Forget model ``key`` and everything kept for it (images, working copies, compacted models, subsets):
        the server let it go. A later job for it loads it again from its spec."""
        self.labs.pop(key, None)
        self._images.pop(key, None)
        self._folder_data.pop(key, None)
        self.choices.pop(key, None)
        self._traced.pop(key, None)
        if self.prefixes is not None:
            self.prefixes.forget(key)
        for cache in (self.pruners, self._compacted, self._subsets, self._engines, self._dense_losses):
            for k in [k for k in cache if k[0] == key]:
                del cache[k]
        release_freed_memory()  # else the heap keeps the pages, and the worker's memory only grows

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
        kind = _KINDS.get(type(job))
        if kind is not None:
            return kind(self, lab, job, control)
        model = lab.loaded.model if job.is_dense else self._scored(lab, job)
        if job.shard is not None:
            return self._shard(lab, job, model)
        data, images = self._whole(job.model, lab)
        if job.subset is None and len(data) > ESTIMATE_IMAGES:
            return self._progressive(job, model, self._chunks(job.model, images, data.labels), len(data), control)
        if job.subset is None or job.subset >= len(data):
            return accuracy_of(model, images, data.labels, len(data), EVAL_BATCH)
        sub_images, sub_labels = self._subset(job.model, images, data.labels, job.subset)
        if not job.is_dense and self.prefixes is not None:
            counted = self._by_prefix(lab, job, model, sub_images, sub_labels)
            if counted is not None:
                return from_counts([counted], len(data))
        return accuracy_of(model, sub_images, sub_labels, len(data), EVAL_BATCH)

    def _by_prefix(
        self, lab: Lab, job: EvalJob, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor
    ) -> Counts | None:
        """The counts of ``model`` (a pruned working copy) on ``images`` / ``labels`` running only what pruning
        changed, on the dense activations before it (kept per subset); None where that saves nothing or the
        model cannot be traced. The logits are the plain pass's, bit for bit (tests/core/test_prefix.py)."""
        t0 = time.perf_counter()
        if job.model not in self._traced:
            self._traced[job.model] = prefix.trace(lab.loaded.model)
        traced = self._traced[job.model]
        changed = prefix.changed_modules(lab.loaded.model, model) if traced is not None else None
        split = prefix.cut(traced, changed, model) if changed else None
        if split is None:
            return None
        logits = self.prefixes.logits((job.model, len(labels)), split, images, EVAL_BATCH)
        return counts_of(logits, labels, time.perf_counter() - t0)

    def _progressive(self, job: EvalJob, model, chunks: list, total: int, control: Control) -> Accuracy | Resume:
        """One pass over the set in chunks: the estimate's stratified images first (reported at once as the
        estimate job's result, identical to running it), then the rest; the counts add up to the full figure.
        After the first chunk (the estimate, always reported) the pass may be preempted between chunks,
        handing back its counts so far to resume from. A run given some chunks only (``control.resume.todo``:
        the service shares a live pass among idle workers) answers their counts; the service adds them up."""
        start = control.resume or Resume()
        counted, todo = dict(start.counted), start.todo if start.todo is not None else range(len(chunks))
        engine = None
        for i in todo:
            if i in counted:
                continue
            if counted and control.preempted():
                raise Preempted(Resume(tuple(sorted(counted.items())), len(chunks), total))
            if i == 0:  # the estimate's images: at once, eager (building an engine would delay the first figure)
                counted[i] = count_correct(model, *chunks[i], EVAL_BATCH)
            else:
                spent = 0.0
                if engine is None:
                    engine, spent = self._engine(job, model, *chunks[i])
                got = refereed_counts(engine, model, *chunks[i], EVAL_BATCH)
                counted[i] = dataclasses.replace(got, seconds=got.seconds + spent)  # the build counts in the figure
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
        engine, spent = self._engine(job, model, images, labels)
        got = from_counts([refereed_counts(engine, model, images, labels, EVAL_BATCH)], len(labels))
        return dataclasses.replace(got, seconds=got.seconds + spent)

    def _engine(
        self, job: EvalJob, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[Engine, float]:
        """The engine ``job``'s configuration runs on (``model`` is it, eager) and the seconds spent building it
        now: built once per configuration if the model's measured choice is not eager, checked on ``images``
        (N, C, H, W) / ``labels`` (N,) first; one that cannot be built or disagrees is remembered as its reason."""
        choice = self.choices.get(job.model)
        if choice is None or choice.kind is EngineKind.EAGER:
            return eager(model, choice.note if choice else None), 0.0
        key = (job.model, "dense") if job.is_dense else (job.model, *job.spec.key())  # the structure too
        known = self._engines.get(key)
        if known is None:
            engine = built_for(model, images, labels)
            self._engines[key] = engine if engine.kind is not EngineKind.EAGER else engine.note or ""
            while len(self._engines) > MAX_ENGINES:
                self._engines.popitem(last=False)
            return engine, engine.build_s
        self._engines.move_to_end(key)
        # an eager fallback is rebuilt around today's model: the working copy moves on to other configurations
        return (known, 0.0) if isinstance(known, Engine) else (eager(model, known), 0.0)

    def _pruner(self, lab: Lab, job: EvalJob) -> Pruner:
        key = (job.model, *job.spec.table_key)
        if key not in self.pruners:
            self.pruners[key] = lab.pruner(job.spec)
            while len(self.pruners) > self.max_pruners:
                self.pruners.popitem(last=False)
        self.pruners.move_to_end(key)
        return self.pruners[key]

    def _scored(self, lab: Lab, job: EvalJob) -> torch.nn.Module:
        """The model ``job``'s accuracy is measured on: for filters the compacted one (the same outputs,
        2-4x fewer multiply-adds), the masked one where compaction is refused (collapse, uneven groups)."""
        if (
            not job.spec.structure.is_filter or job.subset is not None
        ):  # an estimate's few images do not pay for surgery
            return self._pruned(lab, job)
        key = (job.model, job.spec.criterion, job.spec.normalise, job.config().key())
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
        if job.spec.structure.is_filter:
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

    def _staircase(self, lab: Lab, job: StaircaseJob) -> Staircase:
        """One layer's latency at every width, in this worker's memory layout and thread count."""
        info = next((layer for layer in lab.profile.layers if layer.name == job.layer and layer.prunable), None)
        if info is None:
            prunable = [layer.name for layer in lab.profile.layers if layer.prunable]
            raise UnknownNameError("layer", job.layer, prunable)
        layer = lab.loaded.model.get_submodule(job.layer)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        return staircase(job.layer, layer, info.input_shape, info.macs, memory_format=layout)

    def _oracle(self, lab: Lab, job: OracleJob) -> Oracle:
        """Loss increases of one slice of one channel group (the dense model's images as this worker keeps them)."""
        cluster = next((c for c in lab.clusters if c.root == job.group), None)
        if cluster is None:
            raise UnknownNameError("channel group", job.group, [c.root for c in lab.clusters])
        data, images = self._whole(job.model, lab)
        labels = data.labels
        if job.subset is not None and job.subset < len(data):
            images, labels = self._subset(job.model, images, labels, job.subset)
        key = (job.model, job.subset)
        if key not in self._dense_losses:  # one dense pass for all of a model's slices
            self._dense_losses[key] = dense_loss(lab.loaded.model, images, labels)
        part = channel_slice(cluster, *job.channels)
        # the worker owns its model (hooked for the run, unhooked after) and keeps it channels_last already
        return oracle(lab.loaded.model, [part], images, labels, dense=self._dense_losses[key], private=True)

    def _scores(self, lab: Lab, job: ScoresJob) -> GroupScores:
        """A criterion's filter scores with its data-driven part on the last ``job.subset`` images."""
        table = lab.table_on(job.spec.criterion, Structure.FILTER, job.subset)
        reads = get_criterion(job.spec.criterion).needs_data
        return GroupScores.of(table, len(lab.calibration(job.subset)[1]) if reads else 0)

    def _subset(
        self, model: str, images: torch.Tensor, labels: torch.Tensor, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if (model, n) not in self._subsets:
            self._subsets[(model, n)] = self._pick(images, labels, stratified_indices(labels, n))
        return self._subsets[(model, n)]


def _choice(lab: Lab, images: torch.Tensor) -> Choice:
    """The engine ``lab``'s full passes run on: the faster one, timed on a sample (:func:`_sample`), unless a whole
    pass is no more work than that sample; then eager, untimed: timing the engines would cost more than any pass
    they could speed up (and building one costs more than such a pass: 0.6 s to import ONNX Runtime)."""
    work = lab.profile.total_macs * len(images)
    if work <= CHOICE_MACS:
        return Choice(
            EngineKind.EAGER, note=f"a full pass is {work / 1e6:,.0f} MMAC of work: too little to time engines on"
        )
    return fastest(lab.loaded.model, *_sample(lab, images), threads=torch.get_num_threads())


def _sample(lab: Lab, images: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The images an engine choice is timed on, and the batch: about ``CHOICE_MACS`` of work, 16-256 images."""
    n = int(max(16, min(256, CHOICE_MACS // max(lab.profile.total_macs, 1))))
    return images[:n], min(EVAL_BATCH, n)


def _collapse(runner: JobRunner, lab: Lab, job: CollapseJob, control: Control) -> Collapse:
    return Collapse(runner._pruner(lab, job).collapse_point(job.config()))


def _recover(runner: JobRunner, lab: Lab, job: RecoverJob, control: Control) -> Recovery:
    choice = runner.choices.get(job.model)
    engine = choice.kind if choice is not None else EngineKind.EAGER  # the full passes run as the model's do
    return recover(lab, job.spec, job.recipe, control.report, engine=engine).without_weights()


def weights_folder(job: MethodJob) -> Path:
    """Where a method job's trained weights and masks are written: beside the result store, by the job's key."""
    return default_path().parent / "methods" / digest(*job.key())


def keep_weights(job: MethodJob, result: MethodResult) -> MethodResult:
    """Write a finished method's trained weights to :func:`weights_folder` (other pages, and a download, open
    them there) and return the result without them, as it is stored and sent."""
    if not result.stopped:
        result.folder = str(weights_folder(job))
        write_result(result, job.model, Path(result.folder))
    return result.without_weights()


def _train_sparse(runner: JobRunner, lab: Lab, job: MethodJob, control: Control) -> MethodResult:
    result = train_sparse(lab, job.method, job.spec.sparsity, job.budget, control.report)
    return keep_weights(job, result) if runner.writes_weights else result


# How each kind of job other than an accuracy is measured: (runner, lab, job, control) -> outcome.
_KINDS = {
    SpeedJob: lambda runner, lab, job, control: runner._speed(lab, job),
    StaircaseJob: lambda runner, lab, job, control: runner._staircase(lab, job),
    OracleJob: lambda runner, lab, job, control: runner._oracle(lab, job),
    ScoresJob: lambda runner, lab, job, control: runner._scores(lab, job),
    PathJob: lambda runner, lab, job, control: runner._paths(lab, job),
    CollapseJob: _collapse,
    PredictJob: lambda runner, lab, job, control: runner._predict(lab, job),
    RecoverJob: _recover,
    MethodJob: _train_sparse,
}

"""What the evaluation service computes: an :class:`EvalJob` names one accuracy measurement, and
:func:`run_job` measures it inside a worker process. Jobs are small, frozen and hashable: identical
requests from many sessions are the same job, and a job is the key of its result.
"""

from __future__ import annotations

import importlib
import os
from collections import OrderedDict
from dataclasses import dataclass, replace

import torch

from prunekit.allocate import PruneConfig, check_sparsity
from prunekit.errors import InvalidArgumentError
from prunekit.evaluate import Accuracy, accuracy_of, stratified_indices
from prunekit.lab import Lab, Pruner
from prunekit.zoo import Loaded

DENSE = "dense"  # the criterion of a job that prunes nothing
EVAL_BATCH = 64  # with channels_last, the fastest one-thread setting on the bundled models (bench/evalspeed.py)


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads a model: ``loader`` is an importable ``'module:function'`` called with ``args``.

    The function returns a :class:`Loaded`. Only our own loaders are named here; nothing a user sent
    is imported or run (an upload travels as bytes to ``checkpoints.load_checkpoint``).
    """

    loader: str
    args: tuple = ()

    def load(self) -> Loaded:
        module, _, name = self.loader.partition(":")
        if not module or not name:
            raise InvalidArgumentError(f"a loader is 'module:function', got {self.loader!r}")
        return getattr(importlib.import_module(module), name)(*self.args)


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

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        if self.subset is not None and self.subset <= 0:
            raise InvalidArgumentError(f"subset must be a positive image count or None, got {self.subset}")

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
        ]


class JobRunner:
    """Worker-side state: loaded models and a bounded set of pruners (working copies) per process."""

    def __init__(self, max_pruners: int = 4, channels_last: bool = True) -> None:
        self.labs: dict[str, Lab] = {}
        self.pruners: OrderedDict[tuple, Pruner] = OrderedDict()
        self.max_pruners = max_pruners
        self.channels_last = channels_last
        self._images: dict[str, torch.Tensor] = {}
        self._subsets: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def load(self, key: str, spec: ModelSpec) -> None:
        """Load a model into this worker. Its copy and images go channels_last (bench/evalspeed.py:
        2.7x on fmnist-cnn, same top-1); they belong to this process alone, so nothing shared changes."""
        if key in self.labs:
            return
        lab = Lab(spec.load())
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

    def run(self, job: EvalJob) -> Accuracy:
        lab = self.labs.get(job.model)
        if lab is None:
            raise InvalidArgumentError(f"model {job.model!r} was never loaded in this worker")
        model = lab.loaded.model if job.is_dense else self._pruned(lab, job)
        data, images = lab.loaded.eval_data(), self._images[job.model]
        if job.subset is None or job.subset >= len(data):
            return accuracy_of(model, images, data.labels, len(data), EVAL_BATCH)
        sub_images, sub_labels = self._subset(job.model, images, data.labels, job.subset)
        return accuracy_of(model, sub_images, sub_labels, len(data), EVAL_BATCH)

    def _pruned(self, lab: Lab, job: EvalJob) -> torch.nn.Module:
        key = (job.model, job.criterion, job.structure, job.normalise)
        if key not in self.pruners:
            self.pruners[key] = lab.pruner(job.criterion, job.structure, job.normalise)
            while len(self.pruners) > self.max_pruners:
                self.pruners.popitem(last=False)
        self.pruners.move_to_end(key)
        pruner = self.pruners[key]
        pruner.apply_(job.config())
        return pruner.model

    def _subset(
        self, model: str, images: torch.Tensor, labels: torch.Tensor, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if (model, n) not in self._subsets:
            idx = stratified_indices(labels, n)
            layout = torch.channels_last if images.is_contiguous(memory_format=torch.channels_last) else None
            picked = images[idx].contiguous(memory_format=layout) if layout else images[idx]
            self._subsets[(model, n)] = (picked, labels[idx])
        return self._subsets[(model, n)]


def worker_main(conn, threads: int, nice: int = 0) -> None:
    """A worker process: receive ``(job, spec-or-None)``, answer ``("ok", job, fields)`` or ``("error", job, text)``.

    ``nice`` lowers the worker's CPU priority so that the web server (and a browser on the same
    machine) stay responsive while the workers keep every core busy.
    """
    if nice:
        os.nice(nice)
    torch.set_num_threads(threads)
    runner = JobRunner()
    while True:
        try:
            job, spec = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(_answer(runner, job, spec))
        except (BrokenPipeError, EOFError, OSError):
            return  # the server went away


def _answer(runner: JobRunner, job: EvalJob, spec: ModelSpec | None) -> tuple:
    try:
        if spec is not None:
            runner.load(job.model, spec)
        return ("ok", job, runner.run(job))
    except Exception as exc:  # reported on the page; the worker lives on
        return ("error", job, f"{type(exc).__name__}: {exc}")

"""What the evaluation service computes: an :class:`EvalJob` names one accuracy measurement of a model under a
:class:`PruneSpec`, and its kinds (latency, the path test, a collapse point, per-image predictions, a recovery)
name the other measurements. Jobs are small, frozen and hashable: identical requests from many sessions are the
same job, and a job is the key of its result. ``runner`` measures them, ``codec`` stores them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import torch

from prunekit.core.forget import prediction_dtype
from prunekit.core.spec import PruneConfig, PruneSpec, Scope
from prunekit.deploy.latency import LatencyConfig, machine_name
from prunekit.deploy.methods import get_method
from prunekit.deploy.recover import Recipe, Recovery
from prunekit.deploy.training import Budget
from prunekit.errors import InvalidArgumentError

DENSE = "dense"  # the criterion of a job that prunes nothing
DENSE_SPEC = PruneSpec(DENSE)
EVAL_BATCH = 64  # with channels_last, the fastest one-thread setting on the bundled models (bench/evalspeed.py)
ESTIMATE_IMAGES = 1000  # an estimate scores this fixed stratified subset; a full pass scores it first
CHUNK_IMAGES = 1000  # a full pass looks for preemption between chunks this big (fmnist-vgg: ~0.5 s of a core)


@dataclass(frozen=True)
class EvalJob:
    """The accuracy of ``model`` pruned by ``spec``, on the full evaluation split (``subset=None``) or on a
    fixed stratified subset of about ``subset`` images (an estimate)."""

    model: str
    spec: PruneSpec = DENSE_SPEC
    subset: int | None = None
    shard: tuple[int, int] | None = None  # images [start, stop) only: one part of a full-split figure

    def __post_init__(self) -> None:
        if not isinstance(self.spec, PruneSpec):
            raise InvalidArgumentError(f"a job's spec must be a PruneSpec, got {self.spec!r}")
        if self.subset is not None and self.subset <= 0:
            raise InvalidArgumentError(f"subset must be a positive image count or None, got {self.subset}")
        if self.shard is not None and not (0 <= self.shard[0] < self.shard[1]):
            raise InvalidArgumentError(f"a shard is [start, stop) with 0 <= start < stop, got {self.shard}")

    @classmethod
    def like(cls, job: EvalJob, **fields) -> EvalJob:
        """A job of this kind on ``job``'s model, spec, subset and shard (``fields`` replace any of them)."""
        same = {"model": job.model, "spec": job.spec, "subset": job.subset, "shard": job.shard}
        return cls(**(same | fields))

    @property
    def is_dense(self) -> bool:
        return self.spec.criterion == DENSE

    def canonical(self) -> EvalJob:
        """The same measurement under one name: every configuration that prunes nothing is the dense job."""
        if self.spec.sparsity == 0.0 and not self.spec.overrides and not self.is_dense:
            return EvalJob(self.model, subset=self.subset)
        return self

    def with_subset(self, subset: int | None) -> EvalJob:
        return replace(self, subset=subset)

    def at(self, sparsity: float) -> EvalJob:
        """This job at another sparsity."""
        return replace(self, spec=self.spec.at(sparsity))

    def with_scope(self, scope: Scope | str) -> EvalJob:
        return replace(self, spec=self.spec.with_scope(scope))

    def with_spec(self, **fields) -> EvalJob:
        """This job with some of its spec's fields replaced."""
        return replace(self, spec=replace(self.spec, **fields))

    def config(self) -> PruneConfig:
        return self.spec.config()

    def key(self) -> list:
        """A JSON-friendly identity (for the persistent store)."""
        spec = self.spec
        return [
            self.model,
            spec.criterion,
            spec.structure.value,
            spec.normalise.value,
            round(spec.sparsity, 6),
            spec.scope.value,
            spec.keep_first_last,
            [list(o) for o in spec.overrides],
            self.subset,
            *([list(self.shard)] if self.shard else []),  # unsharded keys stay as they were
            *([{"round_to": spec.round_to}] if spec.round_to > 1 else []),  # as unrounded ones do
        ]


@dataclass(frozen=True)
class SpeedJob(EvalJob):
    """Latency of the dense, masked and (filter structure) compacted model at one configuration."""

    def canonical(self) -> SpeedJob:
        return self

    def key(self) -> list:
        return ["speed", machine_name(), *super().key()]


@dataclass(frozen=True)
class StaircaseJob(EvalJob):
    """One layer's latency against the output width it keeps (``prunekit.deploy.staircase``), on this
    machine; the model is dense (the layer is rebuilt alone at every width)."""

    layer: str = ""

    def canonical(self) -> StaircaseJob:
        return self

    def key(self) -> list:
        return ["staircase", machine_name(), self.model, self.layer]


@dataclass(frozen=True)
class OracleJob(EvalJob):
    """The oracle (``prunekit.core.oracle``) for channels [start, stop) of the group rooted at ``group``: each
    removed alone from the dense model, on the stratified subset of ``subset`` images (None: the whole split)."""

    group: str = ""
    channels: tuple[int, int] = (0, 1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.channels[0] < self.channels[1]:
            raise InvalidArgumentError(f"an oracle job's channels are [start, stop), start < stop; got {self.channels}")

    def canonical(self) -> OracleJob:
        return self

    def key(self) -> list:
        return ["oracle", self.model, self.subset, self.group, list(self.channels)]


@dataclass(frozen=True)
class ScoresJob(EvalJob):
    """``spec.criterion``'s filter scores of every channel group (``core.oracle.GroupScores``), its data-driven
    part reading the last ``subset`` evaluation images (None: all of them): how a criterion's agreement with the
    oracle moves with the data it sees."""

    def canonical(self) -> ScoresJob:
        return self

    def key(self) -> list:
        return ["scores", self.model, self.spec.criterion, self.spec.structure.value, self.subset]


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
class JobError:
    """A job that could not be measured; ``message`` is shown on the page."""

    message: str


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


@dataclass(frozen=True)
class MethodJob(EvalJob):
    """A training method (``prunekit.deploy.methods``) reaching ``spec.sparsity`` on ``model`` with ``budget``:
    the same model, method, sparsity and budget is the same job, run once and stored."""

    method: str = "ft"
    budget: Budget = field(default_factory=Budget)

    def __post_init__(self) -> None:
        super().__post_init__()
        get_method(self.method)  # UnknownNameError names the methods

    @classmethod
    def of(cls, model: str, method: str, sparsity: float, budget: Budget) -> MethodJob:
        return cls(model, PruneSpec("magnitude", sparsity=sparsity), method=method, budget=budget)

    def canonical(self) -> MethodJob:
        return self

    def key(self) -> list:
        return ["method", self.model, self.method, round(self.spec.sparsity, 6), asdict(self.budget)]


SPEED = LatencyConfig(runs=15, budget_s=3.0)
Report = Callable[[Recovery], bool]  # a recovery's progress; False: stop


def reports_progress(job: EvalJob) -> bool:
    """Jobs that train: they report a :class:`Recovery` as they go and stop when asked (``Order.STOP``)."""
    return isinstance(job, RecoverJob | MethodJob)

"""Inference engines for evaluation passes: the model as PyTorch runs it (eager), or exported to ONNX and run by
ONNX Runtime on one intra-op thread (its graph optimiser folds BatchNorm into the convolutions).

An evaluation worker measures once per model which engine is faster on a sample of its images
(:func:`fastest`), then builds that engine for each configuration it scores, checks it against the eager model
on the first batch (:func:`checked`: the same correct predictions and logits within ``RTOL``) and falls back to
eager with its reason otherwise. bench/evalspeed.py prints each engine's speed against the core's peak.

Measured on the 2-core VM, one thread, full 10k split (eager: channels_last, batch 64; ONNX Runtime: batch 64),
eager / ONNX Runtime / frozen TorchScript: fmnist-cnn 0.72 / 0.42 / 0.64 s, fmnist-resnet 4.03 / 3.18 / 3.81 s,
fmnist-mobilenet 4.08 / 1.35 / 2.38 s, fmnist-vgg 5.60 / 4.36 / 5.38 s, with equal correct counts. TorchScript
is slower than ONNX Runtime on all four, so it is not offered; OpenVINO wins on two of four and costs 180 MB
(docs/benchmarks.md), so it is not either.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

import torch
from torch import nn

from prunekit.core.data import EvalData
from prunekit.core.evaluate import DEFAULT_BATCH, Accuracy, Counts, counts_of, from_counts, predict_logits
from prunekit.deploy.export import onnx_bytes
from prunekit.errors import ExportError

log = logging.getLogger(__name__)

RTOL = 1e-4  # logits within this fraction of the largest eager logit on the checked batch
TIE_RTOL = 1e-3  # an image whose best logits are closer than this (of its largest) is scored eager too
CHECK_IMAGES = 64
MAX_EXPORT_BYTES = 200 * 2**20  # a bigger model is not exported per configuration: its export would cost more


class EngineKind(StrEnum):
    EAGER = "eager"
    ONNXRUNTIME = "onnxruntime"


@dataclass
class Engine:
    """A forward pass ``(N, C, H, W) float32 -> (N, classes) logits`` and what it cost to build."""

    kind: EngineKind
    forward: Callable[[torch.Tensor], torch.Tensor]
    build_s: float = 0.0
    note: str | None = None  # why a faster engine is not used here

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.forward(batch)


def eager(model: nn.Module, note: str | None = None) -> Engine:
    """The model as PyTorch runs it, in eval mode and without autograd."""
    model.eval()

    @torch.inference_mode()
    def forward(batch: torch.Tensor) -> torch.Tensor:
        return model(batch)

    return Engine(EngineKind.EAGER, forward, note=note)


def onnxruntime(model: nn.Module, input_shape: tuple[int, ...], threads: int = 1) -> Engine:
    """``model`` exported to ONNX and loaded in ONNX Runtime (``threads`` intra-op threads, full graph
    optimisation). Raises :class:`ExportError` when the model cannot be exported or is too large to."""
    import onnxruntime as ort  # noqa: PLC0415 - half a second to import: only where an engine is built

    size = sum(p.numel() * p.element_size() for p in model.parameters())
    if size > MAX_EXPORT_BYTES:
        raise ExportError(f"not exported: {size / 2**20:.0f} MB of weights (over {MAX_EXPORT_BYTES // 2**20} MB)")
    t0 = time.perf_counter()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    try:
        session = ort.InferenceSession(onnx_bytes(model, input_shape), opts, providers=["CPUExecutionProvider"])
    except ExportError:
        raise
    except Exception as exc:  # the runtime refuses what the exporter wrote (an op it does not implement)
        raise ExportError(f"ONNX Runtime cannot load the exported model ({type(exc).__name__}: {exc})") from exc

    def forward(batch: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run(None, {"images": batch.contiguous().numpy()})
        return torch.from_numpy(logits)

    return Engine(EngineKind.ONNXRUNTIME, forward, build_s=time.perf_counter() - t0)


def refereed_logits(engine: Engine, model: nn.Module, images: torch.Tensor, batch: int) -> torch.Tensor:
    """Logits (N, classes) of ``engine`` over ``images`` (N, C, H, W) in batches of ``batch``, with near ties
    decided by ``model`` (eager): an image whose two best logits (or, over 10 classes, fifth and sixth) lie within
    ``TIE_RTOL`` of its largest logit is scored again by the model itself, so a rounding difference between the
    engines (at most ``RTOL`` on the checked batch) cannot flip its prediction. The near ties of the whole pass
    are found, and scored, at once: per batch, the referee cost ~10% of a small model's pass."""
    logits = predict_logits(engine, images, batch)
    if engine.kind is EngineKind.EAGER:
        return logits
    near = near_ties(logits).nonzero().flatten()
    if near.numel():
        with torch.inference_mode():
            logits[near] = predict_logits(model, images[near], batch)
    return logits


def refereed_counts(engine: Engine, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int) -> Counts:
    """Correct predictions of ``engine`` on ``images`` / ``labels`` (N,), near ties decided by ``model``
    (:func:`refereed_logits`); the seconds are the whole pass's, referee included."""
    t0 = time.perf_counter()
    logits = refereed_logits(engine, model, images, batch)
    return counts_of(logits, labels, time.perf_counter() - t0)


def near_ties(logits: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the rows of ``logits`` (N, classes) whose top-1 (or top-5 boundary) is within ``TIE_RTOL``."""
    k = min(6, logits.shape[1])
    top = logits.topk(k, 1).values
    tol = TIE_RTOL * logits.abs().amax(1)
    near = top[:, 0] - top[:, 1] <= tol if k > 1 else torch.zeros(len(logits), dtype=torch.bool)
    if logits.shape[1] > 10:
        near |= top[:, 4] - top[:, 5] <= tol
    return near


def agrees(engine: Engine, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> str | None:
    """None when ``engine`` computes what ``model`` does on ``images`` (N, C, H, W) with ``labels`` (N,): the
    same number of correct predictions and logits within ``RTOL`` of the largest; else how it differs."""
    with torch.inference_mode():
        want = model.eval()(images).float()
    got = engine(images).float()
    if got.shape != want.shape:
        return f"its output has shape {tuple(got.shape)}, not {tuple(want.shape)}"
    right_got, right_want = int((got.argmax(1) == labels).sum()), int((want.argmax(1) == labels).sum())
    if right_got != right_want:
        return f"it gets {right_got} of {len(labels)} checked images right, the model {right_want}"
    scale = float(want.abs().max()) or 1.0
    worst = float((got - want).abs().max()) / scale
    if not worst <= RTOL:  # also catches NaN
        return f"its logits differ by {worst:.1e} of the largest (over {RTOL:.0e})"
    return None


def checked(engine: Engine, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Engine:
    """``engine`` if it agrees with ``model`` on the first ``CHECK_IMAGES`` of ``images``, else eager with the
    reason (logged once)."""
    if engine.kind is EngineKind.EAGER:
        return engine
    why = agrees(engine, model, images[:CHECK_IMAGES], labels[:CHECK_IMAGES])
    if why is None:
        return engine
    note = f"{engine.kind} was not used: on the first {min(CHECK_IMAGES, len(labels))} images {why}"
    log.warning("evaluation falls back to eager: %s", note)
    fallback = eager(model, note)
    fallback.build_s = engine.build_s  # what was spent on the engine still counts
    return fallback


def built_for(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, threads: int | None = None) -> Engine:
    """ONNX Runtime for ``model``, checked on ``images`` (N, C, H, W) / ``labels`` (N,) (:func:`checked`); eager
    with the reason where it cannot be exported or disagrees."""
    try:
        built = onnxruntime(model, tuple(images.shape[1:]), threads or torch.get_num_threads())
        return checked(built, model, images, labels)
    except ExportError as exc:
        log.warning("evaluation falls back to eager: %s", exc)
        return eager(model, str(exc))


def engine_accuracy(model: nn.Module, data: EvalData, kind: EngineKind, batch: int = DEFAULT_BATCH) -> Accuracy:
    """Accuracy of ``model`` on ``data``, run on an engine of ``kind`` built for it, checked against it on the
    first images and its near ties refereed (:func:`refereed_counts`), as a worker's full passes run; eager where
    the engine cannot be built or disagrees. The same figure as :func:`prunekit.core.evaluate.accuracy`'s."""
    model.eval()
    engine = eager(model) if kind is EngineKind.EAGER else built_for(model, data.images, data.labels)
    with torch.inference_mode():
        counts = refereed_counts(engine, model, data.images, data.labels, batch)
    return from_counts([dataclasses.replace(counts, seconds=counts.seconds + engine.build_s)], len(data))


@dataclass
class Choice:
    """The engine a worker builds for a model's configurations, and the timings it was chosen by."""

    kind: EngineKind
    seconds: dict[EngineKind, float] = field(default_factory=dict)  # one pass over the sample, best of 2
    note: str | None = None


def fastest(model: nn.Module, images: torch.Tensor, batch: int, threads: int = 1) -> Choice:
    """Time each engine on ``images`` (a sample, e.g. 256) in batches of ``batch`` for the dense ``model`` and
    choose the faster; an engine that cannot be built or disagrees is left out, with its reason."""
    seconds = {EngineKind.EAGER: _time(eager(model), images, batch)}
    labels = eager(model)(images[:CHECK_IMAGES]).argmax(1)  # the check compares predictions, not truths
    try:
        engine = checked(onnxruntime(model, tuple(images.shape[1:]), threads), model, images, labels)
    except ExportError as exc:
        return Choice(EngineKind.EAGER, seconds, str(exc))
    if engine.kind is EngineKind.EAGER:
        return Choice(EngineKind.EAGER, seconds, engine.note)
    seconds[engine.kind] = _time(engine, images, batch)
    return Choice(min(seconds, key=seconds.__getitem__), seconds)


def _time(engine: Engine, images: torch.Tensor, batch: int) -> float:
    engine(images[:batch])  # warm-up: allocator, kernels, the runtime's first-run planning
    best = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        for start in range(0, len(images), batch):
            engine(images[start : start + batch])
        best = min(best, time.perf_counter() - t0)
    return best

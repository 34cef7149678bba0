"""Batched, deterministic top-1/top-5 accuracy with a progress callback, fixed stratified subsets for
quick estimates, and Wilson intervals so an estimate says how uncertain it is."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from prunekit.core.data import EvalData
from prunekit.errors import InvalidArgumentError

Progress = Callable[[int, int], None]  # (images done, images total)
Forward = Callable[[torch.Tensor], torch.Tensor]  # (N, C, H, W) images -> (N, classes) logits
DEFAULT_BATCH = 256


@dataclass(frozen=True)
class Accuracy:
    """Accuracy of one model on one data set (fractions in [0, 1])."""

    top1: float
    top5: float | None  # only when there are more than 10 classes
    n: int  # images scored
    total: int  # images in the full set; n < total means an estimate from a fixed subset
    seconds: float

    @property
    def is_estimate(self) -> bool:
        return self.n < self.total

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """Wilson score interval of top-1 (95% by default): honest for small ``n`` and near 0 or 1."""
        return wilson(round(self.top1 * self.n), self.n, z)

    def interval_label(self) -> str:
        """'95% interval 64.0-94.8% on 20 images': how far a reading can be trusted, always shown beside it."""
        return interval_label(self.top1, self.n)

    def label(self) -> str:
        """Human wording, e.g. '91.3% top-1 (estimate from 1,000 of 10,000 images)'."""
        text = f"{100 * self.top1:.1f}% top-1"
        if self.is_estimate:
            text += f" (estimate from {self.n:,} of {self.total:,} images)"
        return text


def combine(parts: list[Accuracy], total: int) -> Accuracy:
    """One accuracy from accuracies on disjoint shards of a set of ``total`` images (counts added)."""
    n = sum(p.n for p in parts)
    if n <= 0:
        raise InvalidArgumentError("combine needs at least one non-empty shard")
    top1 = sum(round(p.top1 * p.n) for p in parts) / n
    top5 = sum(round(p.top5 * p.n) for p in parts) / n if all(p.top5 is not None for p in parts) else None
    return Accuracy(top1, top5, n, total, sum(p.seconds for p in parts))


def subset(data: EvalData, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images and labels (a fixed, deterministic subset); all when ``n`` is None."""
    if n is None or n >= len(data):
        return data.images, data.labels
    if n <= 0:
        raise InvalidArgumentError(f"subset size must be positive, got {n}")
    return data.images[:n], data.labels[:n]


def interval_label(top1: float, n: int) -> str:
    """'95% interval 64.0-94.8% on 20 images' for a top-1 of ``top1`` measured on ``n`` images."""
    lo, hi = wilson(round(top1 * n), n)
    return f"95% interval {100 * lo:.1f}-{100 * hi:.1f}% on {n:,} images"


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for ``correct`` successes out of ``n`` trials, as fractions in [0, 1]."""
    if n <= 0:
        raise InvalidArgumentError(f"an interval needs at least one trial, got n={n}")
    if not 0 <= correct <= n:
        raise InvalidArgumentError(f"correct must be in [0, {n}], got {correct}")
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def stratified_indices(labels: torch.Tensor, n: int) -> torch.Tensor:
    """A fixed subset of about ``n`` indices with each class in proportion to its share of ``labels``.

    Deterministic: each class contributes its first indices in order, so every process picks the same
    images. Returns sorted int64 indices (all of them when ``n >= len(labels)``).
    """
    total = int(labels.shape[0])
    if n <= 0:
        raise InvalidArgumentError(f"subset size must be positive, got {n}")
    if n >= total:
        return torch.arange(total)
    picked = []
    for cls in torch.unique(labels):
        members = (labels == cls).nonzero().flatten()
        take = max(1, round(n * members.numel() / total))
        picked.append(members[:take])
    return torch.cat(picked).sort().values


@torch.inference_mode()
def predict_logits(
    model: nn.Module | Forward,
    images: torch.Tensor,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
) -> torch.Tensor:
    """Logits (N, classes) of ``model`` in eval mode (or of a forward pass that is not a module, e.g. an
    inference engine's, on the images' device) over ``images`` (N, C, H, W), batch by batch."""
    if isinstance(model, nn.Module):
        device = next(model.parameters()).device
        model.eval()
    else:
        device = images.device
    out = []
    total = images.shape[0]
    for start in range(0, total, batch_size):
        batch = images[start : start + batch_size].to(device, non_blocking=True)
        out.append(model(batch).float().cpu())
        if progress is not None:
            progress(min(start + batch_size, total), total)
    return torch.cat(out)


def accuracy(
    model: nn.Module,
    data: EvalData,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
) -> Accuracy:
    """Top-1 (and top-5 for >10 classes) of ``model`` on ``data``, or on its first ``limit`` images."""
    images, labels = subset(data, limit)
    return accuracy_of(model, images, labels, len(data), batch_size, progress)


def accuracy_of(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    total: int,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
) -> Accuracy:
    """Top-1 (and top-5 for >10 classes) on ``images`` (N, C, H, W) / ``labels`` (N,) drawn from a set of ``total``."""
    return from_counts([count_correct(model, images, labels, batch_size, progress)], total)


@dataclass(frozen=True)
class Counts:
    """Correct predictions on some images: what accuracies of disjoint parts add up from."""

    correct: int
    correct5: int | None  # only when there are more than 10 classes
    n: int
    seconds: float


def count_correct(
    model: nn.Module | Forward,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = DEFAULT_BATCH,
    progress=None,
) -> Counts:
    """Correct top-1 (and top-5) predictions of ``model`` on ``images`` (N, C, H, W) / ``labels`` (N,)."""
    t0 = time.perf_counter()
    logits = predict_logits(model, images, batch_size, progress)
    return counts_of(logits, labels, time.perf_counter() - t0)


def counts_of(logits: torch.Tensor, labels: torch.Tensor, seconds: float) -> Counts:
    """Correct top-1 (and top-5 for more than 10 classes) of ``logits`` (N, classes) against ``labels`` (N,)."""
    correct5 = None
    if logits.shape[1] > 10:
        k = min(5, logits.shape[1])
        correct5 = int((logits.topk(k, 1).indices == labels[:, None]).any(1).sum())
    return Counts(int((logits.argmax(1) == labels).sum()), correct5, int(labels.shape[0]), seconds)


def from_counts(parts: list[Counts], total: int) -> Accuracy:
    """The accuracy of disjoint parts together, from their counts: the same number however it was split."""
    n = sum(p.n for p in parts)
    if n <= 0:
        raise InvalidArgumentError("an accuracy needs at least one image")
    top5 = sum(p.correct5 for p in parts) / n if all(p.correct5 is not None for p in parts) else None
    return Accuracy(sum(p.correct for p in parts) / n, top5, n, total, sum(p.seconds for p in parts))

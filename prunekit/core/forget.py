"""What a pruned model forgets (Hooker et al., 2019/2020): per-class accuracy against the dense model's, where
the lost images now go, the images whose prediction flips, and McNemar's exact test of dense against pruned.

Both models are scored on the same images, so their difference is a paired question: McNemar's test looks only
at the discordant images (one model right, the other wrong), which two independent intervals cannot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from prunekit.errors import InvalidArgumentError

PREDICTION_DTYPES = {256: torch.uint8, 65536: torch.int32}  # predicted classes, compact: one byte up to 256 classes


def prediction_dtype(classes: int) -> torch.dtype:
    """The smallest integer type that holds every class index (one byte per image up to 256 classes)."""
    return next(dtype for limit, dtype in PREDICTION_DTYPES.items() if classes <= limit)


@dataclass(frozen=True)
class McNemar:
    """The paired test on the discordant images: ``b`` right before and wrong after, ``c`` the reverse."""

    b: int
    c: int
    p: float  # two-sided exact binomial p-value: how often b and c would split this unevenly by chance


def mcnemar(b: int, c: int) -> McNemar:
    """McNemar's exact test: under no difference, b ~ Binomial(b + c, 1/2); p = P(as or more uneven), two-sided."""
    if b < 0 or c < 0:
        raise InvalidArgumentError(f"McNemar's counts must be non-negative, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return McNemar(b, c, 1.0)
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return McNemar(b, c, float(min(Fraction(1), Fraction(2 * tail, 2**n))))


@dataclass(frozen=True)
class Forgetting:
    """Dense against pruned on one evaluation set; per-class lists follow ``classes``."""

    classes: tuple[str, ...]
    dense_per_class: tuple[float, ...]
    pruned_per_class: tuple[float, ...]
    images_per_class: tuple[int, ...]
    lost: tuple[int, ...]  # image indices the dense model gets right and the pruned one wrong
    gained: tuple[int, ...]  # the reverse
    lost_as: tuple[int, ...]  # what the pruned model calls each lost image
    gained_from: tuple[int, ...]  # what the dense model called each gained image
    moved: dict[tuple[int, int], int]  # (true class, pruned prediction) -> lost images
    test: McNemar
    correct: tuple[int, int]  # images right, dense and pruned

    @property
    def change(self) -> tuple[float, ...]:
        """Per class: pruned accuracy less dense accuracy (negative: damage)."""
        return tuple(p - d for d, p in zip(self.dense_per_class, self.pruned_per_class, strict=True))

    def worst_first(self) -> list[int]:
        """Class indices by accuracy change, the most damaged first (ties: class order)."""
        return sorted(range(len(self.classes)), key=lambda k: (self.change[k], k))

    def to_json(self) -> dict:
        return {
            "classes": list(self.classes),
            "images_per_class": list(self.images_per_class),
            "dense": {"per_class": list(self.dense_per_class)},
            "pruned": {"per_class": list(self.pruned_per_class)},
            "flipped": {
                "lost": list(self.lost),
                "gained": list(self.gained),
                "lost_as": list(self.lost_as),
                "gained_from": list(self.gained_from),
            },
            "moved": [{"true": t, "now": p, "images": n} for (t, p), n in sorted(self.moved.items())],
            "mcnemar": {"b": self.test.b, "c": self.test.c, "p": self.test.p},
        }


def compare(labels: torch.Tensor, dense: torch.Tensor, pruned: torch.Tensor, classes: tuple[str, ...]) -> Forgetting:
    """Dense and pruned predictions (N,) of the same images with their ``labels`` (N,): what changed."""
    if not (labels.shape == dense.shape == pruned.shape) or labels.dim() != 1:
        raise InvalidArgumentError(
            f"labels and both models' predictions must be (N,) alike, got {tuple(labels.shape)}, "
            f"{tuple(dense.shape)} and {tuple(pruned.shape)}"
        )
    labels, dense, pruned = labels.long(), dense.long(), pruned.long()
    right_before, right_after = dense == labels, pruned == labels
    counts = torch.bincount(labels, minlength=len(classes)).tolist()
    lost = (right_before & ~right_after).nonzero().flatten()
    gained = (~right_before & right_after).nonzero().flatten()
    moved: dict[tuple[int, int], int] = {}
    for t, p in zip(labels[lost].tolist(), pruned[lost].tolist(), strict=True):
        moved[(t, p)] = moved.get((t, p), 0) + 1
    return Forgetting(
        classes,
        _per_class(right_before, labels, counts),
        _per_class(right_after, labels, counts),
        tuple(counts),
        tuple(lost.tolist()),
        tuple(gained.tolist()),
        tuple(pruned[lost].tolist()),
        tuple(dense[gained].tolist()),
        moved,
        mcnemar(len(lost), len(gained)),
        (int(right_before.sum()), int(right_after.sum())),
    )


def _per_class(right: torch.Tensor, labels: torch.Tensor, counts: list[int]) -> tuple[float, ...]:
    hits = torch.bincount(labels[right], minlength=len(counts)).tolist()
    return tuple(h / n if n else float("nan") for h, n in zip(hits, counts, strict=True))

"""ImageNet-1k's classes by WordNet ID: class ``i`` of a 1000-way ImageNet model is the ``i``-th WNID in
sorted order (``imagenet_wnids.txt``, taken from timm's ``imagenet_synsets.txt`` and checked by a test
against torchvision's category names), so a folder named ``n01440764/`` holds class 0, tench."""

from __future__ import annotations

import functools
import re
from importlib import resources

CLASSES = 1000
_WNID = re.compile(r"n\d{8}")


@functools.cache
def wnids() -> tuple[str, ...]:
    return tuple(resources.files("prunekit.core").joinpath("imagenet_wnids.txt").read_text().split())


def wnid_indices(names: tuple[str, ...]) -> tuple[int, ...] | None:
    """The ImageNet index of each folder name, or None unless every name is an ImageNet-1k WNID."""
    if not names or not all(_WNID.fullmatch(n) for n in names):
        return None
    index = {w: i for i, w in enumerate(wnids())}
    return tuple(index[n] for n in names) if all(n in index for n in names) else None

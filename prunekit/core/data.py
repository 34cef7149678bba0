"""Labelled image data held in memory, and ImageFolder directories read on demand.

Tensors are float32 images ``(N, C, H, W)`` and int64 labels ``(N,)``. Nothing here knows the bundled
datasets (those are in :mod:`prunekit.models.datasets`).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from prunekit.core import imagenet
from prunekit.errors import DataNotFoundError, InvalidArgumentError


@dataclass(frozen=True)
class EvalData:
    """A labelled, already normalised evaluation set held in memory."""

    name: str
    images: torch.Tensor  # (N, C, H, W) float32, normalised
    labels: torch.Tensor  # (N,) int64
    classes: tuple[str, ...]
    description: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")


@dataclass(frozen=True)
class Resize:
    """How an image becomes a model input: its shorter side resized to ``size / crop_pct`` with
    ``interpolation``, then centre-cropped to ``size`` (timm's ``crop_pct``; 1.0 crops nothing off)."""

    interpolation: str = "bilinear"
    crop_pct: float = 1.0

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise InvalidArgumentError(
                f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}"
            )
        if not 0 < self.crop_pct <= 1:
            raise InvalidArgumentError(f"crop_pct is in (0, 1], got {self.crop_pct}")


PLAIN = Resize()  # bilinear, no crop: how prunekit read images before models brought their own config


def load_image(path: Path, size: int, mean, std, mode: str = "RGB", resize: Resize = PLAIN) -> torch.Tensor:
    """One image file as a normalised (C, size, size) tensor (C = 1 for mode 'L', 3 for 'RGB')."""
    from PIL import Image
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    with Image.open(path) as img:
        img = img.convert(mode)
        img = F.resize(img, int(size / resize.crop_pct), InterpolationMode(resize.interpolation))
        img = F.center_crop(img, size)
        return F.normalize(F.to_tensor(img), list(mean), list(std))


IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".webp")


@functools.lru_cache(maxsize=8)  # a worker reads many shards of one folder: list it once
def folder_listing(root: str) -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    """(classes, [(file, class index)]) of ``root/<class>/<image>``, both sorted: every reader of the
    folder numbers its images the same way, so image ``i`` is the same file on every machine."""
    root = Path(root)
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {str(root)!r} does not exist")
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))
    if not classes:
        raise DataNotFoundError(f"image folder {str(root)!r} has no class sub-folders")
    items = [
        (f, i)
        for i, c in enumerate(classes)
        for f in sorted((root / c).iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not items:
        raise DataNotFoundError(f"image folder {str(root)!r} has no images ({', '.join(IMAGE_SUFFIXES)})")
    return classes, items


@dataclass(frozen=True)
class FolderSet:
    """An ImageFolder evaluation set read on demand, a shard of images at a time: each image resized
    (shorter side) and centre-cropped to ``shape``'s size, grey or RGB by its channels, normalised."""

    root: str
    shape: tuple[int, int, int]  # (C, H, W) of one model input
    mean: tuple[float, ...]
    std: tuple[float, ...]
    index: tuple[int, ...] | None = None  # folder i -> the model's class index (WNID folders); None: i itself
    model_classes: tuple[str, ...] | None = None  # the model's class names when ``index`` maps into them
    resize: Resize = PLAIN

    @classmethod
    def for_model(
        cls, root: str, shape: tuple[int, int, int], mean, std, model_classes: tuple[str, ...], resize: Resize = PLAIN
    ) -> FolderSet:
        """The folder read for a model with ``model_classes``: one sub-folder per class in sorted order, or
        ImageNet WNID folders (any subset, e.g. Imagenette's 10) for a 1000-class ImageNet model."""
        names = folder_listing(root)[0]
        if len(model_classes) == imagenet.CLASSES and (index := imagenet.wnid_indices(names)) is not None:
            return cls(root, shape, tuple(mean), tuple(std), index, tuple(model_classes), resize)
        if len(names) != len(model_classes):
            raise InvalidArgumentError(
                f"folder {Path(root).name!r} has {len(names)} class folders but the model predicts "
                f"{len(model_classes)} classes (give one folder per class in sorted order, or ImageNet WNID folders "
                "for a 1000-class ImageNet model)"
            )
        return cls(root, shape, tuple(mean), tuple(std), resize=resize)

    def __len__(self) -> int:
        return len(folder_listing(self.root)[1])

    def fingerprint(self) -> str:
        """sha256 of the reading settings and each file's name, size, mtime and label (not its bytes)."""
        how = (self.shape, self.mean, self.std, self.index)
        h = hashlib.sha256(repr(how if self.resize == PLAIN else (*how, self.resize)).encode())
        for f, label in folder_listing(self.root)[1]:
            stat = f.stat()
            h.update(f"{f.relative_to(self.root)}|{stat.st_size}|{stat.st_mtime_ns}|{label}\n".encode())
        return h.hexdigest()

    def read(self, start: int = 0, stop: int | None = None) -> EvalData:
        """Images ``[start, stop)`` in the folder's sorted order, as an in-memory :class:`EvalData`."""
        classes, items = folder_listing(self.root)
        stop = len(items) if stop is None else stop
        if not 0 <= start < stop <= len(items):
            raise InvalidArgumentError(f"a shard is [start, stop) within [0, {len(items)}], got [{start}, {stop})")
        part, mode = items[start:stop], "L" if self.shape[0] == 1 else "RGB"
        images = torch.stack([load_image(f, self.shape[1], self.mean, self.std, mode, self.resize) for f, _ in part])
        labels = [i if self.index is None else self.index[i] for _, i in part]
        how = (
            "class index = sorted folder name"
            if self.index is None
            else f"{len(classes)} ImageNet WNID folders; accuracy is over the model's {len(self.model_classes)}-way prediction"
        )
        return EvalData(
            name=f"folder:{Path(self.root).name}[{start}:{stop}]",
            images=images,
            labels=torch.tensor(labels, dtype=torch.int64),
            classes=classes if self.model_classes is None else self.model_classes,
            description=f"images {start}-{stop - 1} of {len(items):,} in your folder {Path(self.root).name!r} ({how})",
        )


def image_folder(root: Path, size: int = 224, mean=(0.5,) * 3, std=(0.5,) * 3, limit: int = 2000) -> EvalData:
    """An ImageNet-style directory ``root/<class>/<image>``, RGB; class index = position in sorted names.

    ``limit`` caps how many images are read (the first ``limit`` in sorted order).
    """
    folder = FolderSet(str(root), (3, size, size), tuple(mean), tuple(std))
    return folder.read(0, min(limit, len(folder)))

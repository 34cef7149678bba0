"""timm's pretrained classifiers by name (``timm/resnet50.a1_in1k``), weights from the Hugging Face cache.

Loading never touches the network unless asked: weights a machine downloaded once (to the Hugging Face hub cache,
``$HF_HUB_CACHE`` or ``$HF_HOME/hub``) are found there and handed to timm's own loader as a file; without them the
model is built untrained, structure only. ``download=True`` lets timm fetch them, unless ``HF_HUB_OFFLINE=1``.
The input size, interpolation, crop and normalisation come from the model's pretrained config.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

from prunekit.core import imagenet
from prunekit.core.data import Resize
from prunekit.core.loaded import InputSpec, Loaded
from prunekit.errors import UnknownNameError, without_server_paths

log = logging.getLogger(__name__)
PREFIX = "timm/"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm looks for in a hub repo, in its order


@lru_cache(maxsize=1)
def names() -> tuple[str, ...]:
    """``timm/<name>`` for every pretrained classifier timm lists (the headless feature backbones, which predict
    no class, are left out)."""
    import timm
    from timm.models import get_pretrained_cfg

    return tuple(PREFIX + n for n in timm.list_models(pretrained=True) if get_pretrained_cfg(n).num_classes)


def is_timm(name: str) -> bool:
    return name.startswith(PREFIX)


def _config(name: str):
    from timm.models import get_pretrained_cfg

    if not is_timm(name) or name not in names():
        raise UnknownNameError("timm model", name, list(names()))
    return get_pretrained_cfg(name.removeprefix(PREFIX))


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at each call (as huggingface_hub does at start)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface"
    return Path(home) / "hub"


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cached_weights(name: str) -> Path | None:
    """The weight file of timm model ``name`` in the Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    cfg = _config(name)
    if not cfg.hf_hub_id:
        return None
    for filename in (cfg.hf_hub_filename,) if cfg.hf_hub_filename else WEIGHT_FILES:
        found = try_to_load_from_cache(cfg.hf_hub_id, filename, cache_dir=hub_cache_dir())
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


@lru_cache(maxsize=64)
def param_count(name: str) -> int:
    """Parameters of timm model ``name``, counted on a model built on the meta device (no memory, no weights)."""
    import timm

    _config(name)
    with torch.device("meta"):
        model = timm.create_model(name.removeprefix(PREFIX), pretrained=False)
    return sum(p.numel() for p in model.parameters())


def _build(name: str, download: bool) -> tuple[nn.Module, bool, list[str]]:
    """(model, whether its weights are trained, notes)."""
    import timm

    arch, cfg = name.removeprefix(PREFIX), _config(name)
    found = cached_weights(name)
    if found is not None or (download and not offline()):
        overlay = {"file": str(found), "source": None} if found is not None else None
        try:
            return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay), True, []
        except Exception as exc:  # a truncated cache file, no network: fall back to the structure
            log.warning("timm %s: pretrained weights could not be loaded: %s", arch, exc)
            why = without_server_paths(f"{type(exc).__name__}: {exc}")
            return timm.create_model(arch, pretrained=False), False, [f"weights could not be loaded ({why}); untrained"]
    where = "HF_HUB_OFFLINE=1 is set" if download else f"no {cfg.hf_hub_id} weights in the Hugging Face cache"
    note = f"{where}: untrained, structure only (params and MACs are real; accuracy and importance are not)"
    return timm.create_model(arch, pretrained=False), False, [note]


def input_spec(model: nn.Module) -> InputSpec:
    """What the model's pretrained config says its input is: size, normalisation, interpolation and crop."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    interpolation = cfg.get("interpolation", "bilinear")
    resize = Resize(interpolation if interpolation != "random" else "bilinear", float(cfg.get("crop_pct", 1.0)))
    return InputSpec(tuple(cfg["input_size"]), tuple(cfg["mean"]), tuple(cfg["std"]), resize)


def dataset(name: str) -> str:
    """What the model's classes are: 'imagenet' for ImageNet-1k's, else the count and the weights' tag."""
    cfg = _config(name)
    return "imagenet" if cfg.num_classes == imagenet.CLASSES else f"{cfg.num_classes} classes ({cfg.tag})"


def card(name: str, pretrained: bool, spec: InputSpec) -> dict:
    cfg = _config(name)
    return {
        "name": name,
        "architecture": f"timm.create_model({name.removeprefix(PREFIX)!r})",
        "dataset": dataset(name),
        "weights": f"Hugging Face {cfg.hf_hub_id}" if pretrained else "none (untrained)",
        "license": cfg.license,
        "input": f"{'x'.join(map(str, spec.shape))}, {spec.resize.interpolation}, crop_pct {spec.resize.crop_pct:g}",
        "paper": cfg.paper_ids,
    }


def load(name: str, download: bool = False) -> Loaded:
    """timm model ``name`` (``timm/<arch>.<tag>``) with its weights from the cache (or downloaded when asked)."""
    from prunekit.models import zoo  # the zoo dispatches here: imported late to keep one direction at import

    model, pretrained, notes = _build(name, download)
    spec = input_spec(model)
    count = _config(name).num_classes
    if count == imagenet.CLASSES:
        classes = zoo.imagenet_classes()
    else:
        classes = tuple(f"class {i}" for i in range(count))
        notes.append(f"a {count}-class model: no labelled images for its classes here, so no accuracy")
    return Loaded(
        name=name,
        model=zoo.finish(model),
        input_spec=spec,
        eval_data=lambda: zoo.imagenet_eval(spec, len(classes)),
        classes=classes,
        card=card(name, pretrained, spec),
        pretrained=pretrained,
        family="timm",
        notes=notes,
    )

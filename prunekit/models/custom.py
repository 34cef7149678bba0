"""A caller's own model made portable: its :class:`Loaded` serialised with cloudpickle, so that the app's
server and every evaluation worker (local processes or Ray tasks) rebuild the same model and data.

cloudpickle serialises a class defined in a notebook or script (``__main__``) by value, so it needs no
importable module. Unpickling runs code: these bytes are only ever the caller's own, made by
:func:`portable` in the caller's process and handed to processes the caller started; nothing a browser
sends reaches :func:`from_bytes`.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path

import cloudpickle
import torch
from torch import nn

from prunekit.core import own
from prunekit.core.data import EvalData
from prunekit.core.loaded import Loaded, ModelSpec
from prunekit.errors import InvalidArgumentError
from prunekit.models import checkpoints

LOADER = "prunekit.models.custom:from_bytes"
MODEL_FILE_ENV = "PRUNEKIT_MODEL_FILE"  # set by prunekit.launch for its server: the caller's own model


@dataclasses.dataclass(frozen=True)
class _Portable:
    """What travels: everything of a :class:`Loaded` but its lazy callable (data travels as tensors)."""

    loaded: Loaded
    eval_data: EvalData


def to_bytes(loaded: Loaded) -> bytes:
    """``loaded`` (model, input, evaluation and training data, classes) as cloudpickle bytes."""
    data = loaded.eval_data()
    bare = dataclasses.replace(loaded, eval_data=None, spec=None)
    try:
        return cloudpickle.dumps(_Portable(bare, data))
    except Exception as exc:  # a model holding a lock, an open file, a generator...
        raise InvalidArgumentError(f"model {loaded.name!r} cannot be sent to worker processes: {exc}") from None


def from_bytes(blob: bytes) -> Loaded:
    """The :class:`Loaded` that :func:`to_bytes` wrote, with its spec (these very bytes)."""
    portable = cloudpickle.loads(blob)
    data = portable.eval_data
    return dataclasses.replace(portable.loaded, eval_data=lambda: data, spec=ModelSpec(LOADER, (blob,)))


def portable(loaded: Loaded) -> Loaded:
    """``loaded`` with a spec worker processes can load it from (a custom model has none at first)."""
    if loaded.spec is not None:
        return loaded
    return dataclasses.replace(loaded, spec=ModelSpec(LOADER, (to_bytes(loaded),)))


def write(loaded: Loaded, path: Path) -> Path:
    """Save ``loaded`` for a server process to read with :func:`read`."""
    path.write_bytes(to_bytes(loaded))
    return path


def read(path: str | Path) -> Loaded:
    """A model saved by :func:`write` (the caller's own file: see the module docstring)."""
    return from_bytes(Path(path).read_bytes())


@dataclasses.dataclass(frozen=True)
class Definition:
    """A model named by code: ``factory`` is ``'module:function'`` (importable from ``app_dir``) returning an
    ``nn.Module``; ``weights`` a safetensors file or a state_dict; evaluated on the ImageFolder ``eval_folder``."""

    factory: str
    input_shape: tuple[int, int, int]
    eval_folder: str
    weights: str | None = None
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    app_dir: str = "."


def from_definition(definition: Definition) -> Loaded:
    """Build the model of ``definition`` (the code of the person running the command, imported by name)."""
    model = _build(definition)
    notes: list[str] = []
    if definition.weights is not None:
        model, notes = checkpoints.load_weights(model, definition.weights, definition.factory)
    example = torch.zeros(definition.input_shape)
    name = definition.factory.rpartition(":")[2]
    own_model = own.OwnModel(example, definition.eval_folder, name=name, normalisation=definition.normalisation)
    loaded = own.from_model(model, own_model)
    spec = ModelSpec("prunekit.models.custom:from_definition", (definition,))
    return dataclasses.replace(loaded, notes=notes + loaded.notes, spec=spec)


def _build(definition: Definition) -> nn.Module:
    module_name, _, function = definition.factory.partition(":")
    if not module_name or not function:
        raise InvalidArgumentError(f"--model-def is 'module:function', got {definition.factory!r}")
    root = str(Path(definition.app_dir).resolve())
    if root not in sys.path:
        sys.path.insert(0, root)  # as `python -m` would: the caller's package beside them
    try:
        factory = getattr(importlib.import_module(module_name), function)
    except (ImportError, AttributeError) as exc:
        raise InvalidArgumentError(f"cannot import {definition.factory!r}: {exc}") from None
    model = factory()
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"{definition.factory} returned a {type(model).__name__}, not an nn.Module")
    return model

"""A loaded model with what prunekit needs to know about it: its input, its evaluation data, its classes,
and its identity (the :class:`ModelSpec` a worker process rebuilds it from)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from prunekit.core.data import PLAIN, EvalData, FolderSet, Resize
from prunekit.errors import InvalidArgumentError


@dataclass(frozen=True)
class InputSpec:
    """What one input image looks like: shape (C, H, W), the normalisation already applied, and how an image
    file is resized to it."""

    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: Resize = PLAIN


@dataclass(frozen=True)
class ModelSpec:
    """How a worker loads a model: ``loader`` is an importable ``'module:function'`` called with ``args``.

    The function returns a :class:`Loaded`. Only our own loaders are named here; nothing a user sent
    is imported or run (an upload travels as bytes to ``checkpoints.load_checkpoint``).
    """

    loader: str
    args: tuple = ()

    def load(self) -> Loaded:
        module, _, name = self.loader.partition(":")
        if not module or not name:
            raise InvalidArgumentError(f"a loader is 'module:function', got {self.loader!r}")
        return getattr(importlib.import_module(module), name)(*self.args)


@dataclass
class Loaded:
    """A loaded model, ready to profile, prune and evaluate. ``model`` is shared: never mutate it."""

    name: str
    model: nn.Module
    input_spec: InputSpec
    eval_data: Callable[[], EvalData]  # lazy: ImageNet samples cost a second to decode
    classes: tuple[str, ...]
    card: dict
    pretrained: bool
    family: str
    notes: list[str] = field(default_factory=list)
    eval_folder: FolderSet | None = None  # an ImageFolder read in shards (then eval_data reads it all)
    spec: ModelSpec | None = None  # how a worker process loads this very model; None: only this process has it
    train_data: EvalData | None = (
        None  # the caller's own training images, for recovery (zoo models: see deploy.recover)
    )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

"""Your own model: any ``nn.Module`` with an example input and labelled evaluation data becomes a
:class:`Loaded`, the same description the zoo gives its models, so everything the engine does works on it.

The caller's model is never touched: prunekit works on a deep copy in eval mode.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from prunekit.core import imagenet
from prunekit.core.data import EvalData, FolderSet, folder_listing
from prunekit.core.loaded import InputSpec, Loaded
from prunekit.errors import InvalidArgumentError

IMAGENET_NORMALISATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
EvalSource = tuple | Dataset | DataLoader | str | Path  # (images, labels), a Dataset, a DataLoader, an ImageFolder


@dataclass(frozen=True)
class OwnModel:
    """What :func:`from_model` needs besides the model; see :meth:`prunekit.Lab.from_model`."""

    example_input: torch.Tensor  # one input (C, H, W), or a batch of one (1, C, H, W)
    eval_data: EvalSource
    classes: Sequence[str] | None = None
    train_data: EvalSource | None = None
    name: str = "my-model"
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] | None = None  # (mean, std) for ImageFolder reads


def from_model(model: nn.Module, own: OwnModel) -> Loaded:
    """Describe ``model`` (copied, eval mode, no gradients) with its input, data and classes."""
    model = _private_copy(model)
    shape = _input_shape(own.example_input)
    outputs = _check_runs(model, own.example_input.reshape(1, *shape))
    norm, notes = _normalisation(own, shape)
    hint = _folder_classes(own.eval_data, own.classes, outputs)
    test = read_data(own.eval_data, shape, norm, "evaluation", hint)
    classes = _classes(own.classes, test, outputs)
    test = _checked(test, shape, classes, "evaluation")
    train = (
        None
        if own.train_data is None
        else _checked(read_data(own.train_data, shape, norm, "training", classes), shape, classes, "training")
    )
    return Loaded(
        name=own.name,
        model=model,
        input_spec=InputSpec(shape, *norm),
        eval_data=(lambda: test),
        classes=classes,
        card={"name": own.name, "architecture": type(model).__name__, "source": "your model"},
        pretrained=True,
        family="custom",
        notes=notes,
        train_data=train,
    )


def _private_copy(model: nn.Module) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise InvalidArgumentError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if not any(True for _ in model.parameters()):
        raise InvalidArgumentError(f"model {type(model).__name__} has no parameters: nothing to prune")
    return model


def _input_shape(example: torch.Tensor) -> tuple[int, int, int]:
    if not isinstance(example, torch.Tensor) or not example.is_floating_point():
        raise InvalidArgumentError(f"example_input must be a float tensor (C, H, W), got {type(example).__name__}")
    shape = tuple(example.shape[1:] if example.dim() == 4 and example.shape[0] == 1 else example.shape)
    if len(shape) != 3:
        raise InvalidArgumentError(
            f"example_input must be one image (C, H, W) or (1, C, H, W), got {tuple(example.shape)}"
        )
    return shape


def _check_runs(model: nn.Module, batch: torch.Tensor) -> int:
    """The model's number of outputs per image; a clear error when it does not run on the example."""
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            out = model(batch.to(device))
    except Exception as exc:
        raise InvalidArgumentError(f"the model does not run on example_input {tuple(batch.shape)}: {exc}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise InvalidArgumentError(
            f"the model must return logits (batch, classes), got {getattr(out, 'shape', type(out))}"
        )
    return int(out.shape[1])


def _normalisation(own: OwnModel, shape: tuple[int, int, int]) -> tuple[tuple, list[str]]:
    if own.normalisation is not None:
        mean, std = (tuple(float(v) for v in part) for part in own.normalisation)
        return (mean, std), []
    if isinstance(own.eval_data, (str, Path)) and shape[0] == 3:
        note = "Images of the folder are normalised with ImageNet's mean and std (pass normalisation=(mean, std) if your model expects others)."
        return IMAGENET_NORMALISATION, [note]
    return ((0.0,) * shape[0], (1.0,) * shape[0]), []  # tensors given: taken as already normalised


def read_data(
    source: EvalSource, shape: tuple[int, int, int], norm: tuple, role: str, classes: tuple[str, ...]
) -> EvalData:
    """``source`` read into memory as images ``(N, C, H, W)`` float32 and labels ``(N,)`` int64."""
    if isinstance(source, (str, Path)):
        return FolderSet.for_model(str(Path(source).resolve()), shape, norm[0], norm[1], classes).read()
    if isinstance(source, tuple) and len(source) == 2:
        images, labels = source
    elif isinstance(source, DataLoader):
        images, labels = _batches(source, role)
    elif isinstance(source, Dataset):
        images, labels = _batches(DataLoader(source, batch_size=256), role)
    else:
        raise InvalidArgumentError(
            f"{role} data must be (images, labels), a torch Dataset, a DataLoader or an ImageFolder path, got {type(source).__name__}"
        )
    classes = tuple(getattr(getattr(source, "dataset", source), "classes", ()) or ())
    return EvalData(
        f"your {role} data",
        torch.as_tensor(images).float(),
        torch.as_tensor(labels).long(),
        classes,
        f"your {role} data",
    )


def _batches(loader: DataLoader, role: str) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for batch in loader:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise InvalidArgumentError(f"each {role} batch must be (images, labels), got {type(batch).__name__}")
        images.append(torch.as_tensor(batch[0]))
        labels.append(torch.as_tensor(batch[1]))
    if not images:
        raise InvalidArgumentError(f"the {role} data is empty")
    return torch.cat(images), torch.cat(labels)


def _folder_classes(source: EvalSource, given: Sequence[str] | None, outputs: int) -> tuple[str, ...]:
    """The model's class names a folder is read against: the caller's, ImageNet's WNIDs for a 1000-way
    model on WNID folders, else the folder's own names."""
    if not isinstance(source, (str, Path)):
        return ()
    if given is not None:
        return tuple(str(c) for c in given)
    names = folder_listing(str(Path(source).resolve()))[0]
    wnid_folders = outputs == imagenet.CLASSES and imagenet.wnid_indices(names) is not None
    return imagenet.wnids() if wnid_folders else names


def _classes(given: Sequence[str] | None, data: EvalData, outputs: int) -> tuple[str, ...]:
    classes = (
        tuple(str(c) for c in given) if given is not None else data.classes or tuple(str(i) for i in range(outputs))
    )
    if len(classes) != outputs:
        raise InvalidArgumentError(
            f"{len(classes)} class names ({', '.join(classes[:4])}{', ...' if len(classes) > 4 else ''}) for a model "
            f"with {outputs} outputs: give one name per output (an ImageFolder needs one folder per class)"
        )
    return classes


def _checked(data: EvalData, shape: tuple[int, int, int], classes: tuple[str, ...], role: str) -> EvalData:
    if data.images.dim() != 4 or tuple(data.images.shape[1:]) != shape:
        raise InvalidArgumentError(
            f"{role} images must be (N, {', '.join(map(str, shape))}) like example_input, got {tuple(data.images.shape)}"
        )
    if data.labels.shape != (data.images.shape[0],):
        raise InvalidArgumentError(
            f"{role} labels must be (N,) = ({data.images.shape[0]},), got {tuple(data.labels.shape)}"
        )
    if len(data) == 0:
        raise InvalidArgumentError(f"the {role} data is empty")
    low, high = int(data.labels.min()), int(data.labels.max())
    if low < 0 or high >= len(classes):
        raise InvalidArgumentError(f"{role} labels must lie in [0, {len(classes)}), got values from {low} to {high}")
    return EvalData(data.name, data.images.contiguous(), data.labels, classes, data.description)

"""A user's own checkpoint: a state_dict for a known architecture, or a TorchScript file.

The file is untrusted: it is size-limited, state_dicts go through ``torch.load(weights_only=True)``
(no arbitrary unpickling), TorchScript through ``torch.jit.load``; Python code in it is never run.
"""

from __future__ import annotations

import copy
import io
import zipfile
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from prunekit import zoo
from prunekit.errors import CheckpointError

MAX_CHECKPOINT_BYTES = 200 * 1024 * 1024
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")


def _read_limited(source: str | Path | bytes, max_bytes: int) -> bytes:
    if isinstance(source, bytes):
        blob = source
    else:
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
        if path.stat().st_size > max_bytes:
            raise CheckpointError(
                f"checkpoint {path.name!r} is {path.stat().st_size:,} bytes; the limit is {max_bytes:,}"
            )
        blob = path.read_bytes()
    if len(blob) > max_bytes:
        raise CheckpointError(f"checkpoint is {len(blob):,} bytes; the limit is {max_bytes:,}")
    if not blob:
        raise CheckpointError("checkpoint is empty")
    return blob


def is_torchscript(blob: bytes) -> bool:
    """TorchScript archives are zips holding a ``constants.pkl`` and a ``code/`` folder."""
    if not zipfile.is_zipfile(io.BytesIO(blob)):
        return False
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        names = zf.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _state_dict_from(blob: bytes) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            reason = "it contains Python objects other than tensors, which are refused for safety"
        raise CheckpointError(f"refused to load the checkpoint: {reason}") from None
    for key in _WRAPPER_KEYS:  # common training-script wrappers {'state_dict': {...}, 'epoch': ...}
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint is a {type(obj).__name__}, not a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _check_keys(model: nn.Module, state: dict[str, torch.Tensor], arch: str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint keys do not match architecture {arch!r}: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    bad = [k for k, v in expected.items() if tuple(v.shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"checkpoint shapes do not match architecture {arch!r}: {k} is {tuple(state[k].shape)}, "
            f"expected {tuple(expected[k].shape)} ({len(bad)} mismatched)"
        )


def load_checkpoint(
    source: str | Path | bytes,
    arch: str,
    name: str = "my-checkpoint",
    max_bytes: int = MAX_CHECKPOINT_BYTES,
) -> zoo.Loaded:
    """Load a user's checkpoint as a :class:`zoo.Loaded`.

    ``arch`` names a zoo architecture for a state_dict (its input spec and eval data are used), or
    the zoo model whose input spec and data fit a TorchScript file.
    """
    blob = _read_limited(source, max_bytes)
    base = zoo.load(arch)  # validates arch; gives structure, input spec and eval data
    if is_torchscript(blob):
        model = _load_torchscript(blob)
        kind = "TorchScript"
    else:
        state = _state_dict_from(blob)
        model = copy.deepcopy(base.model).cpu()  # base is shared by the zoo cache: never load into it
        _check_keys(model, state, arch)
        model.load_state_dict(state)
        kind = f"state_dict for {arch}"
    card = {"name": name, "architecture": kind, "dataset": base.card.get("dataset"), "source": "uploaded by the user"}
    loaded = replace(base, name=name, model=zoo._finish(model), card=card, pretrained=True, family="user", notes=[])
    with torch.inference_mode():
        try:
            loaded.model(torch.zeros((1, *loaded.input_spec.shape), device=loaded.device))
        except Exception as exc:
            raise CheckpointError(f"model does not run on input {loaded.input_spec.shape}: {exc}") from None
    return loaded


def _load_torchscript(blob: bytes) -> nn.Module:
    try:
        return torch.jit.load(io.BytesIO(blob), map_location="cpu")
    except Exception as exc:
        raise CheckpointError(f"refused to load the TorchScript file: {str(exc).splitlines()[0]}") from None

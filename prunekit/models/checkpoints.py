"""A user's own weights, loaded without running anything in them.

From anyone: a **safetensors** file or a **state_dict** read with ``torch.load(weights_only=True)``,
for any zoo architecture. A file is recognised by its first bytes, never by its name. Formats that are
code, a whole pickled model (``torch.save(model)``) and TorchScript, are loaded only in **trusted mode**,
which the person starting the server chooses (``PRUNEKIT_TRUSTED_UPLOADS=1``, ``./dev app --trusted``):
PyTorch's security policy treats both as executable programs. Every file is size-limited; weights with
NaN or Inf are refused, naming the first bad tensor; half precision is converted to float32, with a note.
"""

from __future__ import annotations

import copy
import io
import json
import os
import struct
import zipfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from prunekit.core.loaded import Loaded, ModelSpec
from prunekit.errors import CheckpointError
from prunekit.models import zoo

TRUSTED_ENV = "PRUNEKIT_TRUSTED_UPLOADS"
LIMIT_ENV = "PRUNEKIT_MAX_UPLOAD_MB"  # the server's owner may raise it: vgg16 or vit_b_16 in float32 exceed 200 MB
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"  # torch.save's pre-1.6 format: pickled magic number
NOT_A_CHECKPOINT = "not a PyTorch or safetensors file"


def max_upload_mb() -> int:
    """The upload limit in MiB: ``$PRUNEKIT_MAX_UPLOAD_MB``, 200 by default."""
    value = os.environ.get(LIMIT_ENV, "200")
    if not value.isdigit() or int(value) < 1:
        raise CheckpointError(f"{LIMIT_ENV} must be a whole number of megabytes, got {value!r}")
    return int(value)


def trusted_mode() -> bool:
    """True when the server was started with trusted uploads (whole pickled models, TorchScript)."""
    return os.environ.get(TRUSTED_ENV, "") == "1"


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


# --- recognising a file by its bytes ------------------------------------------------------------


def _zip_names(blob: bytes) -> list[str]:
    if not zipfile.is_zipfile(io.BytesIO(blob)):
        return []
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            return zf.namelist()
    except zipfile.BadZipFile:
        return []


def is_torchscript(blob: bytes) -> bool:
    """TorchScript archives are zips holding a ``constants.pkl`` and a ``code/`` folder."""
    names = _zip_names(blob)
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _is_safetensors(blob: bytes) -> bool:
    """safetensors: an 8-byte little-endian header length, then that many bytes of JSON."""
    if len(blob) < 10:
        return False
    (size,) = struct.unpack("<Q", blob[:8])
    if size > len(blob) - 8 or blob[8:9] != b"{":
        return False
    try:
        return isinstance(json.loads(blob[8 : 8 + size]), dict)
    except ValueError:
        return False


def sniff(blob: bytes) -> str | None:
    """'safetensors', 'torchscript', 'torch' (torch.save, zip or legacy), or None for anything else."""
    if _is_safetensors(blob):
        return "safetensors"
    if is_torchscript(blob):
        return "torchscript"
    if any(n.endswith("/data.pkl") for n in _zip_names(blob)) or blob.startswith(_LEGACY_MAGIC):
        return "torch"
    return None


# --- reading tensors -----------------------------------------------------------------------------


def _from_safetensors(blob: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        return load(blob)
    except Exception as exc:
        raise CheckpointError(f"damaged safetensors file: {_first_line(exc)}") from None


def _weights_only(blob: bytes) -> object:
    """``torch.load(weights_only=True)``: tensors and plain containers only; a class reference is refused."""
    try:
        return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:
        text = str(exc)
        if "Unsupported global" in text or "weights_only" in text:
            raise _CodeInFile() from None
        raise CheckpointError(f"damaged PyTorch file: {_first_line(exc)}") from None


class _CodeInFile(Exception):
    """The pickle names Python classes or functions: a whole model, or something pretending to be one."""


def _unwrap(obj: object) -> dict[str, torch.Tensor]:
    for key in _WRAPPER_KEYS:  # common training-script wrappers {'state_dict': {...}, 'epoch': ...}
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint is a {type(obj).__name__}, not a state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- checking tensors ----------------------------------------------------------------------------


def check_finite(state: dict[str, torch.Tensor]) -> None:
    """Refuse weights with NaN or Inf, naming the first bad tensor (in ``state``'s order)."""
    for key, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            what = "NaN" if bool(torch.isnan(t).any()) else "Inf"
            raise CheckpointError(f"tensor {key!r} contains {what}: refused (the weights are not usable)")


def to_float32(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Half-precision tensors converted to float32; returns the new dict and a note if any were."""
    half = [k for k, t in state.items() if t.dtype in (torch.float16, torch.bfloat16)]
    if not half:
        return state, []
    dtypes = sorted({str(state[k].dtype).removeprefix("torch.") for k in half})
    converted = {k: (t.float() if k in half else t) for k, t in state.items()}
    return converted, [f"{len(half)} half-precision tensors ({', '.join(dtypes)}) were converted to float32."]


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


# --- the front door ------------------------------------------------------------------------------


def load_checkpoint(
    source: str | Path | bytes,
    arch: str,
    name: str = "my-checkpoint",
    max_bytes: int | None = None,
    trusted: bool | None = None,
) -> Loaded:
    """Load a user's file as a :class:`Loaded`; ``arch`` names the zoo model whose architecture,
    input spec and evaluation data it fits. ``max_bytes`` defaults to :func:`max_upload_mb` and
    ``trusted`` to :func:`trusted_mode`."""
    blob = _read_limited(source, max_bytes if max_bytes is not None else max_upload_mb() * 2**20)
    kind = sniff(blob)
    if kind is None:
        raise CheckpointError(f"this is {NOT_A_CHECKPOINT} (safetensors, or a state_dict from torch.save)")
    trusted = trusted_mode() if trusted is None else trusted
    base = zoo.load(arch)  # validates arch; gives structure, input spec and eval data
    model, description, notes = _READERS[kind](blob, base, arch, trusted)
    card = {"name": name, "architecture": description, "dataset": base.card.get("dataset"), "source": "uploaded"}
    spec = ModelSpec("prunekit.models.checkpoints:load_checkpoint", (blob, arch, name, len(blob), trusted))
    loaded = replace(
        base, name=name, model=zoo.finish(model), card=card, pretrained=True, family="user", notes=notes, spec=spec
    )
    with torch.inference_mode():
        try:
            loaded.model(torch.zeros((1, *loaded.input_spec.shape), device=loaded.device))
        except Exception as exc:
            raise CheckpointError(f"model does not run on input {loaded.input_spec.shape}: {exc}") from None
    return loaded


Reader = Callable[[bytes, Loaded, str, bool], tuple[nn.Module, str, list[str]]]


def load_weights(model: nn.Module, path: str | Path, what: str) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` with the weights in ``path`` (safetensors, or a state_dict read with
    ``weights_only=True``); ``what`` names the architecture in errors. Whole pickled models are refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path.name!r} does not exist")
    blob = path.read_bytes()
    kind = sniff(blob)
    if kind == "safetensors":
        state = _from_safetensors(blob)
    elif kind == "torch":
        try:
            state = _unwrap(_weights_only(blob))
        except _CodeInFile:
            raise CheckpointError(
                f"{path.name} holds Python objects, not only tensors (a whole pickled model?); save "
                "model.state_dict() or a safetensors file instead"
            ) from None
    else:
        raise CheckpointError(f"{path.name} is {NOT_A_CHECKPOINT} (safetensors, or a state_dict from torch.save)")
    return _load_state(copy.deepcopy(model).cpu(), state, what)


def _into_arch(state: dict[str, torch.Tensor], base: Loaded, arch: str) -> tuple[nn.Module, list[str]]:
    return _load_state(copy.deepcopy(base.model).cpu(), state, arch)  # base is the zoo's shared copy: never into it


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], arch: str) -> tuple[nn.Module, list[str]]:
    _check_keys(model, state, arch)
    state = {k: state[k] for k in model.state_dict()}  # "first bad tensor" in the model's layer order
    check_finite(state)
    state, notes = to_float32(state)
    model.load_state_dict(state)
    return model, notes


def _read_safetensors(blob: bytes, base: Loaded, arch: str, trusted: bool):
    model, notes = _into_arch(_from_safetensors(blob), base, arch)
    return model, f"safetensors for {arch}", notes


def _read_torch(blob: bytes, base: Loaded, arch: str, trusted: bool):
    try:
        model, notes = _into_arch(_unwrap(_weights_only(blob)), base, arch)
        return model, f"state_dict for {arch}", notes
    except _CodeInFile:
        if not trusted:
            raise CheckpointError(
                "this file holds Python objects, not only tensors (a whole pickled model?). Loading it would run "
                f"code from the file, so it is refused; save model.state_dict() instead, or start the server in "
                f"trusted mode ({TRUSTED_ENV}=1) if the file is yours"
            ) from None
    model, notes = _whole_model(blob)
    return model, "whole pickled model (trusted mode)", notes


def _whole_model(blob: bytes) -> tuple[nn.Module, list[str]]:
    try:
        obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)  # trusted mode only
    except Exception as exc:
        raise CheckpointError(f"could not unpickle the model: {_first_line(exc)}") from None
    if not isinstance(obj, nn.Module):
        raise CheckpointError(f"the file holds a {type(obj).__name__}, not a torch.nn.Module")
    state = dict(obj.state_dict())
    check_finite(state)
    return obj.float(), to_float32(state)[1]


def _read_torchscript(blob: bytes, base: Loaded, arch: str, trusted: bool):
    if not trusted:
        raise CheckpointError(
            "TorchScript files are programs (PyTorch's security policy), so they are refused; upload a "
            f"state_dict or safetensors file instead, or start the server in trusted mode ({TRUSTED_ENV}=1)"
        )
    try:
        script = torch.jit.load(io.BytesIO(blob), map_location="cpu")
    except Exception as exc:
        raise CheckpointError(f"could not load the TorchScript file: {_first_line(exc)}") from None
    # Pruning needs forward hooks, which ScriptModules do not allow: its weights go into the architecture.
    model, notes = _into_arch(dict(script.state_dict()), base, arch)
    return model, f"TorchScript weights in {arch} (trusted mode)", notes


_READERS: dict[str, Reader] = {
    "safetensors": _read_safetensors,
    "torch": _read_torch,
    "torchscript": _read_torchscript,
}

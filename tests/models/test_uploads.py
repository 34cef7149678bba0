"""Uploads: safetensors and weights-only state_dicts from anyone; code formats only in trusted mode.

Every hostile file is refused with a one-line message, and a marker file proves nothing in it ran.
"""

import io
import os
import pickle
import zipfile

import pytest
import torch
from safetensors.torch import save as safetensors_bytes

from prunekit.core.lab import Lab
from prunekit.core.spec import PruneConfig
from prunekit.errors import CheckpointError
from prunekit.models import checkpoints, zoo
from tests.helpers import spec_of


class Evil:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _torch_bytes(obj, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def _state(arch: str = "fmnist-cnn") -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in zoo.load(arch).model.state_dict().items()}


def _refused(blob: bytes, match: str, marker=None, **kwargs) -> str:
    with pytest.raises(CheckpointError, match=match) as info:
        checkpoints.load_checkpoint(blob, "fmnist-cnn", **kwargs)
    assert "\n" not in str(info.value)
    assert marker is None or not os.path.exists(marker)
    return str(info.value)


@pytest.mark.parametrize("arch", ["fmnist-cnn", "fmnist-mobilenet", "efficientnet-lite0", "mobilenet_v3_small"])
@pytest.mark.parametrize("fmt", ["safetensors", "state_dict", "legacy-torch-save", "wrapped"])
def test_weights_load_exactly_for_zoo_architectures(arch, fmt):
    torch.manual_seed(1)
    state = {k: (torch.randn_like(v) if v.is_floating_point() else v) for k, v in _state(arch).items()}
    blob = {
        "safetensors": lambda: safetensors_bytes({k: v.contiguous() for k, v in state.items()}),
        "state_dict": lambda: _torch_bytes(state),
        "legacy-torch-save": lambda: _torch_bytes(state, legacy=True),
        "wrapped": lambda: _torch_bytes({"state_dict": state, "epoch": 3}),
    }[fmt]()
    loaded = checkpoints.load_checkpoint(blob, arch, name="mine", trusted=False)
    assert loaded.name == "mine" and loaded.family == "user" and loaded.notes == []
    got = loaded.model.state_dict()
    assert all(torch.equal(got[k].cpu(), state[k]) for k in state)


def test_every_zoo_architecture_can_receive_weights():
    """The picker offers every zoo model; a state_dict of any architecture reaches the same loader."""
    assert len(zoo.model_names()) > 80
    for arch in ("resnet18", "convnext_tiny", "vit_b_16"):
        blob = safetensors_bytes(_state(arch))
        loaded = checkpoints.load_checkpoint(blob, arch, trusted=False, max_bytes=len(blob))
        assert loaded.card["architecture"] == f"safetensors for {arch}"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("fmt", ["safetensors", "state_dict"])
def test_nan_or_inf_refused_naming_the_first_bad_tensor(fmt, bad):
    state = _state()
    state["classifier.1.weight"][3, 4] = bad
    state["classifier.3.weight"][0, 0] = bad
    blob = safetensors_bytes(state) if fmt == "safetensors" else _torch_bytes(state)
    text = _refused(blob, "classifier.1.weight")
    assert ("NaN" if bad != bad else "Inf") in text and "classifier.3.weight" not in text


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_converted_with_a_notice(dtype):
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in _state().items()}
    loaded = checkpoints.load_checkpoint(safetensors_bytes(state), "fmnist-cnn", trusted=False)
    assert loaded.notes and "converted to float32" in loaded.notes[0] and str(dtype).split(".")[1] in loaded.notes[0]
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    assert torch.equal(loaded.model.state_dict()["classifier.3.weight"], state["classifier.3.weight"].float())


@pytest.mark.parametrize(
    "blob",
    [os.urandom(4096), b"not a checkpoint at all", b"{}", b"PK\x03\x04" + os.urandom(100)],
    ids=["random", "text", "json", "fake-zip"],
)
def test_random_bytes_are_not_a_checkpoint(blob):
    _refused(blob, "not a PyTorch or safetensors file")


def test_zip_that_is_not_torch_is_not_a_checkpoint():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("readme.txt", "hello")
    _refused(buf.getvalue(), "not a PyTorch or safetensors file")


def test_code_in_a_state_dict_never_runs(tmp_path):
    marker = tmp_path / "ran"
    _refused(_torch_bytes({"weight": Evil(marker)}), "Python objects", marker, trusted=False)
    _refused(_torch_bytes({"weight": Evil(marker)}, legacy=True), "Python objects", marker, trusted=False)
    _refused(pickle.dumps(Evil(marker)), "not a PyTorch or safetensors file", marker, trusted=True)


def test_safetensors_never_unpickles(monkeypatch):
    real_load = torch.load

    def load_files_only(source, *args, **kwargs):  # the bundled architecture's own weights are files
        if not isinstance(source, (str, os.PathLike)):
            raise AssertionError("a safetensors upload must not reach a pickle loader")
        return real_load(source, *args, **kwargs)

    def forbidden(*args, **kwargs):
        raise AssertionError("a safetensors upload must not reach a pickle loader")

    monkeypatch.setattr(torch, "load", load_files_only)
    monkeypatch.setattr(pickle, "loads", forbidden)
    loaded = checkpoints.load_checkpoint(safetensors_bytes(_state()), "fmnist-cnn", trusted=False)
    assert loaded.card["architecture"] == "safetensors for fmnist-cnn"


def test_damaged_safetensors_is_a_clear_error():
    blob = safetensors_bytes(_state())
    _refused(blob[: len(blob) // 2], "damaged safetensors")


def test_whole_pickled_model_refused_unless_trusted(tmp_path):
    model = zoo.load("fmnist-cnn").model
    model.evil = Evil(tmp_path / "ran")  # would run on unpickling
    blob = _torch_bytes(model)
    del model.evil
    text = _refused(blob, "trusted mode", tmp_path / "ran", trusted=False)
    assert "PRUNEKIT_TRUSTED_UPLOADS=1" in text


def test_trusted_mode_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(checkpoints.TRUSTED_ENV, raising=False)
    assert not checkpoints.trusted_mode()
    monkeypatch.setenv(checkpoints.TRUSTED_ENV, "1")
    assert checkpoints.trusted_mode()


def test_torchscript_refused_unless_trusted_and_never_loaded(monkeypatch, tmp_path):
    path = tmp_path / "m.pt"
    torch.jit.trace(zoo.load("fmnist-cnn").model, torch.zeros(1, 1, 28, 28)).save(str(path))

    def forbidden(*args, **kwargs):
        raise AssertionError("torch.jit.load must not run outside trusted mode")

    monkeypatch.setattr(torch.jit, "load", forbidden)
    _refused(path.read_bytes(), "TorchScript files are programs", trusted=False)


def test_trusted_whole_model_prunes_like_the_zoo_model():
    zoo_model = zoo.load("fmnist-cnn")
    loaded = checkpoints.load_checkpoint(_torch_bytes(zoo_model.model), "fmnist-cnn", name="whole", trusted=True)
    assert loaded.card["architecture"].startswith("whole pickled model")
    config = PruneConfig(0.5, "global")
    mine, theirs = (
        Lab(loaded).result(spec_of("l1", "filter", "none", config)),
        Lab(zoo_model).result(spec_of("l1", "filter", "none", config)),
    )
    assert mine.nonzero_params == theirs.nonzero_params and mine.layer_sparsities() == theirs.layer_sparsities()
    assert mine.effective_sparsity == theirs.effective_sparsity


def test_trusted_torchscript_weights_go_into_the_architecture(tmp_path):
    model = zoo.load("fmnist-cnn").model
    path = tmp_path / "m.pt"
    torch.jit.trace(model, torch.zeros(1, 1, 28, 28)).save(str(path))
    loaded = checkpoints.load_checkpoint(path, "fmnist-cnn", trusted=True)
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(loaded.model(x), model(x), atol=1e-5)
    result = Lab(loaded).result(spec_of("magnitude", "unstructured", "none", PruneConfig(0.5, "local")))
    assert result.units_removed > 0  # hooks work: it is an ordinary module now


def test_wrong_keys_shapes_and_size_limit():
    _refused(_torch_bytes({"conv.weight": torch.zeros(3)}), "do not match")
    _refused(_torch_bytes([1, 2, 3]), "not a state_dict")
    state = _state()
    state["classifier.3.weight"] = torch.zeros(5, 64)
    _refused(safetensors_bytes(state), "shapes")
    _refused(b"x" * 101, "limit", max_bytes=100)
    _refused(b"", "empty")


def test_upload_limit_is_the_server_owners_choice(monkeypatch):
    monkeypatch.setenv(checkpoints.LIMIT_ENV, "1")
    assert checkpoints.max_upload_mb() == 1
    _refused(b"x" * (2**20 + 1), "limit is 1,048,576")
    monkeypatch.setenv(checkpoints.LIMIT_ENV, "lots")
    _refused(b"x", "whole number of megabytes")

"""timm's pretrained classifiers by name: listed, loaded structure-only offline, and with the weights of a Hugging
Face cache the test writes (never the network: tests/conftest.py sets HF_HUB_OFFLINE=1 and a throw-away cache)."""

import pytest
import torch

import prunekit
from prunekit.cli import main as cli_main
from prunekit.core.data import Resize
from prunekit.errors import UnknownNameError
from prunekit.models import timm_zoo, zoo
from tests.helpers import write_hf_weights

CACHED = "timm/resnet10t.c3_in1k"  # weights written below
BARE = "timm/mobilenetv3_small_050.lamb_in1k"  # never given weights


@pytest.fixture(scope="module")
def reference():
    import timm

    torch.manual_seed(3)
    model = timm.create_model(CACHED.removeprefix("timm/"), pretrained=False)
    state = model.state_dict()
    write_hf_weights(CACHED, state)
    return state


def test_list_offers_timm_pretrained_classifiers(capsys):
    import timm

    names = set(zoo.model_names())
    pretrained = timm.list_models(pretrained=True)
    assert "timm/resnet50.a1_in1k" in names and len(timm_zoo.names()) > 1000
    headless = {n for n in pretrained if not timm.models.get_pretrained_cfg(n).num_classes}
    assert {f"timm/{n}" for n in pretrained} - names == {f"timm/{n}" for n in headless}
    assert cli_main(["list"]) == 0
    out = capsys.readouterr().out
    assert "timm/resnet50.a1_in1k" in out and "timm/efficientnet_b0.ra_in1k" in out


def test_a_timm_model_without_cached_weights_loads_structure_only_with_its_own_input_config():
    from timm.data import resolve_data_config

    loaded = zoo.load(BARE)
    assert not loaded.pretrained and loaded.family == "timm"
    assert "untrained, structure only" in loaded.notes[0] and "Hugging Face cache" in loaded.notes[0]
    cfg = resolve_data_config({}, model=loaded.model)
    spec = loaded.input_spec
    assert spec.shape == tuple(cfg["input_size"]) and spec.mean == tuple(cfg["mean"]) and spec.std == tuple(cfg["std"])
    assert spec.resize == Resize(cfg["interpolation"], cfg["crop_pct"])
    assert zoo.param_count(BARE) == sum(p.numel() for p in loaded.model.parameters())
    assert len(loaded.classes) == 1000 and loaded.classes[0] == "tench"


def test_weights_come_from_the_hugging_face_cache_offline(reference):
    lab = prunekit.load(CACHED)
    assert lab.loaded.pretrained and not lab.loaded.notes
    got = lab.loaded.model.state_dict()
    assert got.keys() == reference.keys() and all(torch.equal(got[k].cpu(), reference[k]) for k in reference)
    rows = {r.name: r for r in zoo.list_models()}
    assert rows[CACHED].pretrained and not rows[BARE].pretrained
    assert lab.loaded.card["weights"] == "Hugging Face timm/resnet10t.c3_in1k"


def test_asking_for_a_download_offline_says_so():
    loaded = zoo.load(BARE, download=True)
    assert not loaded.pretrained and loaded.notes[0].startswith("HF_HUB_OFFLINE=1 is set")


def test_a_corrupt_cached_file_falls_back_to_the_structure_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    target = write_hf_weights(CACHED, {"x": torch.zeros(1)}, tmp_path)
    target.write_bytes(b"not a safetensors file")
    loaded = zoo.load(CACHED)
    assert not loaded.pretrained and "weights could not be loaded" in loaded.notes[0]
    assert str(tmp_path) not in loaded.notes[0]  # a page shows it: no server paths


def test_unknown_timm_names_are_refused_with_the_zoo_names():
    with pytest.raises(UnknownNameError):
        zoo.load("timm/not_a_model.in1k")
    with pytest.raises(UnknownNameError):
        zoo.load("timm/resnet50")  # an architecture: give a pretrained tag, as timm lists them


def test_evaluation_images_are_read_as_timms_own_eval_transform_reads_them():
    """The ImageNet sample photos through the model's config (bicubic, crop_pct 0.95 here) equal timm's
    create_transform output, to float rounding."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    from prunekit.models import datasets

    folder = datasets.imagenet_samples_dir()
    if folder is None:
        pytest.skip("the ImageNet sample photos (foolbox) are not installed")
    loaded = zoo.load(BARE)
    ours = loaded.eval_data().images
    transform = create_transform(**resolve_data_config({}, model=loaded.model))
    files = sorted(folder.glob("imagenet_*"))
    theirs = torch.stack([transform(Image.open(f).convert("RGB")) for f in files])
    assert ours.shape == theirs.shape and loaded.input_spec.resize.interpolation == "bicubic"
    assert torch.allclose(ours, theirs, atol=1e-5)

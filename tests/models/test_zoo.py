"""The zoo: bundled models equal their cards, torchvision's real weight path (uploads: test_uploads.py)."""

import json

import pytest
import torch

from prunekit.core.evaluate import accuracy
from prunekit.errors import DataNotFoundError, UnknownNameError
from prunekit.models import zoo
from prunekit.models.architectures import ARCHITECTURES

BUNDLED = [n for n in ARCHITECTURES if (zoo.MODELS_DIR / f"{n}.json").is_file()]
TARGETS = {"fmnist-cnn": 0.89, "fmnist-vgg": 0.92, "fmnist-resnet": 0.92, "fmnist-mobilenet": 0.91}


def test_all_four_bundled_models_are_shipped():
    assert sorted(BUNDLED) == sorted(ARCHITECTURES)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_accuracy_equals_card(name):
    loaded = zoo.load(name)
    card = loaded.card
    acc = accuracy(loaded.model, loaded.eval_data())
    assert acc.n == 10_000 and not acc.is_estimate
    assert abs(acc.top1 - card["test_accuracy"]) <= 0.001
    assert acc.top1 >= TARGETS[name]
    assert card["params"] == sum(p.numel() for p in loaded.model.parameters())
    for key in ("architecture", "macs", "recipe", "wall_time_s", "reproduce"):
        assert key in card


def test_list_models_rows():
    rows = {r.name: r for r in zoo.list_models()}
    assert list(rows)[: len(BUNDLED)] == BUNDLED
    assert rows["efficientnet-lite0"].pretrained
    assert "resnet18" in rows and rows["resnet18"].family == "torchvision"
    assert rows["fmnist-cnn"].params == sum(p.numel() for p in ARCHITECTURES["fmnist-cnn"]().parameters())


def test_unknown_model_lists_known_ones():
    with pytest.raises(UnknownNameError, match="fmnist-cnn"):
        zoo.load("resnet9000")


def test_efficientnet_lite0_real_weights_score_the_samples():
    loaded = zoo.load("efficientnet-lite0")
    data = loaded.eval_data()
    assert len(data) == 20 and loaded.pretrained
    assert accuracy(loaded.model, data).top1 >= 0.8  # 17/20 with these weights; random would be ~0


def test_torchvision_untrained_without_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    loaded = zoo.load("resnet18")
    assert not loaded.pretrained and "untrained" in loaded.notes[0]


def test_torchvision_loads_real_weights_from_offline_cache(tmp_path, monkeypatch):
    from torchvision import models

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = models.ResNet18_Weights.DEFAULT
    torch.manual_seed(7)
    reference = models.resnet18(weights=None).state_dict()
    target = zoo.hub_checkpoint_path(weights.url)
    target.parent.mkdir(parents=True)
    torch.save(reference, target)
    assert str(target).startswith(str(tmp_path))
    loaded = zoo.load("resnet18")
    assert loaded.pretrained
    got = loaded.model.state_dict()
    assert all(torch.equal(got[k].cpu(), reference[k]) for k in reference)
    assert {r.name: r for r in zoo.list_models()}["resnet18"].pretrained


def test_fashion_mnist_missing_says_where_it_looked(tmp_path, monkeypatch):
    from prunekit.models import datasets as data

    monkeypatch.setattr(data, "FMNIST_DEBIAN", tmp_path / "nope")
    monkeypatch.delenv("PRUNEKIT_FMNIST_DIR", raising=False)
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist") as info:
        data.fashion_mnist("train")
    assert str(tmp_path / "nope") in str(info.value)


def test_image_folder_class_mapping(tmp_path):
    from PIL import Image

    from prunekit.core import data

    for cls, color in (("zebra", (255, 255, 255)), ("ant", (0, 0, 0))):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (40, 30), color).save(tmp_path / cls / "a.png")
    ds = data.image_folder(tmp_path, size=32)
    assert ds.classes == ("ant", "zebra")
    assert ds.labels.tolist() == [0, 1] and ds.images.shape == (2, 3, 32, 32)


def test_card_files_are_valid_json():
    for name in BUNDLED:
        card = json.loads((zoo.MODELS_DIR / f"{name}.json").read_text())
        assert card["name"] == name and card["test_images"] == 10_000


def test_bundled_cards_reproduce_commands_exist():
    """A card's ``reproduce`` line names a module that exists today and takes the model's name."""
    import shlex
    import subprocess
    import sys

    for name in BUNDLED:
        argv = shlex.split(zoo.bundled_card(name)["reproduce"])
        assert argv[:2] == ["python", "-m"] and argv[-1] == name
        run = subprocess.run([sys.executable, *argv[1:-1], "--help"], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert name in "".join(run.stdout.split())  # the help lists the recipes it can train (wrapped)

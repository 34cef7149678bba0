"""``prunekit app --eval-folder DIR``: a session may evaluate a zoo model on the server's folder instead of the
model's own test split; the numbers equal an independent loop over the folder's files."""

import numpy as np
import pytest
import torch
from PIL import Image

from prunekit.app import server_state
from prunekit.models import datasets, zoo
from tests.apptest import metric, notes, open_page, settle
from tests.helpers import page

PER_CLASS = 6


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """Fashion-MNIST test images as PNGs in ``<index>_<name>/`` (sorted order = the model's class order)."""
    data = datasets.fashion_mnist("test")
    pixels = (data.images * datasets.FMNIST_STD + datasets.FMNIST_MEAN) * 255
    for c, name in enumerate(datasets.FMNIST_CLASSES):
        where = tmp_path / f"{c}_{name.replace('/', '-')}"
        where.mkdir()
        for k, i in enumerate((data.labels == c).nonzero().flatten()[:PER_CLASS].tolist()):
            Image.fromarray(pixels[i, 0].round().to(torch.uint8).numpy(), mode="L").save(where / f"{k}.png")
    monkeypatch.setenv(server_state.EVAL_FOLDER_ENV, str(tmp_path))
    server_state.loads.clear()
    yield tmp_path
    server_state.loads.clear()


def _by_hand(root) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for label, cls in enumerate(sorted(p.name for p in root.iterdir())):
        for f in sorted((root / cls).iterdir()):
            x = np.asarray(Image.open(f), dtype=np.float32) / 255
            images.append((torch.from_numpy(x)[None] - datasets.FMNIST_MEAN) / datasets.FMNIST_STD)
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def test_a_session_evaluates_on_the_servers_folder(folder):
    at = open_page(page("prune"), {"model": "fmnist-cnn", "sparsity": "0.5"})
    at.toggle(key="w_folder").set_value(True).run()
    settle(at)
    images, labels = _by_hand(folder)
    model = zoo.load("fmnist-cnn").model
    with torch.no_grad():
        want = float((model(images).argmax(1) == labels).float().mean())
    assert metric(at, "Dense") == f"{want:.2%}"
    assert any(f"on {10 * PER_CLASS} images" in text for text in notes(at))
    held = dict(server_state.labs().held())  # within the server's memory budget, as a model of its own
    assert held[server_state.OnFolder("fmnist-cnn")] == held["fmnist-cnn"]


def test_a_folder_that_does_not_fit_the_model_is_said_so_and_not_used(tmp_path, monkeypatch):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        Image.new("L", (28, 28)).save(tmp_path / name / "x.png")
    monkeypatch.setenv(server_state.EVAL_FOLDER_ENV, str(tmp_path))
    at = open_page(page("prune"), {"model": "fmnist-cnn", "sparsity": "0.5"})
    at.toggle(key="w_folder").set_value(True).run()
    assert not at.exception
    assert any("has 2 class folders but the model predicts 10 classes" in w.value for w in at.sidebar.warning)

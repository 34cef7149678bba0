"""Imagenette as an evaluation set for ImageNet models: `prunekit data imagenette` through torchvision's own
download (a small archive in torchvision's layout that the test makes and serves on localhost, its MD5 checked),
WNID folders mapped onto ImageNet's class indices, and the app offering it only to ImageNet models."""

import functools
import hashlib
import http.server
import tarfile
import threading

import pytest
import torch
from PIL import Image

import prunekit
from prunekit.cli import main as cli_main
from prunekit.core.data import load_image
from prunekit.core.evaluate import accuracy
from prunekit.errors import DataNotFoundError
from prunekit.models import imagenette, zoo
from tests.helpers import page

WNIDS = {"n01440764": 0, "n02102040": 217, "n03888257": 701}  # tench, English springer, parachute
PER_CLASS = 3


def _archive(where) -> tuple[str, str]:
    """imagenette2-160.tgz with a few coloured JPEGs per class, as fast.ai lays it out: (its path, MD5)."""
    top = where / "src" / "imagenette2-160"
    for split in ("train", "val"):
        for k, wnid in enumerate(WNIDS):
            folder = top / split / wnid
            folder.mkdir(parents=True)
            for i in range(PER_CLASS):
                colour = (40 * k + 30 * i, 255 - 50 * i, 90 * k % 256)
                Image.new("RGB", (213 + 7 * i, 160), colour).save(folder / f"{wnid}_{i}.JPEG")
    path = where / "imagenette2-160.tgz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(top, arcname="imagenette2-160")
    return path, hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """torchvision's Imagenette 160px URL pointed at the test's own archive served on localhost, and an empty
    prunekit cache folder."""
    from torchvision.datasets import Imagenette

    path, md5 = _archive(tmp_path)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(path.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/{path.name}"
    monkeypatch.setitem(Imagenette._ARCHIVES, "160px", (url, md5))
    monkeypatch.setenv(imagenette.ENV, str(tmp_path / "cache"))
    yield tmp_path
    server.shutdown()


def test_data_command_downloads_checks_and_unpacks_it(served, capsys):
    assert imagenette.validation_folder() is None
    with pytest.raises(DataNotFoundError, match="prunekit data imagenette"):
        imagenette.require()
    assert cli_main(["data", "imagenette", "--size", "160", "--json"]) == 0
    import json

    got = json.loads(capsys.readouterr().out)
    assert got["images"] == len(WNIDS) * PER_CLASS and got["classes"] == sorted(WNIDS)
    assert (
        imagenette.validation_folder()
        == imagenette.require()
        == served / "cache" / "imagenette" / "imagenette2-160" / "val"
    )
    assert not (served / "cache" / "imagenette" / "imagenette2-160.tgz").exists()  # unpacked: no second copy


def test_an_archive_that_fails_its_checksum_is_refused(served, monkeypatch):
    from torchvision.datasets import Imagenette

    url, _ = Imagenette._ARCHIVES["160px"]
    monkeypatch.setitem(Imagenette._ARCHIVES, "160px", (url, "0" * 32))
    with pytest.raises(DataNotFoundError, match="could not be downloaded"):
        imagenette.download("160")
    assert imagenette.validation_folder() is None


def test_an_imagenet_model_is_scored_over_its_1000_way_prediction(served):
    folder = imagenette.download("160")
    torch.manual_seed(0)
    lab = prunekit.load("resnet18", eval_folder=prunekit.imagenette_folder())
    data = lab.loaded.eval_data()
    assert sorted(set(data.labels.tolist())) == sorted(WNIDS.values()) and len(data) == len(WNIDS) * PER_CLASS
    assert "1000-way prediction" in data.description
    spec = lab.loaded.input_spec
    files = sorted(folder.rglob("*.JPEG"))
    images = torch.stack([load_image(f, spec.shape[1], spec.mean, spec.std) for f in files])
    labels = torch.tensor([WNIDS[f.parent.name] for f in files])
    with torch.no_grad():
        want = float((lab.loaded.model(images).argmax(1) == labels).float().mean())
    assert accuracy(lab.loaded.model, data).top1 == pytest.approx(want)


def test_the_cli_evaluates_on_imagenette_only_once_downloaded(served, capsys):
    assert cli_main(["profile", "resnet18", "--imagenette"]) == 2
    assert "prunekit data imagenette" in capsys.readouterr().err
    imagenette.download("160")
    assert cli_main(["profile", "resnet18", "--imagenette"]) == 0


def test_the_app_offers_imagenette_to_imagenet_models_only(served):
    from prunekit.app import server_state
    from tests.apptest import open_page

    at = open_page(page("model"), {"model": "fmnist-cnn"})
    assert not [t for t in at.sidebar.toggle if t.key == "w_folder"]  # not downloaded: not offered
    imagenette.download("160")
    assert server_state.folder_title() == "Imagenette" and not server_state.folder_fits("fmnist-cnn")
    at = open_page(page("model"), {"model": "fmnist-cnn"})
    assert not [t for t in at.sidebar.toggle if t.key == "w_folder"]  # a Fashion-MNIST model: not offered
    at = open_page(page("model"), {"model": "resnet18"})
    toggle = at.sidebar.toggle(key="w_folder")
    assert toggle.label == "Evaluate on Imagenette" and "1000-way prediction" in toggle.help
    assert zoo.is_imagenet("timm/resnet50.a1_in1k") and not zoo.is_imagenet("fmnist-cnn")

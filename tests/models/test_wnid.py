"""ImageNet subsets as folders named by WordNet ID (``n01440764/...``, e.g. Imagenette's 10 classes),
mapped to a 1000-class model's ImageNet indices."""

import shutil

import pytest
import torch
from torch import nn
from torchvision.datasets.imagenette import Imagenette
from torchvision.models import ResNet18_Weights

import prunekit
from prunekit.core import imagenet
from prunekit.models import datasets, zoo


def test_the_wnid_list_agrees_with_torchvisions_category_names():
    wnids = imagenet.wnids()
    assert len(wnids) == len(set(wnids)) == 1000 and list(wnids) == sorted(wnids)
    categories = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    for wnid, names in Imagenette._WNID_TO_CLASS.items():  # torchvision's own WNID -> names table
        assert categories[wnids.index(wnid)].lower() in {n.lower() for n in names}, wnid


@pytest.fixture(scope="module")
def wnid_folder(tmp_path_factory):
    """The 20 bundled ImageNet photos filed under their classes' WNIDs (their file names carry the index)."""
    root = tmp_path_factory.mktemp("wnids")
    photos = sorted(datasets.imagenet_samples_dir().glob("imagenet_*"))
    for photo in photos:
        label = int(photo.stem.split("_")[-1])
        (root / imagenet.wnids()[label]).mkdir(exist_ok=True)
        shutil.copy(photo, root / imagenet.wnids()[label] / photo.name)
    return root, photos


def test_lite0_on_a_wnid_folder_scores_the_photos_as_an_independent_loop_does(wnid_folder):
    root, photos = wnid_folder
    on_folder = zoo.load_on_folder("efficientnet-lite0", str(root))
    data = on_folder.eval_data()
    by_name = {p.name: int(p.stem.split("_")[-1]) for p in photos}
    files = sorted(f for d in sorted(root.iterdir()) for f in sorted(d.iterdir()))  # the folder's own order
    assert data.labels.tolist() == [by_name[f.name] for f in files]
    assert data.classes == on_folder.classes and len(data.classes) == 1000
    assert "accuracy is over the model's 1000-way prediction" in data.description

    reference = zoo.load("efficientnet-lite0")  # the same photos, read by the zoo with their labels
    samples = reference.eval_data()
    with torch.no_grad():
        correct = int((reference.model(samples.images).argmax(1) == samples.labels).sum())
    got = prunekit.Lab(on_folder).pruner().evaluate()
    assert (got.n, round(got.top1 * got.n)) == (len(photos), correct)


def test_your_own_1000_class_model_reads_a_wnid_subset(wnid_folder):
    root, photos = wnid_folder
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1000))
    lab = prunekit.Lab.from_model(model, torch.zeros(3, 32, 32), eval_data=root)
    data = lab.loaded.eval_data()
    assert lab.loaded.classes == imagenet.wnids()
    assert sorted(data.labels.tolist()) == sorted(int(p.stem.split("_")[-1]) for p in photos)


def test_a_folder_that_is_neither_the_models_classes_nor_wnids_is_refused(tmp_path):
    for name in ("cats", "dogs"):
        (tmp_path / name).mkdir()
        shutil.copy(next(datasets.imagenet_samples_dir().glob("imagenet_*")), tmp_path / name / "a.jpg")
    with pytest.raises(prunekit.InvalidArgumentError, match="has 2 class folders but the model predicts 1000"):
        zoo.load_on_folder("efficientnet-lite0", str(tmp_path))

"""ImageFolder evaluation sets read in shards: the shards cover the set once, their counts add up, and a
sharded sweep equals the accuracy of the same images scored in memory."""

import json

import pytest
import torch
from PIL import Image

from prunekit.cli import main
from prunekit.core.data import FolderSet
from prunekit.core.evaluate import Accuracy, accuracy_of, combine
from prunekit.core.lab import Lab
from prunekit.core.spec import PruneConfig, PruneSpec
from prunekit.models.datasets import fashion_mnist
from prunekit.models.zoo import load, load_on_folder
from prunekit.service.fanout import shard
from prunekit.service.jobs import EvalJob

IMAGES = 230  # not a multiple of the shard size: the last shard is short


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The first IMAGES Fashion-MNIST test images as PNG files in <label>/ folders (lossless)."""
    root = tmp_path_factory.mktemp("fmnist-folder")
    test = fashion_mnist("test")
    raw = (test.images[:IMAGES, 0] * 0.3530 + 0.2860).mul(255).round().clamp(0, 255).to(torch.uint8)
    for i in range(IMAGES):
        label = int(test.labels[i])
        (root / f"{label:02d}").mkdir(exist_ok=True)
        Image.fromarray(raw[i].numpy()).save(root / f"{label:02d}" / f"{i:05d}.png")
    return root


def test_shards_cover_the_set_once():
    jobs = [EvalJob("m", PruneSpec("magnitude", sparsity=0.5)), EvalJob("m")]
    parts = shard(jobs, 230, 64)
    for job in jobs:
        bounds = [p.shard for p in parts[job]]
        assert bounds == [(0, 64), (64, 128), (128, 192), (192, 230)]
        assert all(p.spec.sparsity == job.spec.sparsity and p.shard for p in parts[job])
    assert len({p.key().__repr__() for group in parts.values() for p in group}) == 8  # distinct store keys


def test_combine_adds_counts():
    parts = [Accuracy(0.5, None, 10, 10, 1.0), Accuracy(0.25, None, 4, 4, 0.5)]
    got = combine(parts, 14)
    assert got == Accuracy(6 / 14, None, 14, 14, 1.5)


def test_folder_reads_the_images_it_was_given(folder):
    source = FolderSet(str(folder), (1, 28, 28), (0.2860,), (0.3530,))
    assert len(source) == IMAGES
    part = source.read(10, 20)
    assert part.images.shape == (10, 1, 28, 28) and part.labels.tolist() == sorted(part.labels.tolist())
    with pytest.raises(Exception, match=r"a shard is \[start, stop\)"):
        source.read(20, 10_000)


@pytest.mark.parametrize("where", [[], ["--workers", "2"]])
def test_a_sharded_sweep_equals_the_same_images_scored_in_memory(folder, where, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE_DIR", str(tmp_path))
    args = ["sweep", "fmnist-cnn", "--sparsities", "0.5,0.9", "--eval-folder", str(folder), "--shard-size", "64"]
    assert main([*args, *where, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    lab = Lab(load("fmnist-cnn"))
    test = fashion_mnist("test")
    images, labels = test.images[:IMAGES], test.labels[:IMAGES]
    dense = accuracy_of(lab.loaded.model, images, labels, IMAGES)
    for row in rows:
        pruner = lab.pruner(PruneSpec("magnitude", "unstructured"))
        pruner.apply_(PruneConfig(row["sparsity"], "global"))
        pruned = accuracy_of(pruner.model, images, labels, IMAGES)
        assert row["accuracy"]["images"] == IMAGES and not row["accuracy"]["estimate"]
        assert round(row["accuracy"]["dense"] * IMAGES) == round(dense.top1 * IMAGES)
        assert round(row["accuracy"]["pruned"] * IMAGES) == round(pruned.top1 * IMAGES)


def test_folder_fingerprint_follows_the_files(folder):
    lab = Lab(load_on_folder("fmnist-cnn", str(folder)))
    before = lab.fingerprint
    victim = next(folder.glob("*/*.png"))
    data = victim.read_bytes()
    victim.write_bytes(data + b"\0")  # a different file now
    try:
        assert Lab(load_on_folder("fmnist-cnn", str(folder))).fingerprint != before
    finally:
        victim.write_bytes(data)


def test_folder_with_the_wrong_classes_is_refused(tmp_path):
    (tmp_path / "only").mkdir()
    Image.new("L", (28, 28)).save(tmp_path / "only" / "a.png")
    with pytest.raises(Exception, match="has 1 class folders but the model predicts 10 classes"):
        load_on_folder("fmnist-cnn", str(tmp_path))


def test_eval_limit_with_a_folder_is_one_clear_error(folder, capsys):
    assert main(["sweep", "fmnist-cnn", "--eval-folder", str(folder), "--eval-limit", "10"]) == 2
    assert "do not go together" in capsys.readouterr().err

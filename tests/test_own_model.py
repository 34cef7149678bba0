"""Your own model through the public API: an architecture defined only here (a residual add, a grouped
convolution, GELU and SiLU), checked against torch.nn.utils.prune and against loops written here."""

import copy

import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn.utils import prune
from torch.utils.data import DataLoader, TensorDataset

import prunekit
from prunekit.core.spec import PruneSpec
from prunekit.deploy.recover import Recipe, recover
from prunekit.errors import CompactionError
from tests.helpers import spec_of


class Residual(nn.Module):
    """Defined in this file only: no zoo, no registry knows it."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.head = nn.Linear(16, 6)

    def forward(self, x):
        y = nn.functional.gelu(self.bn(self.stem(x)))
        y = y + nn.functional.silu(self.grouped(y))  # the add couples stem's and grouped's channels
        return self.head(y.mean((2, 3)))


def _model_and_data(seed: int = 0, n: int = 96) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Residual()
    images = torch.randn(n, 3, 12, 12, generator=gen)
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.1, 0.1)
        model.bn.running_var.uniform_(0.5, 1.5)
        labels = model.eval()(images).argmax(1)  # a model that is right on its own data: accuracy is meaningful
        labels[::5] = (labels[::5] + 1) % 6  # and wrong on every fifth image
        labels[:12] = torch.arange(12) % 6  # every class has images
    return model, images, labels


PRUNABLE = ("stem", "grouped", "head")


def _reference_masks(model: nn.Module, sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    """torch.nn.utils.prune's L1 masks on a copy: global_unstructured, or l1_unstructured per layer."""
    ref = copy.deepcopy(model)
    params = [(ref.get_submodule(name), "weight") for name in PRUNABLE]
    if scope == "global":
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    else:
        for module, name in params:
            prune.l1_unstructured(module, name, amount=sparsity)
    return {name: ref.get_submodule(name).weight_mask.bool() for name in PRUNABLE}


@pytest.mark.parametrize(("sparsity", "scope"), [(0.7, "global"), (0.5, "local"), (0.9, "global")])
def test_masks_equal_torch_prune_and_accuracy_equals_an_independent_loop(sparsity, scope):
    model, images, labels = _model_and_data()
    lab = prunekit.Lab.from_model(model, images[0], eval_data=(images, labels))
    pruner = lab.pruner(PruneSpec("magnitude", "unstructured"))
    result = pruner.prune(prunekit.PruneConfig(sparsity, scope))
    reference = _reference_masks(model, sparsity, scope)
    for name in PRUNABLE:
        ours = pruner.model.get_submodule(name).weight != 0
        assert torch.equal(ours, reference[name]), name
    assert {layer.name for layer in result.layers} == set(PRUNABLE)
    kept = sum(int(m.sum()) for m in reference.values())
    total = sum(m.numel() for m in reference.values())
    assert result.achieved_sparsity == pytest.approx(1 - kept / total)

    masked = copy.deepcopy(model).eval()
    with torch.no_grad():
        for name in PRUNABLE:
            masked.get_submodule(name).weight.mul_(reference[name])
        correct = int((masked(images).argmax(1) == labels).sum())
    accuracy = pruner.evaluate()
    assert (accuracy.n, round(accuracy.top1 * accuracy.n)) == (len(labels), correct)


def test_the_callers_model_is_never_changed():
    model, images, labels = _model_and_data()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lab = prunekit.Lab.from_model(model, images[:1], eval_data=(images, labels))
    lab.pruner(PruneSpec("l1", "filter")).prune(prunekit.PruneConfig(0.5, "global"))
    lab.pruner(PruneSpec("magnitude", "unstructured")).prune(prunekit.PruneConfig(0.9, "local"))
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class Depthwise(Residual):
    def __init__(self) -> None:
        super().__init__()
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=16)


def test_filters_of_coupled_channels_are_pruned_together_and_compact_to_the_masked_outputs():
    model, images, labels = _model_and_data()
    torch.manual_seed(1)
    model = Depthwise().eval()
    lab = prunekit.Lab.from_model(model, images[0], eval_data=(images, labels))
    pruner = lab.pruner(PruneSpec("l1", "filter"))
    result = pruner.prune(prunekit.PruneConfig(0.5, "local"))
    stem = pruner.model.stem.weight.abs().sum((1, 2, 3)) != 0
    grouped = pruner.model.grouped.weight.abs().sum((1, 2, 3)) != 0
    assert torch.equal(stem, grouped)  # the residual add: one channel set, pruned together
    with torch.no_grad():
        masked_out = pruner.model(images)
    compacted = lab.pruner(PruneSpec("l1", "filter")).compact(prunekit.PruneConfig(0.5, "local")).model
    assert compacted.stem.out_channels == compacted.grouped.groups == int(stem.sum()) < 16
    with torch.no_grad():
        assert torch.allclose(compacted(images), masked_out, atol=1e-5)
    assert result.effective_sparsity is not None and result.collapse is False


def test_a_grouped_convolution_losing_channels_unevenly_is_not_compacted_and_says_why():
    model, images, labels = _model_and_data()
    lab = prunekit.Lab.from_model(model, images[0], eval_data=(images, labels))
    pruner = lab.pruner(PruneSpec("l1", "filter"))
    pruner.prune(prunekit.PruneConfig(0.5, "local"))
    kept = (pruner.model.grouped.weight.abs().sum((1, 2, 3)) != 0).reshape(4, 4).sum(1).tolist()
    assert len(set(kept)) > 1  # this model and seed remove unevenly across the 4 groups
    removed = [4 - k for k in kept]
    with pytest.raises(CompactionError) as info:
        lab.pruner(PruneSpec("l1", "filter")).compact(prunekit.PruneConfig(0.5, "local"))
    assert f"'grouped' is a grouped convolution (4 groups) and this allocation removes {removed}" in str(info.value)


def _folder(tmp_path, images: torch.Tensor, labels: torch.Tensor) -> list[str]:
    """Write ``images`` as PNGs into ``tmp_path/<class>/``; returns the class names in sorted order."""
    names = [f"class{c}" for c in range(6)]
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        (tmp_path / names[label]).mkdir(exist_ok=True)
        pixels = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        Image.fromarray(pixels).save(tmp_path / names[label] / f"{i:03}.png")
    return names


def test_every_form_of_eval_data_gives_the_same_images(tmp_path):
    model, images, labels = _model_and_data()
    forms = [
        (images, labels),
        TensorDataset(images, labels),
        DataLoader(TensorDataset(images, labels), batch_size=7),
    ]
    for form in forms:
        data = prunekit.Lab.from_model(model, images[0], eval_data=form).loaded.eval_data()
        assert torch.equal(data.images, images) and torch.equal(data.labels, labels)

    grid = (images.sigmoid() * 255).round() / 255  # exactly representable as 8-bit pixels
    names = _folder(tmp_path, grid, labels)
    folder = prunekit.Lab.from_model(model, images[0], eval_data=tmp_path, normalisation=((0.0,) * 3, (1.0,) * 3))
    data = folder.loaded.eval_data()
    assert folder.loaded.classes == tuple(names)
    order = sorted(range(len(labels)), key=lambda i: (int(labels[i]), i))  # class folders, then file names
    assert torch.equal(data.labels, labels[order])
    assert torch.allclose(data.images, grid[order], atol=1e-6)


def test_class_names_come_from_the_caller_the_dataset_or_the_outputs():
    model, images, labels = _model_and_data()
    named = prunekit.Lab.from_model(model, images[0], (images, labels), classes=list("abcdef"))
    assert named.loaded.classes == tuple("abcdef")
    assert prunekit.Lab.from_model(model, images[0], (images, labels)).loaded.classes == tuple("012345")


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (dict(model="not a model"), "must be a torch.nn.Module, got str"),
        (dict(example_input=torch.zeros(12, 12)), "one image (C, H, W) or (1, C, H, W), got (12, 12)"),
        (dict(example_input=torch.zeros(1, 5, 12, 12)), "does not run on example_input (1, 5, 12, 12)"),
        (dict(eval_data=(torch.zeros(4, 3, 8, 8), torch.zeros(4))), "like example_input, got (4, 3, 8, 8)"),
        (dict(eval_data=(torch.zeros(4, 3, 12, 12), torch.tensor([0, 1, 2, 6]))), "got values from 0 to 6"),
        (dict(eval_data=[1, 2]), "a DataLoader or an ImageFolder path, got list"),
        (dict(classes=["a", "b"]), "2 class names (a, b) for a model with 6 outputs"),
    ],
)
def test_bad_input_is_refused_with_the_bad_value_named(change, needle):
    model, images, labels = _model_and_data()
    args = dict(model=model, example_input=images[0], eval_data=(images, labels)) | change
    with pytest.raises(prunekit.InvalidArgumentError) as info:
        prunekit.Lab.from_model(**args)
    assert needle in str(info.value)


def test_recovery_fine_tunes_on_the_callers_train_data():
    model, images, labels = _model_and_data(n=160)
    lab = prunekit.Lab.from_model(
        model, images[0], eval_data=(images[:96], labels[:96]), train_data=(images[96:], labels[96:])
    )
    recipe = Recipe(bn_images=64, epochs=2, batch_size=16, lr=1e-2)
    result = recover(lab, spec_of("magnitude", "unstructured", "none", prunekit.PruneConfig(0.8, "global")), recipe)
    assert result.train_images == 64
    assert set(result.accuracy) >= {"dense", "pruned"} and result.accuracy["dense"].n == 96


def test_export_of_your_model_says_why_it_is_masked_and_its_snippet_asks_for_your_model(tmp_path):
    import importlib.util
    import subprocess
    import sys

    from prunekit.deploy.export import build_bundle, export_report, write_bundle
    from prunekit.deploy.latency import LatencyConfig

    model, images, labels = _model_and_data()
    lab = prunekit.Lab.from_model(model, images[0], eval_data=(images, labels), name="residual")
    pruner = lab.pruner(PruneSpec("l1", "filter"))
    bundle = build_bundle(pruner, prunekit.PruneConfig(0.5, "local"))
    assert bundle.compacted is None and "'grouped' is a grouped convolution" in bundle.note
    report = export_report(
        lab, pruner, bundle, LatencyConfig(batches=(1,), runs=3, warmup=1, budget_s=0.05, min_runs=3)
    )
    assert report["note"] == bundle.note and "compact" not in report["latency_ms"]
    paths = write_bundle(bundle, tmp_path)
    alone = subprocess.run(
        [sys.executable, str(paths["prune_snippet.py"])], capture_output=True, text=True, timeout=120
    )
    assert alone.returncode != 0 and alone.stderr.startswith("residual is your own model")
    masks = torch.load(paths["masks.pt"], weights_only=True)
    fresh = copy.deepcopy(model)
    spec = importlib.util.spec_from_file_location("prune_snippet", paths["prune_snippet.py"])
    snippet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(snippet)  # imported as a user would, then applied to their model
    snippet.apply_masks(fresh)
    assert set(masks) and all(
        torch.equal(fresh.get_submodule(k.rsplit(".", 1)[0]).weight_mask.bool(), v)
        for k, v in masks.items()
        if k.endswith("weight")
    )


def test_the_oracle_runs_on_your_own_model_through_the_api():
    """Your model travels to the oracle's jobs (cloudpickled) and comes back with the same numbers as the core."""
    from prunekit.core.oracle import oracle

    model, images, labels = _model_and_data()
    lab = prunekit.Lab.from_model(model, images[0], eval_data=(images, labels))
    report = lab.oracle(criteria=["l1", "taylor"])
    want = oracle(model, lab.clusters, images, labels)
    assert report.truth.groups == want.groups and report.truth.images == len(labels)
    for got, ref in zip(report.truth.increases, want.increases, strict=True):
        assert got == pytest.approx(ref, abs=1e-6)
    assert [a.criterion for a in report.agreements] == ["l1", "taylor"]

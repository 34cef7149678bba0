"""Export round trips: masks re-applied, ONNX Runtime against PyTorch, the prune snippet in a subprocess."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from prunekit.core.lab import Lab
from prunekit.core.spec import Allocation, PruneSpec
from prunekit.deploy.export import FILES, build_bundle, write_bundle
from prunekit.models import zoo
from tests.helpers import ROOT

CASES = [("fmnist-resnet", "l1", "filter", "local", 0.5), ("fmnist-cnn", "magnitude", "unstructured", "local", 0.7)]


@pytest.fixture(scope="module", params=CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def exported(request, tmp_path_factory):
    name, criterion, structure, scope, sparsity = request.param
    lab = Lab(zoo.load(name))
    spec = PruneSpec(criterion, structure, Allocation(scope, "mean"), sparsity)
    bundle = build_bundle(lab.pruner(spec), spec)
    out = tmp_path_factory.mktemp(name)
    write_bundle(bundle, out)
    return lab, spec, bundle, out


def test_every_file_is_written(exported):
    *_, out = exported
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)


def test_reapplied_masks_reproduce_the_prune_result(exported):
    lab, spec, bundle, out = exported
    masks = torch.load(out / "masks.pt", weights_only=True)
    again = lab.pruner(spec).prune_from_masks(masks, spec)  # a fresh working copy
    assert again.to_json() == bundle.result.to_json()


def test_onnx_runtime_agrees_with_pytorch_on_256_test_images(exported):
    import onnxruntime as ort

    lab, *_, bundle, out = exported
    images = lab.loaded.eval_data().images[:256]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": images.numpy()})[0]
    with torch.no_grad():
        want = bundle.model(images).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_safetensors_holds_the_exported_model(exported):
    from safetensors.torch import load_file

    *_, bundle, out = exported
    state = load_file(out / "model.safetensors")
    for k, v in bundle.model.state_dict().items():
        assert torch.equal(state[k], v), k
    if bundle.compacted is not None:
        params = sum(v.numel() for k, v in state.items() if k in dict(bundle.model.named_parameters()))
        assert params == bundle.compacted.params_compact == bundle.result.nonzero_params


def test_ratios_follow_torch_pruning_form(exported):
    *_, bundle, out = exported
    ratios = json.loads((out / "ratios.json").read_text())
    assert ratios["structure"] == bundle.result.structure
    assert all(0.0 <= r < 1.0 for r in ratios["pruning_ratio_dict"].values())
    if bundle.result.structure == "unstructured":
        assert ratios["pruning_ratio_dict"] == bundle.result.layer_sparsities()
    else:  # each root's ratio is the share of its output channels the compacted model no longer has
        dense, small = dict(exported[0].loaded.model.named_modules()), dict(bundle.model.named_modules())
        for name, ratio in ratios["pruning_ratio_dict"].items():
            assert ratio == pytest.approx(1 - small[name].weight.shape[0] / dense[name].weight.shape[0]), name


def test_the_prune_snippet_run_alone_gives_the_same_layer_sparsities(exported):
    *_, bundle, out = exported
    run = subprocess.run(
        [sys.executable, str(out / "prune_snippet.py")],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        check=True,
    )
    got = json.loads(run.stdout)  # every module with a mask (BatchNorms too, for filters)
    want = {k: v for k, v in bundle.result.layer_sparsities().items() if v > 0}
    assert {k: got[k] for k in want} == pytest.approx(want, abs=1e-12)

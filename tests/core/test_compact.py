"""Compaction: the compacted model computes what the masked one does, with exactly its non-zero weights."""

import copy
import dataclasses

import pytest
import torch

from prunekit.core.lab import Lab
from prunekit.core.profile import profile_model
from prunekit.core.spec import Allocation, PruneConfig, PruneSpec
from prunekit.errors import InvalidArgumentError, LayerCollapseError
from prunekit.models import zoo
from tests.helpers import TinyResNet, tiny_loaded

BUNDLED = [n for n in zoo.BUNDLED if (zoo.MODELS_DIR / f"{n}.json").is_file()]
CONFIGS = [("local", "none", 0.5), ("global", "mean", 0.3)]


def _without_exact_zeros(loaded: zoo.Loaded) -> zoo.Loaded:
    """An untrained torchvision model has BN biases of exactly 0: give every parameter a seeded non-zero
    value so that 'non-zero after masking' counts only what pruning removed."""
    model = copy.deepcopy(loaded.model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            zeros = p == 0
            p[zeros] = (torch.rand(int(zeros.sum()), generator=gen) * 0.1 + 0.01).to(p.dtype)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1, generator=gen)
    return dataclasses.replace(loaded, model=model)


def _check(lab: Lab, scope: str, normalise: str, sparsity: float) -> None:
    pruner = lab.pruner(PruneSpec("l1", "filter", allocation=Allocation(normalise=normalise)))
    result = pruner.prune(PruneConfig(sparsity, scope))
    compacted = pruner.compact(PruneConfig(sparsity, scope))
    assert compacted.params_compact == result.nonzero_params == compacted.params_masked_nonzero
    assert compacted.params_compact < compacted.params_dense
    assert compacted.relative_diff <= 1e-5, (compacted.max_abs_diff, compacted.max_abs_output)
    assert compacted.channels_removed == result.units_removed
    # the page's theoretical speedup (MACs of surviving weights) is what the compacted model really computes
    assert profile_model(compacted.model, lab.loaded.input_spec.shape).total_macs == result.remaining_macs
    assert all(not p.requires_grad for p in compacted.model.parameters())


@pytest.mark.parametrize("name", BUNDLED)
@pytest.mark.parametrize(("scope", "normalise", "sparsity"), CONFIGS)
def test_compacted_bundled_model_equals_masked(name, scope, normalise, sparsity):
    _check(Lab(zoo.load(name)), scope, normalise, sparsity)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_compacted_torchvision_structure_equals_masked(name):
    lab = Lab(_without_exact_zeros(zoo.load(name)))
    _check(lab, "local", "none", 0.5)


def test_compaction_leaves_the_masked_and_base_models_alone():
    lab = Lab(tiny_loaded(TinyResNet))
    pruner = lab.pruner(PruneSpec("l1", "filter"))
    before = {k: v.clone() for k, v in lab.loaded.model.state_dict().items()}
    masked = pruner.prune(PruneConfig(0.5, "local"))
    work = {k: v.clone() for k, v in pruner.model.state_dict().items()}
    compacted = pruner.compact(PruneConfig(0.5, "local"))
    assert compacted.params_compact == masked.nonzero_params
    for k, v in lab.loaded.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    for k, v in pruner.model.state_dict().items():
        assert torch.equal(v, work[k]), k


def test_a_cluster_pruned_to_zero_channels_is_refused_as_layer_collapse():
    # Raw global L1 ranks the first conv's 9-weight filters below everything else: at 30% they all go.
    pruner = Lab(zoo.load("fmnist-cnn")).pruner(PruneSpec("l1", "filter", allocation=Allocation(normalise="none")))
    with pytest.raises(LayerCollapseError, match=r"layer collapse at 'features.0' \(all 16 of its coupled channels"):
        pruner.compact(PruneConfig(0.3, "global"))


def test_unstructured_masks_cannot_be_compacted():
    pruner = Lab(tiny_loaded(TinyResNet)).pruner(PruneSpec("magnitude", "unstructured"))
    with pytest.raises(InvalidArgumentError, match="compaction needs a filter allocation"):
        pruner.compact(PruneConfig(0.5, "global"))

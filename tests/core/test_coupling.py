"""Coupled channel groups as the pages show them, against Torch-Pruning's dependency graph built here."""

from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

from prunekit.core.lab import Lab
from prunekit.core.structure import coupling
from prunekit.errors import InvalidArgumentError
from prunekit.models import zoo


def _groups_by_torch_pruning(model: nn.Module, input_shape) -> set[frozenset[str]]:
    """Each group of the dependency graph as the set of its Conv, Linear and BatchNorm modules' names."""
    traced = copy.deepcopy(model).eval()
    for p in traced.parameters():
        p.requires_grad_(True)
    names = {m: n for n, m in traced.named_modules()}
    graph = tp.DependencyGraph().build_dependency(traced, example_inputs=torch.zeros(1, *input_shape))
    last = [m for m in traced.modules() if isinstance(m, nn.Linear)][-1:]
    kinds = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d)
    return {
        frozenset(names[dep.target.module] for dep, _ in group.items if isinstance(dep.target.module, kinds))
        for group in graph.get_all_groups(ignored_layers=last, root_module_types=[nn.Conv2d, nn.Linear])
    }


def test_the_groups_of_fmnist_resnet_are_torch_prunings():
    loaded = zoo.load("fmnist-resnet")
    lab = Lab(loaded)
    ours = {frozenset(c.layers()) for c in lab.clusters}
    assert ours == _groups_by_torch_pruning(loaded.model, loaded.input_spec.shape)
    assert any(len(c.producers()) > 1 for c in lab.clusters)  # a residual add ties two layers' filters


def test_a_layer_names_its_own_group_and_the_classifier_none():
    lab = Lab(zoo.load("fmnist-resnet"))
    tied = next(c for c in lab.clusters if len(c.producers()) > 1)
    for member in tied.producers():
        found = coupling(lab.clusters, member.layer)
        assert found is not None and found.cluster == tied
    classifier = [x.name for x in lab.profile.prunable()][-1]
    assert coupling(lab.clusters, classifier) is None
    modules = dict(lab.loaded.model.named_modules())
    parts = {row["layer"]: row["part"] for row in coupling(lab.clusters, tied.root).rows(modules)}
    assert set(parts) == tied.layers() and "filters" in parts.values()
    assert all(
        (p == "BatchNorm entries") == isinstance(modules[n], nn.modules.batchnorm._BatchNorm) for n, p in parts.items()
    )


@pytest.mark.parametrize("name", ["fmnist-cnn", "fmnist-mobilenet"])
def test_other_bundled_models_group_as_torch_pruning_does(name):
    loaded = zoo.load(name)
    ours = {frozenset(c.layers()) for c in Lab(loaded).clusters}
    assert ours == _groups_by_torch_pruning(loaded.model, loaded.input_spec.shape)


class _DenseConcat(nn.Module):
    """A DenseNet-like block: each conv sees the concat of all before it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.grow = nn.ModuleList(nn.Conv2d(4 + 3 * i, 3, 3, padding=1) for i in range(4))
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 5)

    def dense(self, x):
        features = [self.stem(x)]
        for conv in self.grow:
            features.append(conv(torch.cat(features, 1)))
        return self.bn(torch.cat(features, 1))

    def forward(self, x):
        return self.head(self.dense(x).mean((2, 3)))


class _SwappedHalves(_DenseConcat):
    """The same block whose two halves are swapped before the head: Torch-Pruning maps the split's
    indices past the end of 'bn' (channel 16 of 16), so filter pruning must be refused, not crash later."""

    def forward(self, x):
        a, b = torch.chunk(self.dense(x), 2, dim=1)
        return self.head(torch.cat([b, a], 1).mean((2, 3)))


def test_a_split_torch_pruning_cannot_follow_is_refused_by_both_mappings():
    from prunekit.core.structure import build_clusters

    torch.manual_seed(0)
    messages = []
    for once in (True, False):
        with pytest.raises(InvalidArgumentError, match="channel 16 of 'bn', which has 16") as caught:
            build_clusters(_SwappedHalves(), (1, 8, 8), map_once=once)
        messages.append(str(caught.value))
    assert messages[0] == messages[1]


@pytest.mark.parametrize("name", ["tiny-concat", "densenet121"])
def test_mapping_indices_once_gives_torch_prunings_own_clusters(name):
    """Torch-Pruning re-maps every concat's indices before each group; prunekit maps them once (16 s -> 2 s
    on DenseNet-201): the clusters must be the same, index for index."""
    from prunekit.core.structure import build_clusters

    torch.manual_seed(0)
    if name == "tiny-concat":
        model, shape = _DenseConcat(), (1, 8, 8)
    else:
        loaded = zoo.load(name, warm=False)
        model, shape = loaded.model, (3, 64, 64)
    once = build_clusters(model, shape)
    assert len(once) >= 5 and any(len(c.members) > 3 for c in once)
    assert once == build_clusters(model, shape, map_once=False)

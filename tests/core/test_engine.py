"""Engine invariants on seeded tiny models."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.core.importance import CRITERIA
from prunekit.core.lab import Lab
from prunekit.core.spec import PruneConfig, PruneSpec, Structure
from prunekit.errors import InvalidArgumentError, UnknownNameError
from tests.helpers import TinyCNN, TinyResNet, state_of, tiny_loaded

FILTER, UNSTRUCTURED = Structure.FILTER, Structure.UNSTRUCTURED

MODELS = [TinyCNN, TinyResNet]


@pytest.fixture(scope="module", params=MODELS, ids=lambda c: c.__name__)
def lab(request):
    return Lab(tiny_loaded(request.param))


def weights(model):
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}


@pytest.mark.parametrize("scope", ["global", "local"])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.37, 0.5, 0.9, 0.99])
def test_unstructured_achieved_equals_requested_within_one_weight(lab, scope, sparsity):
    pruner = lab.pruner(PruneSpec("magnitude", UNSTRUCTURED))
    result = pruner.prune(PruneConfig(sparsity, scope))
    total = sum(w.numel() for w in weights(pruner.model).values())
    zeros = sum(int((w == 0).sum()) for w in weights(pruner.model).values())
    if scope == "global":
        assert abs(zeros - sparsity * total) <= 0.5 + 1e-9
    else:  # each layer rounds on its own: within one weight per layer
        assert abs(zeros - sparsity * total) <= len(weights(pruner.model)) * 0.5 + 1e-9
    assert result.achieved_sparsity == pytest.approx(zeros / total)


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.75])
def test_local_gives_every_layer_its_sparsity(lab, sparsity):
    pruner = lab.pruner(PruneSpec("magnitude", UNSTRUCTURED))
    pruner.prune(PruneConfig(sparsity, "local"))
    for name, w in weights(pruner.model).items():
        assert abs(int((w == 0).sum()) - sparsity * w.numel()) <= 0.5 + 1e-9, name


def test_global_uses_one_threshold(lab):
    pruner = lab.pruner(PruneSpec("magnitude", UNSTRUCTURED))
    pruner.prune(PruneConfig(0.6, "global"))
    base = weights(lab.loaded.model)
    removed, kept = [], []
    for name, w in weights(pruner.model).items():
        removed.append(base[name][w == 0].abs().flatten())
        kept.append(base[name][w != 0].abs().flatten())
    assert torch.cat(removed).max() <= torch.cat(kept).min()


def test_global_differs_from_local_on_unequal_layers(lab):
    pruner = lab.pruner(PruneSpec("magnitude", UNSTRUCTURED))
    g = pruner.prune(PruneConfig(0.6, "global")).layer_sparsities()
    values = list(g.values())
    assert max(values) - min(values) > 0.05  # one threshold does not give uniform layers


@pytest.mark.parametrize("structure", [UNSTRUCTURED, FILTER])
@pytest.mark.parametrize("scope", ["global", "local"])
def test_base_model_is_never_modified(lab, structure, scope):
    before = state_of(lab.loaded.model)
    pruner = lab.pruner(PruneSpec("random", structure))
    for s in (0.3, 0.8, 0.1):
        pruner.prune(PruneConfig(s, scope))
        pruner.evaluate()
    pruner.collapse_point(PruneConfig(0.5, scope))
    after = lab.loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_working_copy_is_reused_and_restored():
    lab = Lab(tiny_loaded(TinyCNN))
    pruner = lab.pruner(PruneSpec("magnitude", UNSTRUCTURED))
    model = pruner.model
    pruner.prune(PruneConfig(0.9, "global"))
    pruner.prune(PruneConfig(0.0, "global"))
    assert pruner.model is model
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), lab.loaded.model.state_dict().values(), strict=True)
    )


def test_structured_masks_remove_whole_coupled_groups():
    lab = Lab(tiny_loaded(TinyResNet))
    pruner = lab.pruner(PruneSpec("l1", FILTER))
    result = pruner.prune(PruneConfig(0.5, "local"))
    m = pruner.model
    # residual add: conv2 filter j, shortcut filter j and both BNs' entries j go together
    dead2 = (m.conv2.weight.flatten(1) == 0).all(1)
    dead_s = (m.short.weight.flatten(1) == 0).all(1)
    assert torch.equal(dead2, dead_s) and dead2.any()
    assert torch.equal(m.bn2.weight == 0, dead2) and torch.equal(m.bn_s.weight == 0, dead2)
    assert (m.fc.weight[:, dead2] == 0).all()  # the consumer's input columns too
    # depthwise: conv1 filter j, bn1 j, dw filter j, bn_dw j and conv2 input kernel j go together
    dead1 = (m.conv1.weight.flatten(1) == 0).all(1)
    assert torch.equal((m.dw.weight.flatten(1) == 0).all(1), dead1)
    assert (m.conv2.weight[:, dead1] == 0).all()
    assert torch.equal(m.bn_dw.weight == 0, dead1)
    # local: every cluster loses exactly round(0.5 x its channels), counted on the root's dead filters
    for cluster in pruner.table.clusters:
        root = dict(m.named_modules())[cluster.root]
        dead = int((root.weight.flatten(1) == 0).all(1).sum())
        assert dead == round(0.5 * cluster.size), cluster.root
    assert result.units_removed == sum(round(0.5 * c.size) for c in pruner.table.clusters)


def test_structured_counts_the_next_layers_kernels_as_removed():
    lab = Lab(tiny_loaded(TinyCNN))
    pruner = lab.pruner(PruneSpec("l2", FILTER))
    result = pruner.prune(PruneConfig(0.5, "local"))
    m = pruner.model
    nonzero = sum(int(torch.count_nonzero(p)) for p in m.parameters())
    assert result.nonzero_params == nonzero
    dead = (m.conv1.weight.flatten(1) == 0).all(1)
    assert dead.sum() == 2 and (m.conv2.weight[:, dead] == 0).all() and (m.conv1.bias[dead] == 0).all()


def test_constructed_network_collapses_and_is_reported():
    lab = Lab(tiny_loaded(TinyCNN))
    pruner = lab.pruner(PruneSpec("magnitude", UNSTRUCTURED))
    result = pruner.prune(PruneConfig(0.0, "local", overrides={"conv2": 0.99}))
    assert not result.collapse
    with torch.no_grad():
        pruner.model.conv2.weight.zero_()  # cut every path by hand
    from prunekit.core.connectivity import connectivity

    conn = connectivity(pruner.probe, pruner.model)
    assert conn.collapsed and conn.effective_sparsity == 1.0
    # and through the API: a layer pruned at 100% is named, and the network collapses
    lab2 = Lab(tiny_loaded(TinyCNN))
    p2 = lab2.pruner(PruneSpec("magnitude", UNSTRUCTURED))
    point = p2.collapse_point(PruneConfig(0.5, "global"))
    assert point is not None and 0 < point < 1
    total = sum(s.size for s in p2.table.sets)
    at = p2.prune(PruneConfig(point, "global"))
    before = p2.prune(PruneConfig(point - 1 / total, "global"))
    assert at.collapse and not before.collapse
    assert at.effective_sparsity == 1.0


def test_effective_sparsity_finds_disconnected_weights():
    lab = Lab(tiny_loaded(TinyCNN))
    pruner = lab.pruner(PruneSpec("magnitude", UNSTRUCTURED))
    pruner.prune(PruneConfig(0.0, "local"))
    with torch.no_grad():  # filter 0 of conv1 feeds nothing once conv2's input kernels 0 are gone
        pruner.model.conv2.weight[:, 0] = 0
    from prunekit.core.connectivity import connectivity

    conn = connectivity(pruner.probe, pruner.model)
    assert conn.effective_layer_sparsity["conv1"] == pytest.approx(1 / 4)
    assert not conn.collapsed


@settings(max_examples=25, deadline=None)
@given(
    sparsity=st.floats(0.0, 0.99),
    scope=st.sampled_from(["global", "local"]),
    structure=st.sampled_from([UNSTRUCTURED, FILTER]),
    model=st.sampled_from(MODELS),
    keep=st.booleans(),
)
def test_property_invariants(sparsity, scope, structure, model, keep):
    lab = _labs(model)
    pruner = lab.pruner(PruneSpec("random" if structure == FILTER else "magnitude", structure))
    result = pruner.prune(PruneConfig(sparsity, scope, keep_first_last=keep))
    assert result.effective_sparsity >= result.achieved_sparsity - 1e-9
    assert result.nonzero_params <= result.total_params
    assert result.remaining_macs <= result.total_macs
    assert result.units_removed == round(sparsity * result.units_total) or scope == "local" or keep
    if keep:
        for name in lab.first_last:
            assert result.layer_sparsities()[name] == 0.0
    if structure == UNSTRUCTURED and not keep and scope == "global":
        assert abs(result.achieved_sparsity - sparsity) <= 0.5 / result.units_total + 1e-9


_LABS = {}


def _labs(model):
    if model not in _LABS:
        _LABS[model] = Lab(tiny_loaded(model))
    return _LABS[model]


def test_metrics_are_independent_recounts():
    lab = Lab(tiny_loaded(TinyCNN))
    pruner = lab.pruner(PruneSpec("magnitude", UNSTRUCTURED))
    r = pruner.prune(PruneConfig(0.5, "local"))
    total = sum(p.numel() for p in lab.loaded.model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in pruner.model.parameters())
    assert r.total_params == total and r.nonzero_params == nonzero
    assert r.compression_ratio == pytest.approx(total / nonzero)
    # speedup: dense MACs over MACs of surviving weights, recounted by hand for this architecture
    m = pruner.model
    macs = lambda w, positions: int((w != 0).sum()) * positions  # noqa: E731
    remaining = macs(m.conv1.weight, 64) + macs(m.conv2.weight, 64) + macs(m.fc.weight, 1)
    dense = 4 * 9 * 64 + 6 * 4 * 9 * 64 + 96 * 3
    assert r.total_macs == dense
    assert r.theoretical_speedup == pytest.approx(dense / remaining)


def test_overrides_and_bad_input():
    lab = Lab(tiny_loaded(TinyCNN))
    pruner = lab.pruner(PruneSpec("magnitude", UNSTRUCTURED))
    r = pruner.prune(PruneConfig(0.5, "global", overrides={"fc": 0.25}))
    assert r.layer_sparsities()["fc"] == pytest.approx(round(0.25 * 288) / 288)
    with pytest.raises(InvalidArgumentError, match="1.0"):
        PruneConfig(1.0)
    with pytest.raises(UnknownNameError, match="sideways"):
        PruneConfig(0.5, "sideways")
    with pytest.raises(UnknownNameError, match="nope"):
        pruner.prune(PruneConfig(0.5, overrides={"nope": 0.1}))
    with pytest.raises(InvalidArgumentError, match="does not support structure 'unstructured'"):
        lab.pruner(PruneSpec("l1", UNSTRUCTURED))


@pytest.mark.parametrize("name", list(CRITERIA))
def test_every_criterion_scores_tiny_resnet(name):
    lab = Lab(tiny_loaded(TinyResNet))
    for structure in CRITERIA[name].structures:
        table = lab.table(name, structure)
        assert table.sets and all(torch.all(s.sorted_scores[1:] >= s.sorted_scores[:-1]) for s in table.sets)

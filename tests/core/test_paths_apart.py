"""The slider move without the path test, and the path test measured apart (by an evaluation worker on big
models): the parts add up to the whole result, and zeros counted on the bits equal a float count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.core.lab import Lab
from prunekit.core.loaded import ModelSpec
from prunekit.core.masks import apply_masks_, zero_count
from prunekit.core.spec import Allocation, PruneConfig, PruneSpec
from prunekit.service.codec import decode, encode
from prunekit.service.jobs import PathJob
from prunekit.service.runner import JobRunner
from tests.helpers import TinyCNN, TinyResNet, spec_of, tiny_loaded, wait_until

CONFIGS = [PruneConfig(0.5), PruneConfig(0.9, "local"), PruneConfig(0.97)]


def test_zeros_counted_on_the_bits_equal_a_float_count_and_minus_zero_is_kept_apart():
    w = torch.randn(1000)
    w[::7] = 0.0
    assert zero_count(w, signed_zeros=False) == zero_count(w) == int((w == 0).sum())
    w[1::11] = -0.0
    assert zero_count(w) == int((w == 0).sum())
    assert zero_count(w, signed_zeros=False) < zero_count(w)  # why a base with -0.0 is counted as floats


@pytest.mark.parametrize("cls", [TinyCNN, TinyResNet])
@pytest.mark.parametrize("structure,criterion", [("unstructured", "magnitude"), ("filter", "l1")])
def test_a_result_without_paths_plus_its_path_test_is_the_whole_result(cls, structure, criterion):
    lab = Lab(tiny_loaded(cls))
    for config in CONFIGS:
        whole = lab.result(spec_of(criterion, structure, "none", config))
        fast = lab.result(spec_of(criterion, structure, "none", config), paths=False)
        assert fast.effective_sparsity is None and fast.collapse is None and fast.paths_pending
        assert all(r.effective_sparsity is None for r in fast.layers)
        conn = lab.pruner(PruneSpec(criterion, structure)).paths(config)
        assert fast.with_paths(conn) == whole and not whole.paths_pending


@pytest.mark.parametrize("structure,criterion", [("unstructured", "magnitude"), ("filter", "l1")])
def test_weights_that_were_minus_zero_are_counted_as_zeros(structure, criterion):
    loaded = tiny_loaded(TinyResNet)
    with torch.no_grad():
        for m in loaded.model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.view(-1)[::5] = -0.0  # as a checkpoint pruned by w * mask carries them
    lab = Lab(loaded)
    pruner = lab.pruner(PruneSpec(criterion, structure))
    assert pruner.work.signed_zeros  # found, so these layers are counted as floats
    for config in CONFIGS:
        r = pruner.prune(config, paths=False)
        weights = [m.weight for m in pruner.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        zeros = sum(int((w == 0).sum()) for w in weights)
        assert r.achieved_sparsity == zeros / sum(w.numel() for w in weights)
        assert r.nonzero_params == sum(int((p != 0).sum()) for p in pruner.model.parameters())


def test_pruned_entries_are_plus_zero():
    lab = Lab(tiny_loaded(TinyResNet))
    for structure, criterion in (("unstructured", "magnitude"), ("filter", "l1")):
        pruner = lab.pruner(PruneSpec(criterion, structure))
        pruner.apply_(PruneConfig(0.6))
        assert not any(bool((torch.signbit(p) & (p == 0)).any()) for p in pruner.model.parameters())
    model = tiny_loaded(TinyCNN).model
    masks = {n: torch.rand(p.shape) > 0.5 for n, p in model.named_parameters()}
    apply_masks_(model, masks)
    assert not any(bool((torch.signbit(p) & (p == 0)).any()) for p in model.parameters())


def test_the_path_job_of_a_worker_equals_the_engines_path_test_and_survives_the_store():
    runner = JobRunner()
    runner.load("fmnist-resnet", ModelSpec("prunekit.models.zoo:load", ("fmnist-resnet",)))
    lab = runner.labs["fmnist-resnet"]
    for job in (
        PathJob("fmnist-resnet", PruneSpec("magnitude", sparsity=0.8)),
        PathJob("fmnist-resnet", PruneSpec("l1", "filter", allocation=Allocation("local"), sparsity=0.5)),
    ):
        conn = runner.run(job)
        whole = lab.result(job.spec)
        fast = lab.result(job.spec, paths=False)
        assert fast.with_paths(conn) == whole
        assert decode(job, encode(job, conn)) == conn
        assert job.key()[0] == "paths" and job.canonical() is job  # never merged into the accuracy job


def test_the_collapse_point_of_a_worker_equals_the_engines_and_the_tradeoff_waits_for_it(monkeypatch, services):
    from prunekit.service import readings
    from prunekit.service.jobs import Collapse, CollapseJob, EvalJob

    spec = ModelSpec("prunekit.models.zoo:load", ("fmnist-cnn",))
    runner = JobRunner()
    runner.load("fmnist-cnn", spec)
    job = CollapseJob("fmnist-cnn", PruneSpec("l1", "filter"))
    got = runner.run(job)
    want = runner.labs["fmnist-cnn"].collapse_point(spec_of("l1", "filter", "none", PruneConfig(0.0)))
    assert got == Collapse(want) and want is not None and decode(job, encode(job, got)) == got

    lab = Lab(runner.labs["fmnist-cnn"].loaded)
    monkeypatch.setattr(Lab, "paths_inline", property(lambda self: False))  # as on a big model
    svc = services(1)
    svc.register("fmnist-cnn", spec)
    template = EvalJob("fmnist-cnn", subset=1000)
    recipes = [PruneSpec("l1", "filter", "global")]
    first = readings.tradeoff(svc, lab, template, recipes, (0.0, 0.5), "s")[recipes[0]]
    assert first["collapse_pending"] and first["collapse_point"] is None  # the rerun did not bisect

    def read() -> dict:
        return readings.tradeoff(svc, lab, template, recipes, (0.0, 0.5), "s")[recipes[0]]

    wait_until(lambda: not read()["collapse_pending"], what="the worker's collapse point")
    curve = read()
    assert curve["collapse_point"] == want and curve["collapse_errors"] == []

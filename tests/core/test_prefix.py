"""Scans that reuse the dense prefix: a point computed on the kept dense activations equals the plain pass, bit for
bit, on every bundled model and on a residual network, and a worker's scan points equal a worker's without reuse."""

import pytest
import torch
from torch import nn

from prunekit.core import prefix
from prunekit.core.evaluate import predict_logits
from prunekit.core.lab import Lab
from prunekit.core.loaded import ModelSpec
from prunekit.core.spec import PruneSpec
from prunekit.models import zoo
from prunekit.service.fanout import _alone, sensitivity_jobs
from prunekit.service.jobs import ESTIMATE_IMAGES, EVAL_BATCH, EvalJob
from prunekit.service.runner import JobRunner

BUNDLED = ["fmnist-cnn", "fmnist-resnet", "fmnist-mobilenet", "fmnist-vgg"]


def _points(lab: Lab, spec: PruneSpec, count: int) -> list[PruneSpec]:
    """``count`` scan points spread over the model's unit sets: one set pruned to 60%, the rest dense."""
    sets = lab.table(*spec.table_key).sets
    picked = [sets[round(i * (len(sets) - 1) / max(count - 1, 1))] for i in range(count)]
    return [_alone(EvalJob("m", spec), ((s.name, 0.6),)).spec for s in picked]


@pytest.mark.parametrize("name", BUNDLED)
@pytest.mark.parametrize("structure", ["unstructured", "filter"])
def test_a_point_on_the_kept_prefix_is_the_plain_pass_bit_for_bit(name, structure):
    lab = Lab(zoo.load(name))
    model = lab.loaded.model.eval()
    images = lab.loaded.eval_data().images[:200].contiguous(memory_format=torch.channels_last)
    model.to(memory_format=torch.channels_last)
    traced = prefix.trace(model)
    assert traced is not None
    cache = prefix.PrefixCache()
    spec = PruneSpec("l1" if structure == "filter" else "magnitude", structure)
    pruner = lab.pruner(spec)
    saved = []
    for point in _points(lab, spec, 3):
        pruner.apply_(point)
        changed = prefix.changed_modules(model, pruner.model)
        assert changed  # the set's layer (and for filters its BatchNorm and the next layer's inputs)
        split = prefix.cut(traced, changed, pruner.model)
        plain = predict_logits(pruner.model, images, EVAL_BATCH)
        if split is None:  # the first layer: nothing before it to keep
            continue
        saved.append(1 - split.changed_share)
        for _ in range(2):  # computing the prefix, then reusing it
            assert torch.equal(cache.logits((name, len(images)), split, images, EVAL_BATCH), plain)
    assert saved and max(saved) > 0


class Residual(nn.Module):
    """A residual block whose skip connection crosses any cut inside it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.a, self.bn = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        y = self.b(torch.relu(self.bn(self.a(x))))
        return self.head((x + y).mean((2, 3)))


def test_the_skip_connection_crossing_the_cut_is_kept_too():
    dense = Residual().eval()
    pruned = Residual().eval()
    with torch.no_grad():
        pruned.b.weight[:4] = 0
    changed = prefix.changed_modules(dense, pruned)
    assert changed == {"b"}
    split = prefix.cut(prefix.trace(dense), changed, pruned)
    assert len(split.frontier) == 2  # the block's inner activation and the skip connection
    images = torch.randn(40, 1, 12, 12)
    got = prefix.PrefixCache().logits(("r", 40), split, images, 16)
    assert torch.equal(got, predict_logits(pruned, images, 16))
    assert not torch.equal(got, predict_logits(dense, images, 16))


def test_nothing_is_kept_over_the_memory_bound():
    dense, pruned = Residual().eval(), Residual().eval()
    with torch.no_grad():
        pruned.b.weight[:4] = 0
    split = prefix.cut(prefix.trace(dense), {"b"}, pruned)
    cache = prefix.PrefixCache(max_bytes=1000)
    images = torch.randn(40, 1, 12, 12)
    assert torch.equal(cache.logits(("r", 40), split, images, 16), predict_logits(pruned, images, 16))
    assert cache.bytes == 0


def test_a_workers_scan_points_equal_a_worker_without_reuse():
    spec = ModelSpec("prunekit.models.zoo:load", ("fmnist-resnet",))
    reuse, plain = JobRunner(engines=False), JobRunner(engines=False, prefixes=False)
    for runner in (reuse, plain):
        runner.load("fmnist-resnet", spec)
    template = EvalJob("fmnist-resnet", PruneSpec("l1", "filter"), subset=ESTIMATE_IMAGES)
    jobs = sensitivity_jobs(reuse.labs["fmnist-resnet"], template, (0.3, 0.7))[1:]
    for job in jobs[::3]:
        got, want = reuse.run(job), plain.run(job)
        assert (got.top1, got.n, got.total) == (want.top1, want.n, want.total), job
    assert reuse.prefixes.bytes > 0 and plain.prefixes is None


class InPlaceSkip(Residual):
    """The suffix adds into the skip connection in place (``x.add_(y)``; ``fx`` traces ``x += y`` as an
    out-of-place add): the kept frontier must not change."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = x.add_(self.b(torch.relu(self.bn(self.a(x)))))
        return self.head(x.mean((2, 3)))


def test_an_in_place_operation_after_the_cut_leaves_the_kept_activations_alone():
    dense, pruned = InPlaceSkip().eval(), InPlaceSkip().eval()
    with torch.no_grad():
        pruned.b.weight[:4] = 0
    split = prefix.cut(prefix.trace(dense), {"b"}, pruned)
    cache, images = prefix.PrefixCache(), torch.randn(40, 1, 12, 12)
    want = predict_logits(pruned, images, 16)
    for _ in range(3):
        assert torch.equal(cache.logits(("r", 40), split, images, 16), want)


def test_models_that_are_not_the_same_architecture_are_run_plain():
    from torch.nn.utils import prune

    dense, masked = Residual().eval(), Residual().eval()
    prune.l1_unstructured(masked.b, "weight", 0.5)  # masks kept as extra tensors (weight_orig, weight_mask)
    assert prefix.changed_modules(dense, masked) is None
    smaller = Residual().eval()
    smaller.b = nn.Conv2d(8, 4, 3, padding=1)  # a compacted layer
    assert prefix.changed_modules(dense, smaller) is None

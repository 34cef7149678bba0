"""Filter configurations are scored on the compacted model: the same correct count as the masked model,
exactly, on every bundled model's full test split; where compaction is refused, the masked model is used."""

import pytest
import torch

from prunekit.core.evaluate import accuracy_of
from prunekit.core.loaded import ModelSpec
from prunekit.core.spec import Allocation, PruneConfig, PruneSpec
from prunekit.errors import CompactionError
from prunekit.models import zoo
from prunekit.service.jobs import EVAL_BATCH, EvalJob
from prunekit.service.runner import JobRunner

CONFIGS = [(0.3, "local"), (0.6, "global")]


def _correct(acc) -> int:
    return round(acc.top1 * acc.n)


@pytest.mark.parametrize("name", zoo.BUNDLED)
def test_the_compacted_model_scores_exactly_as_the_masked_one(name):
    runner = JobRunner()
    runner.load(name, ModelSpec("prunekit.models.zoo:load", (name,)))
    lab = runner.labs[name]
    data, images = runner._whole(name, lab)
    compacted = 0
    for sparsity, scope in CONFIGS:
        job = EvalJob(name, PruneSpec("l1", "filter", allocation=Allocation(scope), sparsity=sparsity))
        scored = runner._scored(lab, job)
        masked = runner._pruned(lab, job)
        compacted += scored is not masked
        if scored is not masked:
            assert sum(p.numel() for p in scored.parameters()) < sum(p.numel() for p in masked.parameters())
        with torch.no_grad():
            want = accuracy_of(masked, images, data.labels, len(data), EVAL_BATCH)
        got = runner.run(job)
        assert (_correct(got), got.n) == (_correct(want), len(data)), (name, sparsity, scope)
    assert compacted >= 1  # local scope never collapses: that configuration ran compacted


def test_a_configuration_compaction_refuses_is_scored_on_the_masked_model(monkeypatch):
    runner = JobRunner()
    runner.load("fmnist-cnn", ModelSpec("prunekit.models.zoo:load", ("fmnist-cnn",)))
    lab = runner.labs["fmnist-cnn"]
    job = EvalJob("fmnist-cnn", PruneSpec("l1", "filter", allocation=Allocation("local"), sparsity=0.5))

    def refuse(self, config: PruneConfig):
        raise CompactionError("cannot compact: refused for this test")

    monkeypatch.setattr(type(runner._pruner(lab, job)), "compact", refuse)
    assert runner._scored(lab, job) is runner._pruned(lab, job)
    data, images = runner._whole("fmnist-cnn", lab)
    with torch.no_grad():
        want = accuracy_of(runner._pruned(lab, job), images, data.labels, len(data), EVAL_BATCH)
    assert _correct(runner.run(job)) == _correct(want)

"""Progressive evaluation: one pass over the set scores the estimate's stratified images first, reports them
as the estimate job's result, then completes the full figure; nothing is scored twice."""

import pytest
import torch

from prunekit.core.evaluate import accuracy_of
from prunekit.core.loaded import ModelSpec
from prunekit.core.spec import PruneSpec
from prunekit.service.chunks import Control
from prunekit.service.jobs import ESTIMATE_IMAGES, EVAL_BATCH, EvalJob
from prunekit.service.queue import LIVE_ESTIMATE, LIVE_FULL
from prunekit.service.runner import JobRunner
from prunekit.service.scheduler import Scheduler
from tests.helpers import wait_until


def _figures(acc) -> tuple:
    return (acc.top1, acc.top5, acc.n, acc.total)


CASES = {  # fmnist-vgg (the costliest) on one configuration: filters, so on the compacted model too
    "fmnist-cnn": ((None, 0.0), ("magnitude", 0.8), ("l1", 0.4)),
    "fmnist-vgg": (("l1", 0.4),),
}


@pytest.mark.parametrize("name", list(CASES))
def test_one_pass_reports_the_estimate_and_ends_on_todays_full_figure(name):
    runner = JobRunner()
    runner.load(name, ModelSpec("prunekit.models.zoo:load", (name,)))
    lab = runner.labs[name]
    data, images = runner._whole(name, lab)
    jobs = [
        EvalJob(name)
        if criterion is None
        else EvalJob(name, PruneSpec(criterion, "filter" if criterion == "l1" else "unstructured", sparsity=s))
        for criterion, s in CASES[name]
    ]
    for job in jobs:
        seen = []
        full = runner.run(job, Control(partial=lambda *got, seen=seen: seen.append(got)))
        ((estimate_job, estimate),) = seen
        assert estimate_job == job.with_subset(ESTIMATE_IMAGES)
        assert _figures(estimate) == _figures(runner.run(estimate_job))  # what the estimate job alone gives
        model = lab.loaded.model if job.is_dense else runner._scored(lab, job)
        with torch.no_grad():
            whole = accuracy_of(model, images, data.labels, len(data), EVAL_BATCH)  # one pass in file order
        assert _figures(full) == _figures(whole) and full.n == len(data) == 10_000


def test_a_live_full_request_scores_its_estimate_on_the_way(monkeypatch, services):
    sent, original = [], Scheduler._send

    def send(self, w, entry, resume=None):  # this service's dispatches only (others may run in this test process)
        if self is svc._sched:
            sent.append(entry.job)
        return original(self, w, entry, resume)

    monkeypatch.setattr(Scheduler, "_send", send)
    svc = services(1)
    svc.register("fmnist-cnn", ModelSpec("prunekit.models.zoo:load", ("fmnist-cnn",)))
    full = EvalJob("fmnist-cnn", PruneSpec("magnitude", sparsity=0.6))
    estimate = full.with_subset(ESTIMATE_IMAGES)
    svc.request([(full, LIVE_FULL), (estimate, LIVE_ESTIMATE)], "s")
    wait_until(lambda: all(svc.lookup(j) is not None for j in (full, estimate)))
    assert sent == [full]  # one job ran; the estimate came from its first part
    runner = JobRunner()
    runner.load("fmnist-cnn", ModelSpec("prunekit.models.zoo:load", ("fmnist-cnn",)))
    assert _figures(svc.lookup(estimate)) == _figures(runner.run(estimate))
    assert _figures(svc.lookup(full)) == _figures(runner.run(full))

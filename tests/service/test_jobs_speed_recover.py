"""Speed and recovery jobs in the evaluation workers: measured, stored, stoppable."""

from __future__ import annotations

import math
import time

import pytest

from prunekit.core.loaded import ModelSpec
from prunekit.core.spec import Allocation, PruneSpec
from prunekit.deploy.latency import UNSTRUCTURED_NOTE, Latency
from prunekit.deploy.recover import Recipe, Recovery
from prunekit.service.jobs import JobError, RecoverJob, SpeedJob
from prunekit.service.watch import Stirred
from tests.helpers import wait_for

pytestmark = pytest.mark.xdist_group("service")
CNN = ModelSpec("prunekit.models.zoo:load", ("fmnist-cnn",))


@pytest.fixture
def service(services):
    svc = services(1, store="r.sqlite3", tiny=True)
    svc.register("fmnist-cnn", CNN, fingerprint="cnn")
    return svc


def test_speed_job_times_dense_masked_and_compact_and_is_stored(service, services):
    job = SpeedJob("tiny", PruneSpec("l1", "filter", allocation=Allocation("local"), sparsity=0.5))
    got = wait_for(service, [job])[job]
    assert isinstance(got, Latency), got
    assert set(got.ms) == {"dense", "masked", "compact"} and set(got.runs) == {1, 64}
    assert all(t > 0 for per in got.ms.values() for t in per.values()) and got.note is None
    service.close()  # a restart: the result is stored just after it is shown, so close (which waits) first
    again = services(1, store="r.sqlite3", tiny=True)
    assert again.lookup(job) == got  # from the store, not re-measured


def test_speed_job_explains_unstructured_and_collapse(service):
    flat = SpeedJob("tiny", PruneSpec("magnitude", "unstructured", sparsity=0.5))
    cut = SpeedJob("fmnist-cnn", PruneSpec("l1", "filter", sparsity=0.3))  # raw global L1 empties features.0
    got = wait_for(service, [flat, cut])
    assert got[flat].note == UNSTRUCTURED_NOTE and "compact" not in got[flat].ms
    assert "layer collapse at 'features.0'" in got[cut].note and "compact" not in got[cut].ms


def test_recover_job_reports_progress_and_can_be_stopped(service):
    job = RecoverJob(
        "fmnist-cnn",
        PruneSpec("l1", "filter", allocation=Allocation("local"), sparsity=0.5),
        recipe=Recipe(bn_images=256, epochs=20, train_images=2048),
    )
    heard, plain = [], []
    service.watch([job], lambda j, outcome: heard.append(outcome), progress=True)  # a page part waiting for it
    service.watch([job], lambda j, outcome: plain.append(outcome))  # a listener for outcomes only
    service.request([(job, 1)], "s:recover")
    deadline = time.time() + 120
    while (service.progress(job) is None or service.progress(job).step < 3) and time.time() < deadline:
        time.sleep(0.05)
    seen = service.progress(job)
    assert (
        seen is not None
        and seen.accuracy["pruned"] is not None
        and seen.total_steps == 20 * math.ceil(seen.train_images / 128)
    )
    service.stop(job)
    got = wait_for(service, [job], session="s:recover")[job]
    assert isinstance(got, Recovery) and got.stopped and 3 <= got.step < got.total_steps
    assert got.accuracy["finetuned"].n == 10_000 and got.model is None
    service.forget(job)
    assert service.lookup(job) is None  # a stopped run is not stored: asking again reruns it
    reports = [h.progress for h in heard[:-1]]  # each progress report as it came, then the outcome
    assert reports and all(isinstance(h, Stirred) and not h.dropped for h in heard[:-1]), heard
    assert [r.step for r in reports] == sorted(r.step for r in reports) and isinstance(reports[0], Recovery)
    assert heard[-1] == got and plain == [got]


def test_recover_job_errors_name_the_missing_training_data(service):
    job = RecoverJob("tiny", PruneSpec("l1", "filter", sparsity=0.5), recipe=Recipe(epochs=1))
    got = wait_for(service, [job])[job]
    assert isinstance(got, JobError) and "recovery needs TinyResNet's training data" in got.message


def test_staircase_job_times_every_width_and_is_stored(service, services):
    from prunekit.deploy.staircase import Staircase
    from prunekit.service.jobs import StaircaseJob

    job, bad = StaircaseJob("fmnist-cnn", layer="features.0"), StaircaseJob("fmnist-cnn", layer="nope")
    got = wait_for(service, [job, bad])
    assert isinstance(got[job], Staircase), got[job]
    assert got[job].counts == list(range(1, 17)) and got[job].dense == 16 and all(t > 0 for t in got[job].ms)
    assert isinstance(got[bad], JobError) and "unknown layer 'nope'" in got[bad].message
    service.close()  # a restart (see above)
    again = services(1, store="r.sqlite3", tiny=True)
    again.register("fmnist-cnn", CNN, fingerprint="cnn")
    assert again.lookup(job) == got[job]  # from the store, not re-measured

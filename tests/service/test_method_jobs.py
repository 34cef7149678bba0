"""Training methods as jobs of the evaluation service: progress, a stop, a stored result another service reads."""

from __future__ import annotations

import time

import pytest

from prunekit.core.loaded import ModelSpec
from prunekit.deploy.training import Budget, MethodResult
from prunekit.errors import UnknownNameError
from prunekit.service.jobs import JobError, MethodJob
from prunekit.service.store import ResultStore
from tests.helpers import wait_for

pytestmark = pytest.mark.xdist_group("service")
CNN = ModelSpec("prunekit.models.zoo:load", ("fmnist-cnn",))
SMALL = Budget(epochs=1.0, train_images=256, batch_size=64)


@pytest.fixture
def service(services):
    svc = services(1, store="r.sqlite3")
    svc.register("fmnist-cnn", CNN, fingerprint="cnn")
    return svc


def test_a_method_job_runs_in_a_worker_and_is_stored(service, services, tmp_path):
    job = MethodJob.of("fmnist-cnn", "snip", 0.9, SMALL)
    got = wait_for(service, [job])[job]
    assert isinstance(got, MethodResult), got
    assert got.accuracy.n == 10_000 and got.model is None and got.steps == -(-got.train_images // 64)
    assert got.paper == "Lee et al. 2019" and got.weight_sparsity >= 0.899
    again = services(1, store=ResultStore(tmp_path / "r.sqlite3"))
    again.register("fmnist-cnn", CNN, fingerprint="cnn")
    assert again.lookup(job) == got  # from the store: the same figures, not trained again


def test_a_method_job_reports_progress_and_a_stopped_one_is_not_stored(service):
    job = MethodJob.of("fmnist-cnn", "ft", 0.5, Budget(epochs=20, train_images=1024, batch_size=64))
    service.request([(job, 1)], "s:method")
    deadline = time.time() + 120
    while (service.progress(job) is None or service.progress(job).steps < 3) and time.time() < deadline:
        time.sleep(0.05)
    seen = service.progress(job)
    assert seen is not None and seen.total_steps == 20 * -(-seen.train_images // 64) and seen.model is None
    service.stop(job)
    got = wait_for(service, [job], session="s:method")[job]
    assert isinstance(got, MethodResult) and got.stopped and 3 <= got.steps < got.total_steps
    service.forget(job)
    assert service.lookup(job) is None


def test_method_jobs_name_bad_methods_and_missing_batchnorm(service):
    with pytest.raises(UnknownNameError, match="nosuch"):
        MethodJob.of("fmnist-cnn", "nosuch", 0.5, SMALL)
    job = MethodJob.of("fmnist-cnn", "slimming", 0.5, SMALL)
    got = wait_for(service, [job])[job]
    assert isinstance(got, JobError) and "needs BatchNorm layers" in got.message

"""The oracle in the evaluation workers: slices of groups, stored, the same numbers as in-process."""

from __future__ import annotations

import pytest

from prunekit.core.evaluate import stratified_indices
from prunekit.core.lab import Lab
from prunekit.core.loaded import ModelSpec
from prunekit.core.oracle import Oracle, oracle
from prunekit.models import zoo
from prunekit.service.fanout import oracle_jobs
from prunekit.service.jobs import JobError, OracleJob
from prunekit.service.readings import read_oracle
from tests.helpers import wait_for

pytestmark = pytest.mark.xdist_group("service")
CNN = ModelSpec("prunekit.models.zoo:load", ("fmnist-cnn",))


def test_the_workers_oracle_is_the_in_process_one_and_is_stored(services):
    svc = services(2, store="r.sqlite3")
    svc.register("fmnist-cnn", CNN, fingerprint="cnn")
    lab = Lab(zoo.load("fmnist-cnn"))
    view = read_oracle(svc, lab, "fmnist-cnn", 120, "s", start=False)
    assert view.truth is None and view.done == 0 and view.total == sum(c.size for c in lab.clusters)
    jobs = oracle_jobs(lab, "fmnist-cnn", 120)
    got = wait_for(svc, jobs)
    assert all(isinstance(o, Oracle) for o in got.values()), got
    view = read_oracle(svc, lab, "fmnist-cnn", 120, "s", start=False)
    assert view.done == view.total and not view.running
    data = lab.loaded.eval_data()
    picked = stratified_indices(data.labels, 120)
    plain = oracle(lab.loaded.model, lab.clusters, data.images[picked], data.labels[picked])
    assert view.truth.groups == plain.groups and view.truth.dense_loss == pytest.approx(plain.dense_loss, abs=1e-6)
    for a, b in zip(view.truth.increases, plain.increases, strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    svc.close()  # a restart: results are stored just after they are shown, so close (which waits) first
    again = services(1, store="r.sqlite3")
    again.register("fmnist-cnn", CNN, fingerprint="cnn")
    assert read_oracle(again, lab, "fmnist-cnn", 120, "s", start=False).truth == view.truth  # from the store


def test_a_slice_of_an_unknown_group_fails_with_the_groups_named(services):
    svc = services(1)
    svc.register("fmnist-cnn", CNN, fingerprint="cnn")
    bad = OracleJob("fmnist-cnn", subset=50, group="nope", channels=(0, 2))
    got = wait_for(svc, [bad])[bad]
    assert isinstance(got, JobError) and "unknown channel group 'nope'" in got.message and "features.0" in got.message

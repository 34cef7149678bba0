"""The evaluation service, its result store and the shared-result building blocks."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
import torch

from prunekit.core.evaluate import Accuracy, accuracy_of, stratified_indices, wilson
from prunekit.core.lab import POOL_SIZE, Lab
from prunekit.core.loaded import ModelSpec
from prunekit.core.shared import Pool, SingleFlight
from prunekit.core.spec import Allocation, PruneConfig, PruneSpec
from prunekit.errors import InvalidArgumentError
from prunekit.service.jobs import EvalJob, JobError
from prunekit.service.queue import CURVE, LIVE_FULL, curve_grid
from prunekit.service.store import ResultStore
from prunekit.service.watch import Stirred
from tests.helpers import TINY_SPEC, TinyResNet, spec_of, tiny_loaded, wait_for, wait_until

pytestmark = pytest.mark.xdist_group("service")  # worker processes: keep these on one xdist worker


@pytest.fixture
def service(services):
    return services(2, store="r.sqlite3", tiny=True)


# --- statistics ---------------------------------------------------------------------------------


def test_wilson_matches_the_textbook_values():
    # 17/20 (the ImageNet samples' 85%): Wilson 95% interval 0.640-0.948 (Newcombe 1998, method 3)
    lo, hi = wilson(17, 20)
    assert lo == pytest.approx(0.6396, abs=1e-4) and hi == pytest.approx(0.9476, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    with pytest.raises(InvalidArgumentError, match="n=0"):
        wilson(0, 0)


def test_stratified_subset_keeps_class_shares_and_is_fixed():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)[
        torch.randperm(100, generator=torch.Generator().manual_seed(1))
    ]
    idx = stratified_indices(labels, 20)
    counts = torch.bincount(labels[idx], minlength=3).tolist()
    assert counts == [12, 6, 2]
    assert torch.equal(idx, stratified_indices(labels, 20)) and torch.equal(idx, idx.sort().values)
    assert len(stratified_indices(labels, 500)) == 100


# --- shared results -----------------------------------------------------------------------------


def test_single_flight_computes_once_for_concurrent_askers():
    cache: SingleFlight[int] = SingleFlight()
    calls, gate = [], threading.Event()

    def compute():
        calls.append(1)
        gate.wait(5)
        return 42

    threads = [threading.Thread(target=lambda: cache.get("k", compute)) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.1)
    assert cache.peek("k") is None  # still computing: a peek never waits
    gate.set()
    for t in threads:
        t.join(5)
    assert calls == [1] and cache.get("k", compute) == 42


def test_single_flight_is_bounded_and_does_not_cache_errors():
    cache: SingleFlight[int] = SingleFlight(maxsize=2)
    for k in range(3):
        cache.get(k, lambda k=k: k)
    assert cache.peek(0) is None and cache.peek(2) == 2
    with pytest.raises(ZeroDivisionError):
        cache.get("bad", lambda: 1 // 0)
    assert cache.get("bad", lambda: 7) == 7


def test_pool_never_makes_more_than_its_size():
    pool = Pool(object, size=2)
    with pool.borrow() as a, pool.borrow() as b:
        assert a is not b
    for _ in range(10):
        with pool.borrow():
            pass
    assert pool.made == 2


def test_lab_result_is_shared_and_equals_a_private_pruner():
    lab = Lab(tiny_loaded(TinyResNet))
    config = PruneConfig(0.5, "global")
    shared = lab.result(spec_of("l1", "filter", "none", config))
    assert lab.result(spec_of("l1", "filter", "none", PruneConfig(0.5, "global"))) is shared
    private = lab.pruner(PruneSpec("l1", "filter")).prune(config)
    assert shared.layer_sparsities() == private.layer_sparsities()
    assert shared.nonzero_params == private.nonzero_params
    for s in (0.1, 0.2, 0.3, 0.4):
        lab.result(spec_of("l1", "filter", "none", PruneConfig(s, "local")))
    assert lab.working_copies() <= POOL_SIZE


# --- the service --------------------------------------------------------------------------------


def _in_process(job: EvalJob, subset: int | None = None) -> Accuracy:
    loaded = tiny_loaded(TinyResNet)
    lab = Lab(loaded)
    data = loaded.eval_data()
    model = loaded.model
    if not job.is_dense:
        pruner = lab.pruner(job.spec)
        pruner.apply_(job.config())
        model = pruner.model
    idx = stratified_indices(data.labels, subset) if subset else torch.arange(len(data))
    return accuracy_of(model, data.images[idx], data.labels[idx], len(data))


def test_worker_results_equal_in_process_evaluation(service):
    jobs = [
        EvalJob("tiny"),
        EvalJob("tiny", PruneSpec("l1", "filter", allocation=Allocation("global"), sparsity=0.5)),
        EvalJob("tiny", PruneSpec("magnitude", allocation=Allocation("local"), sparsity=0.7)),
        EvalJob("tiny", PruneSpec("magnitude", allocation=Allocation("local"), sparsity=0.7), subset=20),
    ]
    known = wait_for(service, jobs)
    for job in jobs:
        got, want = known[job], _in_process(job, job.subset)
        assert isinstance(got, Accuracy), got
        assert (got.top1, got.n, got.total) == (want.top1, want.n, want.total)
    assert known[jobs[3]].n < known[jobs[3]].total  # the estimate says it is one


def test_identical_requests_are_one_job_and_zero_sparsity_is_the_dense_job(service):
    job = EvalJob("tiny", PruneSpec("magnitude", sparsity=0.3))
    wait_for(service, [job], session="a")
    done = service.status().done
    wait_for(service, [EvalJob("tiny", PruneSpec("magnitude", sparsity=0.3))], session="b")
    assert service.status().done == done
    dense = wait_for(service, [EvalJob("tiny")])
    zero = service.request(
        [(EvalJob("tiny", PruneSpec("l2", "filter", allocation=Allocation("local"), sparsity=0.0)), LIVE_FULL)]
    )
    assert list(zero.values()) == list(dense.values())


def test_a_superseded_request_is_still_computed(service):
    old = EvalJob("tiny", PruneSpec("magnitude", sparsity=0.11))
    new = EvalJob("tiny", PruneSpec("magnitude", sparsity=0.12))
    service.request([(old, LIVE_FULL)], "s")
    service.request([(new, LIVE_FULL)], "s")  # the slider moved on: old is demoted (tests/service/test_queue.py)
    known = wait_for(service, [new, old], session="other")
    assert all(isinstance(v, Accuracy) for v in known.values())


def test_curve_is_filled_coarse_to_fine_for_both_scopes(service):
    grid = curve_grid()
    assert [s for level, s in grid if level == 0] == [round(0.1 * k, 2) for k in range(10)]
    assert len({s for _, s in grid}) == 100 and [lv for lv, _ in grid] == sorted(lv for lv, _ in grid)
    service.fill_curve(EvalJob("tiny", PruneSpec("magnitude")), ["global", "local"])
    with service._sched.lock:
        levels = {e.priority()[0] for e in service._sched.queue}
    assert levels <= {CURVE, CURVE + 1, CURVE + 2}
    coarse = [
        EvalJob("tiny", PruneSpec("magnitude", allocation=Allocation(sc), sparsity=s))
        for s in (0.1, 0.5, 0.9)
        for sc in ("global", "local")
    ]
    wait_until(lambda: all(service.lookup(j) is not None for j in coarse), what="the coarse curve points")
    assert all(isinstance(service.lookup(j), Accuracy) for j in coarse)


def test_results_survive_a_restart_and_a_corrupt_row_is_ignored(tmp_path, services):
    path = tmp_path / "r.sqlite3"
    job = EvalJob("tiny", PruneSpec("l1", "filter", sparsity=0.25))
    first = services(1, store=ResultStore(path), tiny=True)
    acc = wait_for(first, [job])[job]
    first.close()
    second = services(1, store=ResultStore(path), tiny=True)
    assert second.lookup(job) == acc  # from disk: no worker ran it
    assert second.status().done == 1 and second.status().busy == 0
    other = services(1, store=ResultStore(path))
    other.register("tiny", TINY_SPEC, fingerprint="other-weights")
    assert other.lookup(job) is None  # other weights: a different key, never the stale value
    other.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE results SET value = replace(value, '0.', '1.')")
    store = ResultStore(path)
    assert all(store.get(k) is None for (k,) in sqlite3.connect(path).execute("SELECT key FROM results"))
    assert len(store) == 0


def test_store_is_bounded(tmp_path):
    store = ResultStore(tmp_path / "s.sqlite3", max_rows=10)
    for i in range(25):
        store.put(f"k{i}", {"i": i})
    assert len(store) <= 10 and store.get("k24") == {"i": 24} and store.get("k0") is None


def test_a_crashed_worker_is_restarted_and_its_job_retried(tmp_path, services):
    flag = tmp_path / "crash-once"
    flag.touch()
    svc = services(1)
    svc.register("crashy", ModelSpec("tests.helpers:load_crashing", (str(flag), True)))
    svc.register("doomed", ModelSpec("tests.helpers:load_crashing", (str(flag.with_name("always")), False)))
    flag.with_name("always").touch()
    job = EvalJob("crashy", PruneSpec("magnitude", sparsity=0.5))
    got = wait_for(svc, [job])[job]
    assert isinstance(got, Accuracy) and svc.status().restarts == 1 and not flag.exists()
    doomed = EvalJob("doomed")
    err = wait_for(svc, [doomed])[doomed]
    assert isinstance(err, JobError) and "died 2 times" in err.message
    assert isinstance(wait_for(svc, [EvalJob("crashy")])[EvalJob("crashy")], Accuracy)  # still serving


def test_unregistered_model_and_bad_jobs_give_clear_errors(service):
    missing = EvalJob("nosuchmodel")
    assert "not registered" in wait_for(service, [missing])[missing].message
    with pytest.raises(InvalidArgumentError, match="sparsity"):
        EvalJob("tiny", PruneSpec("magnitude", sparsity=1.0))
    with pytest.raises(InvalidArgumentError, match="subset"):
        EvalJob("tiny", subset=0)
    bad = EvalJob("tiny", PruneSpec("nosuchcriterion", sparsity=0.5))
    assert "nosuchcriterion" in wait_for(service, [bad])[bad].message


def test_an_uploaded_state_dict_is_evaluated_by_the_workers_from_its_bytes(tmp_path, services):
    import io

    from prunekit.models import checkpoints, zoo

    base = zoo.load("fmnist-cnn")
    state = {k: v.clone() for k, v in base.model.state_dict().items()}
    state["classifier.3.bias"] += 0.5  # not the bundled weights: the upload is what gets scored
    buf = io.BytesIO()
    torch.save(state, buf)
    blob = buf.getvalue()
    local = Lab(checkpoints.load_checkpoint(blob, "fmnist-cnn", name="upload:mine.pt"))
    pruner = local.pruner(PruneSpec("magnitude"))
    pruner.apply_(PruneConfig(0.6, "global"))
    want = pruner.evaluate()
    svc = services(1)
    svc.register(
        "upload:mine.pt#x",
        ModelSpec("prunekit.models.checkpoints:load_checkpoint", (blob, "fmnist-cnn", "upload:mine.pt")),
    )
    job = EvalJob("upload:mine.pt#x", PruneSpec("magnitude", allocation=Allocation("global"), sparsity=0.6))
    got = wait_for(svc, [job])[job]
    assert isinstance(got, Accuracy) and (got.top1, got.n) == (want.top1, want.n)


def test_background_work_leaves_one_worker_free_for_live_requests(service):
    service.fill_curve(EvalJob("tiny", PruneSpec("l2", "filter")), ["global", "local"])
    seen_busy = []

    def look() -> bool:
        status = service.status()
        seen_busy.append(status.busy)
        assert status.busy <= 1, status  # two workers: background work may hold one of them
        return not status.queued_background

    wait_until(look, what="the background curve")
    assert max(seen_busy) == 1


def test_readings_prefer_the_full_figure_and_surface_errors(service):
    from prunekit.service.readings import read_point, reading

    est, full = Accuracy(0.8, None, 20, 64, 0.1), Accuracy(0.75, None, 64, 64, 0.2)
    assert reading(None, est).best is est and reading(None, est).pending
    assert reading(full, est).best is full and not reading(full, est).pending
    failed = reading(JobError("boom"), est)
    assert failed.error == "boom" and failed.best is est and not failed.pending
    template = EvalJob("tiny", PruneSpec("magnitude", sparsity=0.4))
    assert read_point(service, template, ["global"], 20, "r", ask=False).pending  # reading asks for nothing
    assert service.status().queued_live == 0
    wait_until(lambda: not read_point(service, template, ["global", "local"], 20, "r").pending, what="both scopes")
    view = read_point(service, template, ["global", "local"], 20, "r")
    for got, job in (
        (view.scopes["local"].full, template.with_scope("local")),
        (view.dense.full, EvalJob("tiny")),
    ):
        want = _in_process(job)
        assert (got.top1, got.n, got.total) == (want.top1, want.n, want.total)


class _CountingStore(ResultStore):
    """A result store that counts its reads."""

    def __init__(self, path) -> None:
        super().__init__(path)
        self.reads = 0

    def get(self, key: str) -> dict | None:
        self.reads += 1
        return super().get(key)


@pytest.fixture
def counting(tmp_path, services):
    """A one-worker service on a store that counts its reads: (service, store)."""
    store = _CountingStore(tmp_path / "r.sqlite3")
    svc = services(1, store=store, tiny=True)
    return svc, store


def test_a_miss_reads_the_store_once_and_a_result_that_lands_is_seen(counting):
    svc, store = counting
    job = EvalJob("tiny", PruneSpec("magnitude", sparsity=0.3))
    assert [svc.lookup(job) for _ in range(50)] == [None] * 50
    assert store.reads == 1  # a rerun or a poll asking again never reads SQLite
    acc = wait_for(svc, [job])[job]
    assert isinstance(acc, Accuracy) and svc.lookup(job) == acc and store.reads == 1


def test_a_curve_asked_for_on_every_rerun_is_queued_once(counting):
    svc, store = counting
    template = EvalJob("tiny", PruneSpec("magnitude"))
    svc.fill_curve(template, ["global", "local"])
    first = store.reads
    assert first == 2 * len(curve_grid()) - 1  # each point read once; sparsity 0 is one dense job
    for sparsity in (0.3, 0.7):  # the slider moves: the same configuration's curve, asked again
        svc.fill_curve(template.at(sparsity), ["global", "local"])
    assert store.reads == first
    svc.fill_curve(EvalJob("tiny", PruneSpec("l1")), ["global", "local"])  # another configuration is queued
    assert store.reads > first


def test_a_curve_reads_the_store_once_and_then_follows_results_as_they_land(counting):
    svc, store = counting
    template = EvalJob("tiny", PruneSpec("magnitude"))
    assert svc.curve(template) == {}
    first = store.reads
    assert first == len(curve_grid())  # every grid point of the scope once (0 is the dense job)
    for _ in range(20):  # every later rerun or poll of every session: no store read
        assert svc.curve(template.at(0.4)) == {}
    assert store.reads == first
    points = [template.at(s) for s in (0.0, 0.5)]
    done = wait_for(svc, points)
    curve = svc.curve(template)
    assert curve == {0.0: done[points[0].canonical()], 0.5: done[points[1]]}
    assert store.reads == first
    assert svc.curve(template.with_scope("local")) == {0.0: done[points[0].canonical()]}


def test_a_dropped_model_leaves_the_workers_and_comes_back_when_registered_again(services, tmp_path):
    """What the server's memory budget evicts, the workers forget: its next job loads it again."""
    log = tmp_path / "loads.txt"
    spec = ModelSpec("tests.helpers:load_tiny_counted", (str(log),))
    service = services(1)
    service.register("counted", spec)
    first = EvalJob("counted", PruneSpec("magnitude", sparsity=0.2))
    assert isinstance(wait_for(service, [first])[first], Accuracy)
    service.register("counted", spec)  # registered again without a drop: the worker keeps it
    again = EvalJob("counted", PruneSpec("magnitude", sparsity=0.3))
    assert isinstance(wait_for(service, [again])[again], Accuracy)
    assert len(log.read_text().split()) == 1
    service.drop_model("counted")
    unknown = EvalJob("counted", PruneSpec("magnitude", sparsity=0.4))
    assert "not registered" in str(wait_for(service, [unknown])[unknown])  # the service forgot how to load it
    service.register("counted", spec)
    back = EvalJob("counted", PruneSpec("magnitude", sparsity=0.5))
    assert isinstance(wait_for(service, [back])[back], Accuracy)
    assert len(log.read_text().split()) == 2  # the worker forgot it, and loaded it again from its spec


def test_whoever_waits_with_progress_hears_that_a_dropped_models_queued_jobs_went(services):
    """The server lets a model go with jobs of it queued: a page part waiting for them hears it (and asks again),
    an outcome-only listener hears nothing; a job the worker had started still lands."""
    service = services(1, tiny=True)
    jobs = [EvalJob("tiny", PruneSpec("magnitude", sparsity=s / 100)) for s in range(1, 21)]
    heard, plain = [], []
    service.watch(jobs, lambda job, outcome: heard.append((job, outcome)), progress=True)
    service.watch(jobs, lambda job, outcome: plain.append((job, outcome)))
    service.request([(job, LIVE_FULL) for job in jobs], "page")
    service.drop_model("tiny")  # twenty passes cannot be done yet: most are still queued
    deadline = time.time() + 60
    while len({job for job, _ in heard}) < len(jobs) and time.time() < deadline:
        time.sleep(0.02)
    by_job = dict(heard)
    assert set(by_job) == set(jobs), "every job was either dropped or landed"
    dropped = [job for job, outcome in heard if isinstance(outcome, Stirred)]
    assert len(dropped) >= len(jobs) // 2 and all(by_job[job] == Stirred(dropped=True) for job in dropped)
    assert all(isinstance(outcome, Accuracy | JobError) for _, outcome in plain)
    assert {job for job, _ in plain} == set(jobs) - set(dropped)


def test_a_worker_forked_after_the_environment_changed_runs_in_the_new_environment(services, tmp_path, monkeypatch):
    """Workers are forked by a fork server started once per process: a variable set after it started (a test's,
    or PRUNEKIT_ENGINE set by a script) still reaches every worker started later, and one unset is gone."""
    log, name = tmp_path / "env.txt", "PRUNEKIT_TEST_MARK"
    spec = ModelSpec("tests.helpers:load_tiny_noting_env", (str(log), name))
    monkeypatch.setenv(name, "before")
    first = services(1)  # the fork server is running once this service's worker is
    first.register("noted", spec)
    job = EvalJob("noted", PruneSpec("magnitude", sparsity=0.2))
    assert isinstance(wait_for(first, [job])[job], Accuracy)
    monkeypatch.setenv(name, "after")
    later = services(1)
    later.register("noted", spec)
    assert isinstance(wait_for(later, [job.at(0.3)])[job.at(0.3)], Accuracy)
    monkeypatch.delenv(name)
    last = services(1)
    last.register("noted", spec)
    assert isinstance(wait_for(last, [job.at(0.4)])[job.at(0.4)], Accuracy)
    assert log.read_text().split() == ["before", "after", "<unset>"]


def test_a_runner_forgets_everything_it_kept_for_a_dropped_model():
    from prunekit.service.runner import JobRunner

    runner = JobRunner()
    runner.load("tiny", TINY_SPEC)
    runner.run(EvalJob("tiny", PruneSpec("l1", "filter", sparsity=0.5)))
    runner.run(EvalJob("tiny", PruneSpec("magnitude", sparsity=0.5), subset=20))
    kept = [runner.labs, runner.pruners, runner._images, runner._compacted, runner._subsets]
    assert all(any(_model_of(k) == "tiny" for k in cache) for cache in kept[:3])
    runner.drop("tiny")
    assert not any(_model_of(k) == "tiny" for cache in kept for k in cache)
    with pytest.raises(InvalidArgumentError, match="never loaded"):
        runner.run(EvalJob("tiny"))


def _model_of(key) -> str:
    return key if isinstance(key, str) else key[0]

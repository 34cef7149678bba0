"""Live work first: a background full pass hands its worker back between chunks, and is resumed later from
its counts (nothing lost, nothing scored twice, the same figure)."""

from __future__ import annotations

import multiprocessing as mp
import threading

import pytest

from prunekit.core.evaluate import Accuracy, Counts, from_counts
from prunekit.core.loaded import ModelSpec
from prunekit.core.spec import Allocation, PruneSpec
from prunekit.service import policy, scheduler, workers
from prunekit.service.chunks import Control, Resume
from prunekit.service.jobs import CHUNK_IMAGES, ESTIMATE_IMAGES, EvalJob, JobError
from prunekit.service.queue import CURVE, LIVE_ESTIMATE, LIVE_FULL
from prunekit.service.runner import JobRunner
from prunekit.service.threadproc import ThreadProcess
from prunekit.service.worker import answer, jobs_from
from tests.helpers import wait_until

FMNIST = ModelSpec("prunekit.models.zoo:load", ("fmnist-cnn",))


def _figures(acc: Accuracy) -> tuple:
    return (acc.top1, acc.top5, acc.n, acc.total)


@pytest.fixture(scope="module")
def runner() -> JobRunner:
    r = JobRunner()
    r.load("fmnist-cnn", FMNIST)
    return r


def test_a_preempted_pass_resumes_from_its_counts_to_the_same_figure(runner):
    job = EvalJob("fmnist-cnn", PruneSpec("magnitude", sparsity=0.7))
    straight = runner.run(job)
    asked, partials = [0], []

    def after_three() -> bool:
        asked[0] += 1
        return asked[0] > 2  # asked from the second chunk on: three chunks scored, then the scheduler wants the worker

    first = answer(runner, job, None, Control(partial=lambda *got: partials.append(got), preempted=after_three))
    status, _, resume = first
    assert status == "preempted" and [i for i, _ in resume.counted] == [0, 1, 2] and resume.todo is None
    assert sum(c.n for _, c in resume.counted) == ESTIMATE_IMAGES + 2 * CHUNK_IMAGES
    assert [j for j, _ in partials] == [job.with_subset(ESTIMATE_IMAGES)]  # the estimate, before the stop
    status, _, resumed = answer(runner, job, None, Control(partial=lambda *got: partials.append(got), resume=resume))
    assert status == "ok" and _figures(resumed) == _figures(straight) and resumed.n == 10_000
    assert len(partials) == 1  # the resumed pass does not score (or report) the estimate again


def test_a_pass_preempted_at_once_still_scores_and_reports_its_estimate_first(runner):
    job = EvalJob("fmnist-cnn", PruneSpec("magnitude", sparsity=0.2))
    partials = []
    control = Control(partial=lambda *got: partials.append(got), preempted=lambda: True)
    status, _, resume = answer(runner, job, None, control)
    assert status == "preempted" and [c.n for _, c in resume.counted] == [ESTIMATE_IMAGES] and len(partials) == 1
    assert _figures(runner.run(job, Control(resume=resume))) == _figures(runner.run(job))


# --- the scheduler, with a stand-in worker thread that follows a script --------------------------------------

BACKGROUND = EvalJob("m", PruneSpec("magnitude", sparsity=0.5))
LIVE = EvalJob("m", PruneSpec("magnitude", sparsity=0.9))
HEAD = Counts(correct=600, correct5=None, n=1000, seconds=0.1)
HANDED_BACK = Resume(((0, HEAD),), chunks=2, images=2000)


def _scripted(conn, sent: list, release: threading.Event) -> None:
    """Answers like a worker: the first BACKGROUND pass runs until it is preempted (then hands back one
    chunk's counts) or released (then finishes); asked again with counts, it finishes on them; LIVE at once."""
    for job, _, resume in jobs_from(conn):
        sent.append((job, resume))
        if job == BACKGROUND and resume is None:
            conn.send(_run_until_preempted(conn, release))
        elif job == BACKGROUND:
            conn.send(("ok", job, from_counts([c for _, c in resume.counted] + [Counts(700, None, 1000, 0.1)], 2000)))
        else:
            conn.send(("ok", job, from_counts([Counts(100, None, 2000, 0.1)], 2000)))


def _run_until_preempted(conn, release: threading.Event) -> tuple:
    while not release.is_set():
        if conn.poll(0.01) and conn.recv() == ("preempt", BACKGROUND):
            return ("preempted", BACKGROUND, HANDED_BACK)
    return ("ok", BACKGROUND, from_counts([HEAD, Counts(800, None, 1000, 0.1)], 2000))


@pytest.fixture
def scripted(monkeypatch, services):
    """A one-worker service whose worker is the script above; yields (service, sent, release, preempt calls)."""
    sent, release, calls = [], threading.Event(), []

    def spawn():
        parent, child = mp.Pipe()
        proc = ThreadProcess(lambda: _scripted(child, sent, release), name="scripted-worker")
        proc.start()
        return workers.Worker(proc, parent)

    def decide(queue, *args):
        entry = queue.get(LIVE)
        calls.append(entry is not None and not entry.in_flight)
        return policy.decide(queue, *args)

    monkeypatch.setattr(scheduler, "decide", decide)
    svc = services(1, spawn=spawn)
    svc.register("m", FMNIST)
    yield svc, sent, release, calls
    release.set()


def test_a_live_request_preempts_background_work_which_resumes_later(scripted):
    svc, sent, _, _ = scripted
    svc.request([(BACKGROUND, CURVE)])
    wait_until(lambda: sent)  # the only worker is on the background pass
    svc.request([(LIVE, LIVE_FULL)], "a session")
    wait_until(lambda: svc.lookup(BACKGROUND) is not None)
    assert sent == [(BACKGROUND, None), (LIVE, None), (BACKGROUND, HANDED_BACK)]
    assert svc.lookup(LIVE).top1 == 0.05
    assert svc.lookup(BACKGROUND).top1 == 0.65 and svc.lookup(BACKGROUND).n == 2000  # its counts went on
    assert svc.status().preempted == 1


def test_live_work_is_never_preempted(scripted):
    svc, sent, release, calls = scripted
    svc.request([(BACKGROUND, LIVE_FULL)], "one")
    wait_until(lambda: sent)
    svc.request([(LIVE, LIVE_FULL)], "another")
    wait_until(lambda: any(calls))  # the scheduler has looked for a worker to free with LIVE waiting
    release.set()
    wait_until(lambda: svc.lookup(LIVE) is not None)
    assert sent == [(BACKGROUND, None), (LIVE, None)] and svc.status().preempted == 0
    assert svc.lookup(BACKGROUND).top1 == 0.7


def test_a_waiting_estimate_preempts_a_running_full_figure_of_another_configuration(scripted):
    svc, sent, _, _ = scripted
    estimate = LIVE.with_subset(ESTIMATE_IMAGES)
    svc.request([(BACKGROUND, LIVE_FULL)], "one")  # someone waits for this full figure
    wait_until(lambda: sent)
    svc.request([(estimate, LIVE_ESTIMATE)], "another")  # a first figure for someone else: sooner
    wait_until(lambda: svc.lookup(BACKGROUND) is not None)
    assert sent == [(BACKGROUND, None), (estimate, None), (BACKGROUND, HANDED_BACK)]
    assert svc.status().preempted == 1


def test_an_estimate_its_own_full_pass_is_scoring_preempts_nothing(scripted):
    svc, sent, release, calls = scripted
    estimate = BACKGROUND.with_subset(ESTIMATE_IMAGES)
    svc.request([(BACKGROUND, LIVE_FULL), (estimate, LIVE_ESTIMATE)], "one")
    wait_until(lambda: sent)  # the full pass took the estimate's place: it reports the estimate on the way
    wait_until(lambda: len(calls) > 1)  # the scheduler has looked for work to preempt since
    release.set()
    wait_until(lambda: svc.lookup(estimate) is not None)
    assert sent == [(BACKGROUND, None), (estimate, None)] and svc.status().preempted == 0


# --- a live full pass shared by every idle worker --------------------------------------------------------


def test_shares_of_a_pass_scored_apart_add_up_to_the_same_figure(runner):
    job = EvalJob("fmnist-cnn", PruneSpec("magnitude", allocation=Allocation("local"), sparsity=0.8))
    status, _, head = answer(runner, job, None, Control(preempted=lambda: True))  # the estimate's chunk only
    shares = head.share(2)
    assert [s.todo for s in shares] == [(1, 2, 3, 4), (5, 6, 7, 8, 9)]  # consecutive, as even as they go
    answers = [answer(runner, job, None, Control(resume=s)) for s in shares]
    assert [a[0] for a in answers] == ["part", "part"]  # neither share completes the pass alone
    assert head.accuracy() is None and answers[0][2].accuracy() is None
    together = head.merged(answers[0][2]).merged(answers[1][2])
    assert _figures(together.accuracy()) == _figures(runner.run(job))


def _counts(i: int) -> Counts:
    return Counts(correct=500 + 100 * i, correct5=None, n=1000, seconds=0.1)


SHARED = EvalJob("m", PruneSpec("magnitude", sparsity=0.6))
STARTED = Resume(((0, _counts(0)),), chunks=4, images=4000)


def _sharing(conn, sent: list) -> None:
    """Answers like a worker on a 4-chunk pass: a fresh SHARED pass hands back after its first chunk when
    asked to, a share answers its chunks' counts; anything else at once."""
    for job, _, resume in jobs_from(conn):
        sent.append((job, resume))
        if job == SHARED and resume is None:
            conn.recv()  # the scheduler's ("preempt", SHARED): an idle worker could share the pass
            conn.send(("preempted", job, STARTED))
        elif job == SHARED:
            mine = tuple((i, _counts(i)) for i in resume.todo)
            conn.send(("part", job, Resume(resume.counted + mine, resume.chunks, resume.images)))
        else:
            conn.send(("ok", job, from_counts([Counts(100, None, 2000, 0.1)], 2000)))


@pytest.fixture
def two_sharing(monkeypatch, services):
    sent = []

    def spawn():
        parent, child = mp.Pipe()
        proc = ThreadProcess(lambda: _sharing(child, sent), name="sharing-worker")
        proc.start()
        return workers.Worker(proc, parent)

    looked = []

    def decide(queue, *args):
        looked.append(
            queue.get(EvalJob("m", PruneSpec("magnitude", sparsity=0.1))) is None
        )  # True once `other` is done
        return policy.decide(queue, *args)

    monkeypatch.setattr(scheduler, "decide", decide)
    svc = services(2, spawn=spawn)
    svc.register("m", FMNIST)
    yield svc, sent, looked


def test_an_idle_worker_shares_a_live_full_pass_and_the_counts_add_up(two_sharing):
    svc, sent, _ = two_sharing
    svc.request([(SHARED, LIVE_FULL)], "a session")
    wait_until(lambda: svc.lookup(SHARED) is not None)
    assert sent[0] == (SHARED, None)
    assert sorted(r.todo for _, r in sent[1:]) == [(1,), (2, 3)]  # the chunks left, one share per worker
    assert svc.lookup(SHARED).top1 == sum(_counts(i).correct for i in range(4)) / 4000
    assert svc.lookup(SHARED).n == 4000 and svc.status().preempted == 0  # sharing is not preemption


def test_a_background_pass_is_not_shared(two_sharing):
    svc, sent, looked = two_sharing
    other = EvalJob("m", PruneSpec("magnitude", sparsity=0.1))
    svc.request([(SHARED, CURVE)])
    wait_until(lambda: sent)
    svc.request([(other, LIVE_FULL)], "a session")  # the idle worker takes live work, never a background share
    wait_until(lambda: svc.lookup(other) is not None)
    looked.clear()
    wait_until(lambda: any(looked))  # the scheduler has looked for a pass to share since `other` was done
    assert sent == [(SHARED, None), (other, None)] and svc.lookup(SHARED) is None


def test_a_failing_scheduler_answers_every_request_with_its_error(monkeypatch, services):
    def broken(*args):
        raise RuntimeError("a bug in the scheduler")

    def idle():
        parent, child = mp.Pipe()
        proc = ThreadProcess(lambda: list(jobs_from(child)), name="idle-worker")
        proc.start()
        return workers.Worker(proc, parent)

    monkeypatch.setattr(scheduler, "decide", broken)
    svc = services(1, spawn=idle)
    wait_until(lambda: svc.broken is not None)
    (answer_,) = svc.request([(LIVE, LIVE_FULL)], "a session").values()
    assert isinstance(answer_, JobError) and "RuntimeError: a bug in the scheduler" in answer_.message

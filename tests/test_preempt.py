"""Live work first: a background full pass hands its worker back between chunks, and is resumed later from
its counts (nothing lost, nothing scored twice, the same figure)."""

from __future__ import annotations

import multiprocessing as mp
import threading

import pytest

from prunekit.core.evaluate import Accuracy, Counts, from_counts
from prunekit.core.loaded import ModelSpec
from prunekit.service import workers
from prunekit.service.jobs import (
    CHUNK_IMAGES,
    ESTIMATE_IMAGES,
    Control,
    EvalJob,
    JobRunner,
    Resume,
    answer,
    jobs_from,
)
from prunekit.service.scheduler import CURVE, LIVE_ESTIMATE, LIVE_FULL, EvalService
from prunekit.service.threadproc import ThreadProcess
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
    job = EvalJob("fmnist-cnn", "magnitude", sparsity=0.7)
    straight = runner.run(job)
    asked, partials = [0], []

    def after_three() -> bool:
        asked[0] += 1
        return asked[0] > 2  # asked from the second chunk on: three chunks scored, then the scheduler wants the worker

    first = answer(runner, job, None, Control(partial=lambda *got: partials.append(got), preempted=after_three))
    status, _, resume = first
    assert status == "preempted" and len(resume.parts) == 3
    assert sum(p.n for p in resume.parts) == ESTIMATE_IMAGES + 2 * CHUNK_IMAGES
    assert [j for j, _ in partials] == [job.with_subset(ESTIMATE_IMAGES)]  # the estimate, before the stop
    status, _, resumed = answer(runner, job, None, Control(partial=lambda *got: partials.append(got), resume=resume))
    assert status == "ok" and _figures(resumed) == _figures(straight) and resumed.n == 10_000
    assert len(partials) == 1  # the resumed pass does not score (or report) the estimate again


def test_a_pass_preempted_at_once_still_scores_and_reports_its_estimate_first(runner):
    job = EvalJob("fmnist-cnn", "magnitude", sparsity=0.2)
    partials = []
    control = Control(partial=lambda *got: partials.append(got), preempted=lambda: True)
    status, _, resume = answer(runner, job, None, control)
    assert status == "preempted" and [p.n for p in resume.parts] == [ESTIMATE_IMAGES] and len(partials) == 1
    assert _figures(runner.run(job, Control(resume=resume))) == _figures(runner.run(job))


# --- the scheduler, with a stand-in worker thread that follows a script --------------------------------------

BACKGROUND = EvalJob("m", "magnitude", sparsity=0.5)
LIVE = EvalJob("m", "magnitude", sparsity=0.9)
HEAD = Counts(correct=600, correct5=None, n=1000, seconds=0.1)


def _scripted(conn, sent: list, release: threading.Event) -> None:
    """Answers like a worker: the first BACKGROUND pass runs until it is preempted (then hands back one
    chunk's counts) or released (then finishes); asked again with counts, it finishes on them; LIVE at once."""
    for job, _, resume in jobs_from(conn):
        sent.append((job, resume))
        if job == BACKGROUND and resume is None:
            conn.send(_run_until_preempted(conn, release))
        elif job == BACKGROUND:
            conn.send(("ok", job, from_counts([*resume.parts, Counts(700, None, 1000, 0.1)], 2000)))
        else:
            conn.send(("ok", job, from_counts([Counts(100, None, 2000, 0.1)], 2000)))


def _run_until_preempted(conn, release: threading.Event) -> tuple:
    while not release.is_set():
        if conn.poll(0.01) and conn.recv() == ("preempt", BACKGROUND):
            return ("preempted", BACKGROUND, Resume((HEAD,)))
    return ("ok", BACKGROUND, from_counts([HEAD, Counts(800, None, 1000, 0.1)], 2000))


@pytest.fixture
def scripted(monkeypatch):
    """A one-worker service whose worker is the script above; yields (service, sent, release, preempt calls)."""
    sent, release, calls = [], threading.Event(), []

    def spawn(self):
        parent, child = mp.Pipe()
        proc = ThreadProcess(lambda: _scripted(child, sent, release), name="scripted-worker")
        proc.start()
        return workers.Worker(proc, parent)

    original = EvalService._preempt

    def preempt(self):
        entry = self._queue.get(LIVE)
        calls.append(entry is not None and not entry.in_flight)
        original(self)

    monkeypatch.setattr(EvalService, "_spawn", spawn)
    monkeypatch.setattr(EvalService, "_preempt", preempt)
    svc = EvalService(workers=1)
    svc.register("m", FMNIST)
    yield svc, sent, release, calls
    release.set()
    svc.close()


def test_a_live_request_preempts_background_work_which_resumes_later(scripted):
    svc, sent, _, _ = scripted
    svc.request([(BACKGROUND, CURVE)])
    wait_until(lambda: sent)  # the only worker is on the background pass
    svc.request([(LIVE, LIVE_FULL)], "a session")
    wait_until(lambda: svc.lookup(BACKGROUND) is not None)
    assert sent == [(BACKGROUND, None), (LIVE, None), (BACKGROUND, Resume((HEAD,)))]
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
    assert sent == [(BACKGROUND, None), (estimate, None), (BACKGROUND, Resume((HEAD,)))]
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

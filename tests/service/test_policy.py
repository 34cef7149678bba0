"""The scheduling policy on snapshots: no processes, no threads, only the decisions."""

from prunekit.core.evaluate import Counts
from prunekit.core.spec import PruneSpec
from prunekit.service.chunks import Resume
from prunekit.service.jobs import ESTIMATE_IMAGES, EvalJob, SpeedJob
from prunekit.service.policy import HandBack, Slot, Start, decide
from prunekit.service.queue import CURVE, LIVE_ESTIMATE, LIVE_FULL, JobQueue


def _job(sparsity: float) -> EvalJob:
    return EvalJob("m", PruneSpec("magnitude", sparsity=sparsity))


A, B, C = _job(0.1), _job(0.2), _job(0.3)
FOUR_CHUNKS = Resume(((0, Counts(500, None, 1000, 0.1)),), chunks=4, images=4000)


def _queue(*wanted: tuple[EvalJob, int]) -> JobQueue:
    queue = JobQueue()
    for job, prio in wanted:
        queue.want(job, "s" if prio < CURVE else "", prio)
    return queue


def _running(queue: JobQueue, job: EvalJob, **slot) -> Slot:
    queue.get(job).in_flight += 1
    return Slot(job=job, **slot)


def _starts(actions) -> list[tuple[int, EvalJob]]:
    return [(a.slot, a.entry.job) for a in actions if isinstance(a, Start)]


def test_idle_workers_take_live_work_before_background_in_order():
    queue = _queue((C, CURVE), (A, LIVE_FULL), (B, LIVE_ESTIMATE))
    assert _starts(decide(queue, [Slot(), Slot()], set(), pooled=False)) == [(0, B), (1, A)]


def test_background_work_never_takes_the_last_idle_worker():
    queue = _queue((A, CURVE), (B, CURVE + 1))
    assert _starts(decide(queue, [Slot(), Slot()], set(), pooled=False)) == [(0, A)]
    assert _starts(decide(_queue((A, CURVE)), [Slot()], set(), pooled=False)) == [(0, A)]  # one worker: it may


def test_a_dead_or_busy_worker_takes_nothing():
    queue = _queue((A, LIVE_FULL))
    assert decide(queue, [Slot(alive=False)], set(), pooled=False) == []
    busy = _queue((A, LIVE_FULL), (B, LIVE_FULL))
    assert _starts(decide(busy, [_running(busy, A)], set(), pooled=False)) == []


def test_an_estimate_runs_as_its_queued_full_pass_and_is_not_started_beside_it():
    estimate = A.with_subset(ESTIMATE_IMAGES)
    queue = _queue((estimate, LIVE_ESTIMATE), (A, LIVE_FULL))
    assert _starts(decide(queue, [Slot(), Slot()], set(), pooled=False)) == [(0, A)]  # the full pass, once


def test_an_estimate_whose_full_pass_runs_remotely_is_started_locally():
    estimate = A.with_subset(ESTIMATE_IMAGES)
    queue = _queue((estimate, LIVE_ESTIMATE), (A, LIVE_FULL))
    slots = [_running(queue, A, remote=True), Slot()]
    assert _starts(decide(queue, slots, set(), pooled=True)) == []  # an accuracy job: for the remote slots
    assert _starts(decide(queue, slots, set(), pooled=False)) == [(1, estimate)]


def test_a_live_full_pass_with_chunks_left_is_split_between_idle_local_workers():
    queue = _queue((A, LIVE_FULL))
    queue.get(A).resume = FOUR_CHUNKS
    actions = decide(queue, [Slot(), Slot(), Slot(remote=True)], set(), pooled=False)
    assert [(a.slot, a.resume.todo) for a in actions] == [(0, (1,)), (1, (2, 3))]


def test_idle_workers_ask_a_live_full_pass_to_hand_back_so_that_they_share_it():
    queue = _queue((A, LIVE_FULL))
    slots = [_running(queue, A), Slot()]
    assert decide(queue, slots, set(), pooled=False) == [HandBack(0, share=True)]
    assert decide(queue, slots, {A}, pooled=False) == []  # already asked: wait for it
    last_chunk = [Slot(job=A, chunks_left=1), Slot()]
    assert decide(queue, last_chunk, set(), pooled=False) == []  # a share of one chunk stays


def test_a_background_pass_is_neither_shared_nor_kept_from_live_work():
    queue = _queue((A, CURVE))
    assert decide(queue, [_running(queue, A), Slot()], set(), pooled=False) == []


def test_live_work_waiting_preempts_the_least_urgent_full_pass_only():
    queue = _queue((A, CURVE), (B, CURVE + 2), (C, LIVE_FULL))
    slots = [_running(queue, A), _running(queue, B)]
    assert decide(queue, slots, set(), pooled=False) == [HandBack(1, share=False)]  # B: the least urgent
    live = _queue((A, LIVE_FULL), (C, LIVE_FULL))
    assert decide(live, [_running(live, A)], set(), pooled=False) == []  # as urgent: never preempted


def test_an_estimate_preempts_a_full_figure_but_not_a_latency_run():
    estimate = C.with_subset(ESTIMATE_IMAGES)
    queue = _queue((A, LIVE_FULL), (estimate, LIVE_ESTIMATE))
    assert decide(queue, [_running(queue, A)], set(), pooled=False) == [HandBack(0, share=False)]
    speed = SpeedJob("m")
    other = _queue((speed, CURVE), (estimate, LIVE_ESTIMATE))
    assert decide(other, [_running(other, speed)], set(), pooled=False) == []  # not a pass in chunks


def test_a_remote_pool_takes_accuracy_jobs_and_local_workers_the_rest():
    speed = SpeedJob("m")
    queue = _queue((A, LIVE_FULL), (speed, LIVE_FULL))
    assert _starts(decide(queue, [Slot(), Slot(remote=True)], set(), pooled=True)) == [(0, speed), (1, A)]


def test_deciding_changes_nothing_it_was_given():
    queue = _queue((A, LIVE_FULL), (B, CURVE))
    slots = [Slot(), Slot()]
    splitting: set = set()
    before = ([(e.job, e.in_flight, e.resume) for e in queue], [Slot() for _ in slots])
    assert decide(queue, slots, splitting, pooled=False)
    assert ([(e.job, e.in_flight, e.resume) for e in queue], slots) == before and splitting == set()

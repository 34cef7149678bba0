"""The evaluation queue on its own, without processes: priorities, latest-wins, dedup, promotion."""

from prunekit.core.spec import Allocation, PruneSpec
from prunekit.service.jobs import EvalJob
from prunekit.service.queue import CURVE, LIVE_ESTIMATE, LIVE_FULL, STALE, JobQueue


def job(s: float, scope: str = "global") -> EvalJob:
    return EvalJob("m", PruneSpec("magnitude", allocation=Allocation(scope), sparsity=s))


def ask(q: JobQueue, session: str, jobs: list[tuple[EvalJob, int]]) -> None:
    """What EvalService.request does with the lock held: want each, then supersede the rest."""
    for j, prio in jobs:
        q.want(j, session, prio)
    q.supersede(session, {j for j, _ in jobs})


def everyone(_job) -> bool:
    return True


def test_the_latest_request_of_a_session_wins_and_what_it_asked_before_is_demoted_not_dropped():
    q = JobQueue()
    ask(q, "s", [(job(0.3), LIVE_FULL)])
    ask(q, "s", [(job(0.4), LIVE_FULL)])
    assert q.get(job(0.3)).priority()[0] == STALE and q.get(job(0.3)).background
    assert q.get(job(0.4)).priority()[0] == LIVE_FULL
    assert q.best(everyone).job == job(0.4)
    q.get(job(0.4)).in_flight = True
    assert q.best(everyone).job == job(0.3)  # demoted, still computed when a worker is free


def test_identical_requests_are_one_entry_at_the_best_priority():
    q = JobQueue()
    ask(q, "a", [(job(0.5), CURVE)])
    ask(q, "b", [(job(0.5), LIVE_ESTIMATE)])
    assert q.jobs() == [job(0.5)] and q.get(job(0.5)).priority()[0] == LIVE_ESTIMATE
    ask(q, "b", [])  # b moved on; a still wants it
    assert q.get(job(0.5)).priority()[0] == CURVE


def test_live_before_background_and_first_come_first_served_among_peers():
    q = JobQueue()
    q.want(job(0.1), "", CURVE, keep=True)
    ask(q, "a", [(job(0.2), LIVE_FULL)])
    ask(q, "b", [(job(0.3), LIVE_FULL)])
    order = []
    while (e := q.best(everyone)) is not None:
        order.append(e.job)
        e.in_flight = True
    assert order == [job(0.2), job(0.3), job(0.1)]


def test_a_promoted_entry_queues_behind_the_live_work_already_waiting():
    q = JobQueue()
    q.want(job(0.1), "", CURVE, keep=True)  # queued first, as background
    ask(q, "a", [(job(0.2), LIVE_FULL)])
    ask(q, "b", [(job(0.1), LIVE_FULL)])  # now someone waits for it too
    assert q.best(everyone).job == job(0.2)


def test_background_work_kept_by_a_session_is_never_superseded():
    q = JobQueue()
    q.want(job(0.9), "s", CURVE + 2, keep=True)  # the session's curve: not part of its latest request
    ask(q, "s", [(job(0.4), LIVE_FULL)])
    ask(q, "s", [(job(0.5), LIVE_FULL)])
    assert q.get(job(0.9)).priority()[0] == CURVE + 2


def test_counts_of_waiting_work_and_a_filter_on_who_may_run_what():
    q = JobQueue()
    ask(q, "a", [(job(0.2), LIVE_FULL), (job(0.2, "local"), LIVE_FULL)])
    q.want(job(0.7), "", CURVE, keep=True)
    assert q.queued() == (2, 1) and q.live_waiting() == 2
    q.get(job(0.2)).in_flight = True
    assert q.queued() == (1, 1) and q.live_waiting() == 1
    assert q.best(lambda j: j.spec.scope == "global").job == job(0.7)  # the only global one not running
    assert q.remove(job(0.7)).job == job(0.7) and job(0.7) not in q

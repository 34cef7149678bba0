"""A page part that waits (prunekit.app.live): it listens for the jobs it found pending and reruns when one
moves, with no timer; it refreshes on a timer only where the channel cannot be used or it waits for no job."""

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from prunekit.app.channel import CHANNEL, key_of
from prunekit.app.readouts import FALLBACK_KEY, FALLBACK_NOTE, TOKEN_KEY
from tests.apptest import component_data

JOB_SPARSITY = 0.3


def _page():
    """A part that notes one job it looked for and did not find (as a service lookup does) while pending; what
    it waits for and whether it is pending are set through session state."""
    import streamlit as st

    from prunekit.app.live import live
    from prunekit.core.spec import PruneSpec
    from prunekit.service.jobs import EvalJob
    from prunekit.service.watch import note

    def waits() -> bool:
        st.write("the part")
        if st.session_state.get("asks", True):
            note(EvalJob("never-loaded", PruneSpec("magnitude", sparsity=0.3)).canonical())
        return st.session_state.get("pending", True)

    live("probe", waits, 0.5)


@pytest.fixture
def timers(monkeypatch) -> list:
    """The ``run_every`` of every fragment defined from here on (AppTest runs no timer: this is what it would be)."""
    seen, fragment = [], st.fragment

    def recording(func=None, *, run_every=None):
        seen.append(run_every)
        return fragment(func, run_every=run_every)

    monkeypatch.setattr(st, "fragment", recording)
    return seen


def test_a_pending_part_listens_for_the_jobs_it_found_pending_and_sets_no_timer(timers):
    from prunekit.core.spec import PruneSpec
    from prunekit.service.jobs import EvalJob

    at = AppTest.from_function(_page).run()
    assert not at.exception, at.exception
    (data,) = component_data(at, "prunekit_nudge")
    job = EvalJob("never-loaded", PruneSpec("magnitude", sparsity=JOB_SPARSITY)).canonical()
    assert data["token"] == at.session_state[TOKEN_KEY]
    assert CHANNEL.jobs(data["token"], [data["group"]]) == {key_of(job): job}  # that job, offered to this session
    assert CHANNEL.jobs(CHANNEL.token(), [data["group"]]) == 404  # and to no other
    at.run()  # the part's state is known from the first run on: no timer, no full rerun to change it
    assert timers[-1] is None and at.session_state["live:probe"]

    at.session_state["pending"] = False  # its figure landed: no listener, no timer
    at.run()
    assert component_data(at, "prunekit_nudge") == [] and timers[-1] is None


@pytest.mark.polls
def test_a_part_polls_where_the_browser_cannot_listen_or_it_waits_for_no_job(timers):
    at = AppTest.from_function(_page)
    at.session_state[FALLBACK_KEY] = True  # this browser could not open the channel
    at.run()
    assert component_data(at, "prunekit_nudge") == [] and timers[-1] == 0.5
    assert [t.value for t in at.toast] == [FALLBACK_NOTE]  # the session is told, once
    at.run()
    assert not at.toast

    at = AppTest.from_function(_page)
    at.session_state["asks"] = False  # pending, but on nothing the service was asked for
    at.run()
    assert component_data(at, "prunekit_nudge") == [] and timers[-1] == 0.5
    at.session_state["pending"] = False
    at.run()
    assert timers[-1] is None  # done: the timer stops

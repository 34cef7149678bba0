"""One way for a part of a page to refresh while its results are on their way and stop once they are there.

The part listens (the live channel, :mod:`prunekit.app.channel`): while it is drawn, every job it finds not yet
known (:func:`prunekit.service.watch.noting`) is offered to its session under one key, and a small component in
the part opens that key's stream and reruns the part, alone, when one of them lands, reports progress or is
dropped: no poll, and nothing runs while it waits. It polls as before (``run_every``) where the channel cannot
be used (:func:`prunekit.app.readouts.usable`) or a pending part waits for nothing the service knows of.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

import streamlit as st

from prunekit.app import readouts, server_state
from prunekit.app.channel import CHANNEL, LISTEN_JS, MAX_GROUP, PATH
from prunekit.app.turns import TAIL
from prunekit.core.lab import Lab
from prunekit.service.jobs import EvalJob
from prunekit.service.watch import noting

log = logging.getLogger(__name__)
TOLD_KEY = "channel_failed_told"  # session state: the session was told its parts refresh themselves
GAP_MS = 250  # a part reruns at most this often as its jobs land (a poll's pace, but only when something moved)
COALESCE_MS = 30  # jobs landing this close together rerun the part once

# Reruns its part (a trigger from inside a fragment reruns that fragment only) when a job it waits for lands,
# reports progress or is dropped; at most every data.gap ms.
NUDGE_JS = """
export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  if (parentElement.pkSource) parentElement.pkSource.close();  // a rerun's new data replaces the last listener
  parentElement.pkSource = null;
  if (!data.group) return;
  let last = 0, timer = null, count = 0;
  const fire = () => { timer = null; last = Date.now(); setTriggerValue("moved", ++count); };
  const url = data.path + "?t=" + encodeURIComponent(data.token) + "&k=" + data.group + "&p=1";
  const stop = listen(parentElement, url, () => {
    if (!timer) timer = setTimeout(fire, Math.max(data.coalesce, last + data.gap - Date.now()));
  }, setTriggerValue);
  return () => { if (timer) clearTimeout(timer); stop(); };
}
"""
NUDGE = st.components.v2.component("prunekit_nudge", js=LISTEN_JS + NUDGE_JS)


def live(name: str, panel: Callable[[], bool], every: float, pending: bool | None = None) -> None:
    """Draw ``panel`` as a fragment that reruns when what it waits for moves (or, without the channel, every
    ``every`` seconds) while it is pending, and not at all once done. ``panel`` draws and returns whether its
    results are still on their way; ``pending`` is that answer when the page knows it before drawing (which
    saves a rerun), else the last draw's is used."""
    assert not _holds_a_lab(panel), f"live part {name!r} holds a Lab: pass the PageContext (it holds it weakly)"
    key, unheard = f"live:{name}", f"live-unheard:{name}"
    if pending is not None:
        st.session_state[key] = pending
    polling = _polls(st.session_state.get(key, False), st.session_state.get(unheard, False))
    if polling and st.session_state.get(readouts.FALLBACK_KEY) and not st.session_state.get(TOLD_KEY):
        st.toast(readouts.FALLBACK_NOTE)  # once a session, on whichever page first polls for want of the channel
        st.session_state[TOLD_KEY] = True

    def part() -> None:
        with server_state.turns().turn(TAIL), noting() as noted:  # a refresh waits behind every page's head
            now = bool(panel())
        st.session_state[key], st.session_state[unheard] = now, now and not noted
        if now and not noted:
            log.warning("page part %r is pending on no job the service knows of: it refreshes on a timer", name)
        if now and noted and readouts.usable():
            _nudge(name, list(noted)[:MAX_GROUP])
        if _polls(now, now and not noted) != polling:
            st.rerun()  # only a full rerun changes how often a fragment refreshes

    part.__qualname__ = f"live.{name}"  # one fragment definition per page part
    st.fragment(part, run_every=every if polling else None)()


def _polls(pending: bool, unheard: bool) -> bool:
    """Whether a part refreshes on a timer: pending, and its browser cannot listen or it waits for no job."""
    return pending and (unheard or not readouts.usable())


def _nudge(name: str, jobs: list[EvalJob]) -> None:
    """The component that reruns part ``name`` as ``jobs`` move (offered to this session under one key)."""
    group, _ = CHANNEL.offer_group(readouts.token(), jobs)
    data = {"path": PATH, "token": readouts.token(), "group": group, "gap": GAP_MS, "coalesce": COALESCE_MS}
    NUDGE(key=f"pk_live_{name}", data=data, on_moved_change=_moved, on_fallback_change=readouts.fell_back)


def _moved() -> None:
    """A job the part waits for moved: the rerun the trigger causes is all that is needed."""


def _holds_a_lab(panel: Callable) -> bool:
    """Whether ``panel`` (a partial or a closure) holds a :class:`Lab` itself: Streamlit keeps a fragment for
    minutes after its session closed, and a Lab held there outlives the memory budget's eviction."""
    if isinstance(panel, partial):
        held = [*panel.args, *panel.keywords.values()]
    else:
        held = [cell.cell_contents for cell in getattr(panel, "__closure__", None) or ()]
    return any(isinstance(x, Lab) for x in held)

"""One way for a part of a page to refresh while its results are on their way and stop once they are there."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import streamlit as st

from prunekit.app import server_state
from prunekit.app.turns import TAIL
from prunekit.core.lab import Lab


def live(name: str, panel: Callable[[], bool], every: float, pending: bool | None = None) -> None:
    """Draw ``panel`` as a fragment that reruns every ``every`` seconds while it is pending, and not at all
    once done. ``panel`` draws and returns whether its results are still on their way; ``pending`` is
    that answer when the page knows it before drawing (which saves a rerun), else the last draw's is used."""
    assert not _holds_a_lab(panel), f"live part {name!r} holds a Lab: pass the PageContext (it holds it weakly)"
    key = f"live:{name}"
    if pending is not None:
        st.session_state[key] = pending

    def part() -> None:
        with server_state.turns().turn(TAIL):  # a refresh on its own waits behind every page's head
            now = bool(panel())
        if now != st.session_state.get(key, False):
            st.session_state[key] = now
            st.rerun()  # only a full rerun changes how often a fragment refreshes

    part.__qualname__ = f"live.{name}"  # one fragment definition per page part
    st.fragment(part, run_every=every if st.session_state.get(key, False) else None)()


def _holds_a_lab(panel: Callable) -> bool:
    """Whether ``panel`` (a partial or a closure) holds a :class:`Lab` itself: Streamlit keeps a fragment for
    minutes after its session closed, and a Lab held there outlives the memory budget's eviction."""
    if isinstance(panel, partial):
        held = [*panel.args, *panel.keywords.values()]
    else:
        held = [cell.cell_contents for cell in getattr(panel, "__closure__", None) or ()]
    return any(isinstance(x, Lab) for x in held)

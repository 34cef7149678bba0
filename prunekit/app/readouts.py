"""Accuracy readouts that listen: cards drawn by a component that updates itself from the live channel
(:mod:`prunekit.app.channel`) as each figure lands, with no rerun and no poll. A rerun draws them again with
everything the server knows; what is still pending arrives by the channel. If the channel cannot connect (a
proxy that does not stream, an old browser), the component says so and the page falls back to refreshing itself.

Every number is formatted here, in Python (the channel sends each reading with its text): the browser shows
exactly what the server would have drawn, and only the difference to the dense figure is computed there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import streamlit as st

from prunekit.app.channel import CHANNEL, LISTEN_JS, PATH, value
from prunekit.service.jobs import EvalJob
from prunekit.service.readings import Reading

LIVE_ENV = "PRUNEKIT_LIVE"
FALLBACK_KEY = "channel_failed"  # session state: this browser cannot use the channel; pages poll instead
FALLBACK_NOTE = (
    "This browser could not open the live channel (a proxy that does not stream?): the figures on the page refresh "
    "themselves instead, a little later than they land."
)
TOKEN_KEY = "channel_token"
PENDING = "computing..."

CSS = """
.pk-cards { display: flex; flex-wrap: wrap; gap: 1rem; font-family: "Source Sans Pro", sans-serif; }
.pk-card { flex: 1 1 12rem; min-width: 10rem; }
.pk-label { font-size: 0.875rem; color: rgb(49, 51, 63); }
.pk-value { font-size: 2.25rem; line-height: 1.2; color: rgb(49, 51, 63); }
.pk-delta { font-size: 1rem; }
.pk-delta.up { color: rgb(9, 171, 59); } .pk-delta.down { color: rgb(255, 43, 43); }
.pk-note { font-size: 0.875rem; color: rgba(49, 51, 63, 0.6); }
.pk-error { color: rgb(125, 53, 59); background: rgba(255, 43, 43, 0.09); padding: 0.5rem; border-radius: 0.5rem; }
"""

JS = """
function text(r) { return r ? r.value : "computing..."; }
function best(card) { return card.full || card.estimate; }
function draw(root, cards) {
  const dense = cards.find((c) => c.id === "dense");
  root.innerHTML = "";
  for (const card of cards) {
    const el = document.createElement("div");
    el.className = "pk-card";
    el.dataset.testid = "pkReadout";
    el.dataset.card = card.id;
    const r = best(card);
    if (card.error) {
      el.innerHTML = '<div class="pk-error"></div>';
      el.firstChild.textContent = card.label + ": the evaluation failed (" + card.error + "). It is retried on the next move.";
      root.appendChild(el);
      continue;
    }
    const tag = r && r.estimate ? " (estimate, " + r.n.toLocaleString("en-US") + " images)" : "";
    el.innerHTML = '<div class="pk-label"></div><div class="pk-value"></div><div class="pk-delta"></div><div class="pk-note"></div>';
    el.querySelector(".pk-label").textContent = card.label + tag;
    el.querySelector(".pk-value").textContent = text(r);
    el.dataset.state = !r ? "pending" : r.estimate ? "estimate" : "full";
    const base = dense && card.id !== "dense" && r ? (r === card.full ? dense.full : dense.estimate) : null;
    if (base) {
      const d = 100 * (r.top1 - base.top1);
      const delta = el.querySelector(".pk-delta");
      delta.textContent = (d >= 0 ? "+" : "") + d.toFixed(2) + " points";
      delta.className = "pk-delta " + (d >= 0 ? "up" : "down");
    }
    el.querySelector(".pk-note").textContent = r ? r.interval : "Queued in the evaluation workers.";
    root.appendChild(el);
  }
}
export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  if (parentElement.pkSource) parentElement.pkSource.close();  // a rerun's new data replaces the last listener
  parentElement.pkSource = null;
  let root = parentElement.querySelector(".pk-cards");
  if (!root) {
    root = document.createElement("div");
    root.className = "pk-cards";
    parentElement.appendChild(root);
  }
  const cards = data.cards.map((c) => Object.assign({}, c));
  draw(root, cards);
  const wanted = {};
  for (const card of cards) {
    for (const stage of ["estimate", "full"]) {
      if (card.keys[stage] && !card[stage] && !card.error) wanted[card.keys[stage]] = [card, stage];
    }
  }
  const keys = Object.keys(wanted);
  if (!keys.length) return;
  const url = data.path + "?t=" + encodeURIComponent(data.token) + "&k=" + keys.join(",");
  return listen(parentElement, url, (got) => {
    const [card, stage] = wanted[got.key] || [];
    if (!card) return;
    if (got.error) card.error = got.error; else card[stage] = got;
    draw(root, cards);
  }, setTriggerValue);
}
"""

COMPONENT = st.components.v2.component("prunekit_readouts", css=CSS, js=LISTEN_JS + JS)


@dataclass(frozen=True)
class Card:
    """One readout: a label, what is known, and the jobs whose results it waits for (estimate, full)."""

    id: str
    label: str
    reading: Reading
    estimate_job: EvalJob | None
    full_job: EvalJob


def token() -> str:
    """This session's token on the channel (issued on first use)."""
    if TOKEN_KEY not in st.session_state:
        st.session_state[TOKEN_KEY] = CHANNEL.token()
    return st.session_state[TOKEN_KEY]


def usable() -> bool:
    """Whether this session's browser listens on the channel (else its pages refresh themselves): not after its
    browser said it could not connect, nor on a server started with ``PRUNEKIT_LIVE=0`` (a proxy that does not
    stream, or to compare with the polling design)."""
    return os.environ.get(LIVE_ENV, "1") != "0" and not st.session_state.get(FALLBACK_KEY, False)


def fell_back() -> None:
    """This session's browser could not open the channel: its pages refresh themselves from the next run."""
    st.session_state[FALLBACK_KEY] = True


def show(cards: list[Card], key: str, on_fallback: Callable[[], None] = fell_back) -> None:
    """Draw ``cards``; those still pending update themselves as their figures land."""
    pending = [c for c in cards if c.reading.pending]
    jobs = [j for c in pending for j in (c.estimate_job, c.full_job) if j is not None]
    keys = CHANNEL.offer(token(), jobs) if jobs else {}
    data = {"path": PATH, "token": token() if jobs else "", "cards": [_card(c, keys) for c in cards]}
    COMPONENT(key=key, data=data, on_fallback_change=on_fallback)


def _card(card: Card, keys: dict[EvalJob, str]) -> dict:
    r = card.reading
    return {
        "id": card.id,
        "label": card.label,
        "full": value(r.full) if r.full else None,
        "estimate": value(r.estimate) if r.estimate else None,
        "error": r.error,
        "keys": {
            "estimate": keys.get(card.estimate_job) if card.estimate_job is not None else None,
            "full": keys.get(card.full_job),
        },
    }

"""The live channel: results pushed to the browser the moment they land, no rerun and no poll.

A route on the app's own server, ``GET /prunekit/live?t=TOKEN&k=KEY,KEY...``, answers with server-sent events:
one ``data:`` line per reading of each job key as it lands (an estimate's job, then the full figure's), then
``event: done``; asked with ``p=1``, also an event each time a job still to land reports progress or is dropped.
Server-sent events rather than a WebSocket: the flow is one way (the server has every answer,
the page only listens), they are plain HTTP (any proxy that streams passes them: see docs/workshop.md), and
the browser's ``EventSource`` reconnects by itself.

Nothing but what the server itself offered can be read through it: a page's script asks :meth:`Channel.offer`
for keys of the jobs it shows, under its session's token (or :meth:`Channel.offer_group` for one key naming many,
a curve's grid; its events carry each job's own key); a request with an unknown token is refused (403), a
key that token was never given is unknown (404), and nothing is computed either way. The event loop never
waits on the service: what is known is read through an executor, and what lands later arrives through
:meth:`EvalService.watch` and ``loop.call_soon_threadsafe``, so one result wakes every listener at once.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from prunekit.core.evaluate import Accuracy
from prunekit.errors import InvalidArgumentError
from prunekit.service.evaluation import EvalService
from prunekit.service.jobs import EvalJob, JobError
from prunekit.service.store import digest
from prunekit.service.watch import Stirred

PATH = "/prunekit/live"
MAX_SESSIONS = 10_000  # tokens kept, least recently offered out first
MAX_KEYS = 512  # keys kept per token, oldest out first (a page shows a few dozen at most)
MAX_ASKED = 64  # keys one request may listen to
MAX_GROUP = 512  # jobs one group key may name (a curve's 0.01 grid of two scopes is 200)
KEEP_ALIVE_S = 15.0  # a comment line this often: proxies keep an idle stream open, a gone client is noticed


# The browser's side, shared by the components that listen: open the stream of ``url``, hand each reading to
# ``onReading``; a stream that never connects (a proxy that does not pass it) asks the page to refresh instead.
LISTEN_JS = """
function listen(parentElement, url, onReading, setTriggerValue) {
  const source = new EventSource(url);
  parentElement.pkSource = source;
  let opened = false;
  source.onopen = () => { opened = true; };
  source.onmessage = (event) => onReading(JSON.parse(event.data));
  source.addEventListener("done", () => source.close());
  source.onerror = () => {
    if (!opened) { source.close(); setTriggerValue("fallback", true); }  // never connected: refresh instead
  };
  return () => source.close();
}
"""


def key_of(job: EvalJob) -> str:
    """A job's public name on the channel: a digest of its key, which says nothing of the configuration."""
    return digest(*job.canonical().key())[:24]


def value(acc: Accuracy) -> dict:
    """An accuracy as a page shows it, its text formatted here (the browser shows what the server would draw)."""
    return {
        "top1": acc.top1,
        "n": acc.n,
        "total": acc.total,
        "estimate": acc.is_estimate,
        "value": f"{acc.top1:.2%}",
        "interval": acc.interval_label(),
    }


def reading(key: str, outcome: object) -> dict:
    """What the channel sends for ``outcome``: a top-1 with its text and interval, or the error; of any other
    outcome (a latency, a recovery) only that it landed, or that its job moved (:class:`Stirred`): the page part
    that waits for it draws it at its next run."""
    if isinstance(outcome, JobError):
        return {"key": key, "error": outcome.message}
    if isinstance(outcome, Stirred):
        return {"key": key, "stirred": "dropped" if outcome.dropped else "progress"}
    if not isinstance(outcome, Accuracy):
        return {"key": key, "landed": type(outcome).__name__}
    return {"key": key, **value(outcome)}


class Channel:
    """The tokens the server issued and the jobs each may listen to; thread-safe (script threads offer, the
    event loop reads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._offered: OrderedDict[str, OrderedDict[str, EvalJob | tuple[EvalJob, ...]]] = OrderedDict()
        self.service: EvalService | None = None  # set when the app's service starts

    def token(self) -> str:
        """A new session's token (unguessable); it may listen to nothing until something is offered under it."""
        token = secrets.token_urlsafe(18)
        with self._lock:
            self._keep(token)
        return token

    def offer(self, token: str, jobs: Iterable[EvalJob]) -> dict[EvalJob, str]:
        """Let ``token`` listen to ``jobs``; returns each job's key."""
        keys = {job: key_of(job) for job in jobs}
        with self._lock:
            offered = self._keep(token)
            for job, key in keys.items():
                offered[key] = job.canonical()
                offered.move_to_end(key)
            while len(offered) > MAX_KEYS:
                offered.popitem(last=False)
        return keys

    def offer_group(self, token: str, jobs: Iterable[EvalJob]) -> tuple[str, dict[EvalJob, str]]:
        """Let ``token`` listen to ``jobs`` (at most :data:`MAX_GROUP`) under one key; returns that key and each
        job's own key, which the events name."""
        keys = {job: key_of(job) for job in jobs}
        if len(keys) > MAX_GROUP:
            raise InvalidArgumentError(f"a group of {len(keys)} jobs; at most {MAX_GROUP}")
        group = "g" + digest(*sorted(keys.values()))[:23]
        with self._lock:
            offered = self._keep(token)
            offered[group] = tuple(job.canonical() for job in keys)
            offered.move_to_end(group)
            while len(offered) > MAX_KEYS:
                offered.popitem(last=False)
        return group, keys

    def jobs(self, token: str, keys: list[str]) -> dict[str, EvalJob] | int:
        """The jobs ``keys`` name for ``token`` by their own keys (a group's, each), or the HTTP status that
        refuses the request (403, 404)."""
        with self._lock:
            offered = self._offered.get(token)
            if offered is None:
                return 403
            if not keys or len(keys) > MAX_ASKED or any(k not in offered for k in keys):
                return 404
            named = [offered[k] for k in keys]
        out: dict[str, EvalJob] = {}
        for key, got in zip(keys, named, strict=True):
            out |= {key_of(job): job for job in got} if isinstance(got, tuple) else {key: got}
        return out

    def _keep(self, token: str) -> OrderedDict[str, EvalJob | tuple[EvalJob, ...]]:
        offered = self._offered.setdefault(token, OrderedDict())
        self._offered.move_to_end(token)
        while len(self._offered) > MAX_SESSIONS:
            self._offered.popitem(last=False)
        return offered

    async def route(self, request: Request) -> Response:
        """``GET PATH?t=TOKEN&k=KEY,KEY``: server-sent events of those keys' readings as they land."""
        keys = [k for k in request.query_params.get("k", "").split(",") if k]
        jobs = self.jobs(request.query_params.get("t", ""), keys)
        if isinstance(jobs, int):
            why = "unknown session token" if jobs == 403 else "a job key this session was not given"
            return PlainTextResponse(why, status_code=jobs)
        if self.service is None:
            return PlainTextResponse("the evaluation service has not started", status_code=503)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # nginx: pass each event at once
        stirred = request.query_params.get("p") == "1"
        events = self.events(self.service, jobs, stirred)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    @staticmethod
    async def events(svc: EvalService, jobs: dict[str, EvalJob], stirred: bool = False) -> AsyncIterator[str]:
        """Each job's outcome once, as it lands (those known already first), then ``done``; with ``stirred`` also
        each progress report or drop of a job still to land, as it happens."""
        loop = asyncio.get_running_loop()
        landed: asyncio.Queue = asyncio.Queue()
        names = {job: key for key, job in jobs.items()}
        stop = svc.watch(
            names, lambda job, outcome: loop.call_soon_threadsafe(landed.put_nowait, (job, outcome)), stirred
        )
        try:
            known = await loop.run_in_executor(None, lambda: {job: svc.lookup(job) for job in names})
            for job, outcome in known.items():
                if outcome is not None:
                    landed.put_nowait((job, outcome))
            yield "retry: 2000\n\n"
            left = set(names)
            while left:
                try:
                    job, outcome = await asyncio.wait_for(landed.get(), KEEP_ALIVE_S)
                except TimeoutError:
                    yield ": still waiting\n\n"
                    continue
                if job in left:  # known at the start and landing meanwhile: once
                    if not isinstance(outcome, Stirred):  # a job that moved still lands later
                        left.discard(job)
                    yield f"data: {json.dumps(reading(names[job], outcome))}\n\n"
            yield "event: done\ndata: {}\n\n"
        finally:
            stop()


CHANNEL = Channel()  # one per server process


def routes() -> list[Route]:
    """The routes ``st.App`` adds to Streamlit's own."""
    return [Route(PATH, CHANNEL.route, methods=["GET"])]

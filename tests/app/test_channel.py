"""The live channel: a route that pushes a job's readings as they land, only to the session it was offered to."""

import asyncio
import json
from urllib.parse import urlencode

import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from prunekit.app.channel import MAX_GROUP, PATH, Channel, key_of, reading
from prunekit.core.spec import Allocation, PruneSpec
from prunekit.errors import InvalidArgumentError
from prunekit.service.jobs import EvalJob
from prunekit.service.queue import LIVE_ESTIMATE, LIVE_FULL
from prunekit.service.watch import Watchers
from tests.helpers import wait_for

pytestmark = pytest.mark.xdist_group("service")
SPEC = PruneSpec("magnitude", allocation=Allocation("local"), sparsity=0.6)


class Client:
    """GET requests straight into an ASGI app, as a server would make them (Starlette's TestClient needs a
    package we do not install); ``get`` answers (status, headers, body) once the response has ended."""

    def __init__(self, app) -> None:
        self.app = app

    async def aget(self, path: str, params: dict) -> tuple[int, dict[str, str], str]:
        query = urlencode(params).encode()
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
                 "path": path, "raw_path": path.encode(), "query_string": query, "headers": [], "root_path": "",
                 "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80)}  # fmt: skip
        started, chunks, asked = {}, [], [False]
        never = asyncio.Event()

        async def receive() -> dict:
            if not asked[0]:
                asked[0] = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await never.wait()  # the client stays connected until the response ends

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                started.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        headers = {k.decode(): v.decode() for k, v in started.get("headers", [])}
        return started["status"], headers, b"".join(chunks).decode()

    def get(self, path: str, params: dict) -> tuple[int, dict[str, str], str]:
        return asyncio.run(asyncio.wait_for(self.aget(path, params), 60))


@pytest.fixture
def wired(services):
    """A channel on a service with the tiny model, and a client of a server that has its route."""
    channel = Channel()
    channel.service = services(1, tiny=True)
    return channel, channel.service, Client(Starlette(routes=[Route(PATH, channel.route)]))


def _readings(answer: tuple[int, dict[str, str], str]) -> list[dict]:
    """The readings of one stream, which must have ended with done."""
    status, headers, body = answer
    assert status == 200 and headers["content-type"].startswith("text/event-stream"), answer
    assert body.rstrip().endswith("event: done\ndata: {}"), body
    return [json.loads(line.removeprefix("data: ")) for line in body.splitlines() if line.startswith('data: {"')]


def _events(client: Client, token: str, keys: list[str]) -> list[dict]:
    return _readings(client.get(PATH, {"t": token, "k": ",".join(keys)}))


def test_the_route_refuses_a_foreign_token_and_a_key_not_offered_and_computes_nothing(wired):
    channel, svc, client = wired
    job = EvalJob("tiny", SPEC)
    assert client.get(PATH, {"t": "guessed", "k": key_of(job)})[0] == 403
    assert client.get(PATH, {"k": key_of(job)})[0] == 403
    mine, other = channel.token(), channel.token()
    channel.offer(other, [job])
    assert client.get(PATH, {"t": mine, "k": key_of(job)})[0] == 404  # offered to another session
    assert client.get(PATH, {"t": mine, "k": ""})[0] == 404
    status = svc.status()
    assert status.done == 0 and status.queued_live == status.queued_background == 0 and svc.lookup(job) is None


def test_an_estimate_then_the_full_figure_each_arrive_once_as_they_land(wired):
    channel, svc, client = wired
    full = EvalJob("tiny", SPEC)
    estimate = EvalJob("tiny", SPEC, subset=20)
    token = channel.token()
    keys = channel.offer(token, [estimate, full])
    svc.request([(estimate, LIVE_ESTIMATE), (full, LIVE_FULL)], "page")  # what the page asks, as a rerun does
    got = _events(client, token, [keys[estimate], keys[full]])
    assert sorted(g["key"] for g in got) == sorted(keys.values())  # each once
    known = wait_for(svc, [estimate, full])
    assert {g["key"]: g for g in got} == {keys[j]: reading(keys[j], known[j]) for j in (estimate, full)}
    by_key = {g["key"]: g for g in got}
    assert by_key[keys[estimate]]["estimate"] and by_key[keys[estimate]]["n"] == 20
    assert not by_key[keys[full]]["estimate"] and by_key[keys[full]]["n"] == 64


def test_a_group_key_streams_each_of_its_jobs_under_the_jobs_own_key_and_only_to_its_session(wired):
    """A curve's grid under one key: every point once, named by its own key; a group is another session's
    nothing, and more jobs than a group holds are refused before anything is offered."""
    channel, svc, client = wired
    jobs = [EvalJob("tiny", PruneSpec("magnitude", sparsity=s)) for s in (0.1, 0.2, 0.3)]
    token, other = channel.token(), channel.token()
    group, keys = channel.offer_group(token, jobs)
    assert keys == {job: key_of(job) for job in jobs} and group not in keys.values()
    assert client.get(PATH, {"t": other, "k": group})[0] == 404
    svc.request([(job, LIVE_FULL) for job in jobs], "page")
    got = _events(client, token, [group])
    known = wait_for(svc, jobs)
    assert sorted(g["key"] for g in got) == sorted(keys.values())  # each once
    assert {g["key"]: g for g in got} == {keys[j]: reading(keys[j], known[j]) for j in jobs}
    too_many = [EvalJob("tiny", PruneSpec("magnitude", sparsity=i / 1000)) for i in range(MAX_GROUP + 1)]
    with pytest.raises(InvalidArgumentError, match=f"at most {MAX_GROUP}"):
        channel.offer_group(token, too_many)


def test_one_result_reaches_every_listener_once(wired):
    channel, svc, client = wired
    job = EvalJob("tiny", PruneSpec("magnitude", sparsity=0.3))
    tokens = [channel.token() for _ in range(3)]
    keys = [channel.offer(t, [job])[job] for t in tokens]

    async def listen_then_ask() -> list:
        streams = [asyncio.create_task(client.aget(PATH, {"t": t, "k": k})) for t, k in zip(tokens, keys, strict=True)]
        await asyncio.sleep(0.2)  # every stream is watching before the job is even asked for
        assert svc.lookup(job) is None
        svc.request([(job, LIVE_FULL)], "page")
        return await asyncio.wait_for(asyncio.gather(*streams), 60)

    seen = [_readings(answer) for answer in asyncio.run(listen_then_ask())]
    assert all(len(s) == 1 and s[0] == seen[0][0] for s in seen), seen
    assert len(svc._results.watchers) == 0  # every stream stopped watching when it ended


def test_a_watcher_hears_each_outcome_and_a_failing_one_stops_no_other():
    watchers, heard = Watchers(), []
    a, b = EvalJob("m", SPEC), EvalJob("m", SPEC, subset=5)

    def broken(job, outcome):
        raise RuntimeError("a listener's bug")

    watchers.add([a], broken)
    stop = watchers.add([a, b], lambda job, outcome: heard.append((job, outcome)))
    watchers.tell(a, 1)
    watchers.tell(b, 2)
    stop()
    watchers.tell(b, 3)
    assert heard == [(a, 1), (b, 2)] and len(watchers) == 1


class _Moving:
    """A service stand-in whose test says what lands: the channel's generator, driven without workers."""

    def __init__(self) -> None:
        self.told, self.progress = None, None

    def watch(self, jobs, callback, progress=False):
        self.told, self.progress = callback, progress
        return lambda: None

    def lookup(self, job):
        return None


def test_a_part_that_waits_hears_each_move_of_its_job_then_that_it_landed_and_an_outcome_only_listener_the_end():
    """Asked with p=1 (a page part that reruns when its job moves): each progress report and a drop as it happens,
    the job still awaited after them, then what landed (a latency: only that it landed); without p=1, progress
    is never asked for."""
    from prunekit.deploy.latency import Latency
    from prunekit.service.watch import Stirred

    job = EvalJob("tiny", SPEC)
    latency = Latency({"dense": {1: 1.0, 64: 2.0}}, {1: 3, 64: 3}, 1, "a test machine")

    async def stream(stirred: bool) -> tuple[list[str], bool]:
        svc = _Moving()
        events = Channel.events(svc, {"k1": job}, stirred)
        got = [await anext(events)]  # the retry line, once watching
        for told in (Stirred(progress=1), Stirred(dropped=True), latency):
            svc.told(job, told)
            got.append(await anext(events))
        got.append(await anext(events))
        return got, svc.progress

    got, asked = asyncio.run(stream(True))
    data = [json.loads(g.removeprefix("data: ")) for g in got if g.startswith("data: {")]
    assert asked and data == [
        {"key": "k1", "stirred": "progress"},
        {"key": "k1", "stirred": "dropped"},
        {"key": "k1", "landed": "Latency"},
    ]
    assert got[-1].startswith("event: done") and reading("k1", latency) == data[-1]
    assert asyncio.run(stream(False))[1] is False


def test_one_callback_watching_twice_is_two_registrations():
    """The same callback added with and without progress: each stop ends its own registration only."""
    from prunekit.service.watch import Stirred

    watchers, heard = Watchers(), []
    a = EvalJob("m", SPEC)

    def hear(job, outcome):
        heard.append(outcome)

    stop_moves = watchers.add([a], hear, progress=True)
    watchers.add([a], hear)
    watchers.tell(a, Stirred(progress=1))
    stop_moves()
    watchers.tell(a, Stirred(progress=2))
    watchers.tell(a, 3)
    assert heard == [Stirred(progress=1), 3] and len(watchers) == 1

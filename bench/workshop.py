"""Workshop load benchmark: K headless sessions speak Streamlit's browser protocol to a real server.

    python bench/workshop.py [--scenarios teacher,explore,vgg16] [--json]

Each scenario starts the app as ``./dev app`` does (``prunekit app``, a fresh result store), opens K
sessions on the Prune page over ``ws://HOST:PORT/_stcore/stream`` (binary protobuf BackMsg /
ForwardMsg), moves their sliders and measures, per move: the time to the full rerun's end
(``script_finished``), to the first accuracy figure for the new position (estimate or full) and to
the full-split figures of both scopes. Fragment refreshes (``auto_rerun``) are honoured like a
browser does. Server CPU comes from /proc (the Streamlit process only; the workers are reported
apart), memory per extra session from its RSS before and after the sessions join, and so do its
threads and open sockets.

The readouts that listen on the live channel (``GET /prunekit/live``, server-sent events) are followed as a
browser follows them: each session opens the stream the page names and takes every pushed figure. With
``--design polling`` the server runs with ``PRUNEKIT_LIVE=0`` (the page refreshes itself, as before the channel),
so that one run prints both designs side by side.

Scenarios: teacher (K=30, everyone moves to the same value at once, 3 rounds, values off the coarse
grid), crowd (the same with K=100), explore (K=10, distinct values, 2-4 s think time, 5 moves each), vgg-filters (K=30 together on
fmnist-vgg, filters, L1: nothing precomputed, 2 rounds), vgg16 (K=30 on vgg16, structure only: memory), big-links (the
explore room keeps moving while another visitor opens eight large models by link in turn, on a server started with
``--memory-gb 8``: peak RSS of the server and its workers, and when each model was shown).
The client runs on the same 2 cores as the server, which the numbers include.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procstat import threads_and_sockets  # noqa: E402

FINISHED, EARLY, FRAGMENT_DONE = 0, 2, 3
TIMEOUT = 120.0


# --- one session ---------------------------------------------------------------------------------


@dataclass
class Move:
    value: float
    rerun: float | None = None  # send -> script_finished of the full rerun
    first: float | None = None  # send -> first accuracy figure for the new position
    full: float | None = None  # send -> full-split figures of both scopes


@dataclass
class Session:
    url: str
    query: str
    ws: object = None
    page_hash: str = ""
    slider_id: str = ""
    metrics: dict[str, str] = field(default_factory=dict)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    timers: dict[str, asyncio.Task] = field(default_factory=dict)
    widgets: list = field(default_factory=list)
    full_runs: int = 0
    fragment_runs: int = 0
    alerts: list[str] = field(default_factory=list)  # warnings and errors the page showed
    pushed: int = 0  # figures that arrived on the live channel
    streams: int = 0  # channel connections opened
    listener: asyncio.Task | None = None

    async def open(self) -> None:
        self.ws = await connect(
            self.url, subprotocols=["streamlit", "PLACEHOLDER_AUTH_TOKEN"], max_size=None, open_timeout=60
        )
        self._reader = asyncio.create_task(self._read())
        await self._rerun(query=self.query, page_name="prune")
        await asyncio.wait_for(self.finished.wait(), TIMEOUT)

    async def close(self) -> None:
        for t in self.timers.values():
            t.cancel()
        if self.listener:
            self.listener.cancel()
        self._reader.cancel()
        await self.ws.close()

    async def _rerun(self, fragment_id: str = "", **fields) -> None:
        msg = BackMsg()
        state = msg.rerun_script
        state.query_string = fields.get("query", self.query)
        if fields.get("page_name"):
            state.page_name = fields["page_name"]
        if self.page_hash:
            state.page_script_hash = self.page_hash
        if fragment_id:
            state.fragment_id, state.is_auto_rerun = fragment_id, True
        for widget in self.widgets:  # only the widgets this client changed
            state.widget_states.widgets.append(widget)
        if not fragment_id:
            self.finished.clear()
        await self.ws.send(msg.SerializeToString())

    async def move(self, value: float) -> Move:
        from streamlit.proto.WidgetStates_pb2 import WidgetState

        widget = WidgetState(id=self.slider_id)
        widget.double_array_value.data.append(value)
        self.widgets = [widget]
        for t in self.timers.values():
            t.cancel()
        self.timers.clear()
        pct = f"{value:.0%}"
        m, t0 = Move(value), time.perf_counter()
        await self._rerun()
        deadline = t0 + TIMEOUT
        while (m.full is None or m.rerun is None) and time.perf_counter() < deadline:  # figures may come first
            self.changed.clear()
            now = time.perf_counter() - t0
            if m.rerun is None and self.finished.is_set():
                m.rerun = now
            if m.first is None and self._figure(f"Global at {pct}", estimate_ok=True):
                m.first = now
            if m.full is None and all(self._figure(f"{s} at {pct}", estimate_ok=False) for s in ("Global", "Local")):
                m.full, m.first = now, m.first or now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 0.5)
        m.rerun = m.rerun or (time.perf_counter() - t0 if self.finished.is_set() else None)
        return m

    def _figure(self, label: str, estimate_ok: bool) -> bool:
        for key, body in self.metrics.items():
            ok = key == label or (estimate_ok and key.startswith(label + " (estimate"))
            if ok and body != "computing...":
                return True
        return False

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = ForwardMsg()
            msg.ParseFromString(raw)
            self._handle(msg)
            self.changed.set()

    def _handle(self, msg: ForwardMsg) -> None:
        kind = msg.WhichOneof("type")
        if kind == "navigation":
            self.page_hash = msg.navigation.page_script_hash
        elif kind == "page_info_changed":
            self.query = msg.page_info_changed.query_string
        elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
            self._element(msg.delta.new_element)
        elif kind == "auto_rerun":
            self._schedule(msg.auto_rerun.fragment_id, msg.auto_rerun.interval)
        elif kind == "stop_auto_rerun":
            task = self.timers.pop(msg.stop_auto_rerun.fragment_id, None)
            task and task.cancel()
        elif kind == "script_finished":
            self._finished(msg.script_finished)

    def _element(self, el) -> None:
        which = el.WhichOneof("type")
        if which == "metric":
            self.metrics[el.metric.label] = el.metric.body
        elif which == "alert":
            self.alerts.append(el.alert.body)
        elif which == "slider" and not self.slider_id:
            self.slider_id = el.slider.id
        elif which == "bidi_component" and el.bidi_component.component_name == "prunekit_readouts":
            self._readouts(json.loads(el.bidi_component.json))

    def _readouts(self, data: dict) -> None:
        """What the readouts show now, then a stream for the figures still pending (as the browser does)."""
        wanted = {}
        for card in data["cards"]:
            best = card["full"] or card["estimate"]
            self._show(card["label"], best)
            for stage in ("estimate", "full"):
                if card["keys"][stage] and not card[stage] and not card["error"]:
                    wanted[card["keys"][stage]] = card["label"]
        if self.listener:  # a rerun's new data replaces the last stream, as the component does
            self.listener.cancel()
            self.listener = None
        if wanted:
            query = f"{data['path']}?t={data['token']}&k={','.join(wanted)}"
            self.listener = asyncio.create_task(self._listen(query, wanted))

    def _show(self, label: str, reading: dict | None) -> None:
        tag = f" (estimate, {reading['n']:,} images)" if reading and reading["estimate"] else ""
        self.metrics[label + tag] = reading["value"] if reading else "computing..."

    async def _listen(self, query: str, wanted: dict[str, str]) -> None:
        """One server-sent-events stream: each ``data:`` line is a figure, ``event: done`` ends it."""
        host, port = self.url.split("//")[1].split("/")[0].split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        self.streams += 1
        try:
            writer.write(f"GET {query} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
            while line := await reader.readline():  # chunk-size lines never start with "data:"
                text = line.decode().strip()
                if text.startswith("event: done"):
                    return
                if text.startswith("data: {"):
                    got = json.loads(text.removeprefix("data: "))
                    if got["key"] in wanted and "value" in got:
                        self._show(wanted[got["key"]], got)
                        self.pushed += 1
                        self.changed.set()
        finally:
            writer.close()

    def _finished(self, status: int) -> None:
        if status == FINISHED:
            self.full_runs += 1
            self.finished.set()
        elif status == FRAGMENT_DONE:
            self.fragment_runs += 1

    def _schedule(self, fragment_id: str, interval: float) -> None:
        old = self.timers.pop(fragment_id, None)
        if old:
            old.cancel()

        async def tick():
            while True:
                await asyncio.sleep(interval)
                await self._rerun(fragment_id=fragment_id)

        self.timers[fragment_id] = asyncio.create_task(tick())


# --- the server ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The app as ``prunekit app`` starts it, on a free port with a fresh result store (so nothing is cached from earlier runs);
    ``live=False``: the polling design (``PRUNEKIT_LIVE=0``)."""

    def __init__(self, live: bool = True, args: tuple[str, ...] = (), log: str | None = None) -> None:
        self.port = _free_port()
        self.cache = tempfile.mkdtemp(prefix="prunekit-bench-")
        env = os.environ | {"PRUNEKIT_CACHE_DIR": self.cache, "PRUNEKIT_LIVE": "1" if live else "0"}
        cmd = [
            sys.executable,
            "-m",
            "prunekit",
            "app",
            "--server.port",
            str(self.port),
            "--server.address",
            "127.0.0.1",
            *args,
        ]
        t0 = time.perf_counter()
        out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - the server's whole life
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=out)
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_stcore/health", timeout=2)
                break
            except OSError:
                if time.perf_counter() - t0 > 300 or self.proc.poll() is not None:
                    raise RuntimeError("the app did not start") from None
                time.sleep(0.2)
        self.start_s = time.perf_counter() - t0
        self.rss_first = float("nan")
        self.held_first = (0, 0)  # threads and sockets once the first session is in
        self.rss_peak: dict[str, float] | None = None  # big-links: sampled while it runs
        self.opened: list[dict] | None = None  # big-links: the models opened by link

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/_stcore/stream"

    def cpu_s(self, pid: int | None = None) -> float:
        fields = Path(f"/proc/{pid or self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def threads_and_sockets(self) -> tuple[int, int]:
        """The server process's threads and open sockets (websockets, channel streams, its workers' pipes)."""
        return threads_and_sockets(self.proc.pid)

    def workers_rss_mb(self) -> float:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        total = 0.0
        for p in out:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{p}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
        return total

    def worker_cpu_s(self) -> float:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        return sum(self.cpu_s(int(p)) for p in out if Path(f"/proc/{p}").exists())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


# --- scenarios -----------------------------------------------------------------------------------


async def _open_all(server: Server, k: int, query: str) -> list[Session]:
    sessions = [Session(server.ws, query) for _ in range(k)]
    for i, s in enumerate(sessions):  # one after another, like people arriving
        await s.open()
        if i == 0:  # the model, its tables and working copies are loaded once: not per session
            server.rss_first = server.rss_mb()
            server.held_first = server.threads_and_sockets()
    return sessions


async def teacher(server: Server, k: int = 30, rounds=(0.63, 0.77, 0.34)) -> tuple[list[Move], list[Session]]:
    sessions = await _open_all(server, k, "sparsity=0.5")
    moves = []
    for value in rounds:
        moves += await asyncio.gather(*(s.move(value) for s in sessions))
        await asyncio.sleep(1.0)
    return moves, sessions


async def crowd(server: Server) -> tuple[list[Move], list[Session]]:
    """A hundred sessions on the default model, moving together."""
    return await teacher(server, 100, rounds=(0.63, 0.34))


async def explore(server: Server, k: int = 10, steps: int = 5, seed: int = 0) -> tuple[list[Move], list[Session]]:
    rng = random.Random(seed)
    values = rng.sample([round(v / 100, 2) for v in range(1, 99) if v % 10], k * steps)
    sessions = await _open_all(server, k, "sparsity=0.5")

    async def person(i: int, s: Session) -> list[Move]:
        out = []
        for j in range(steps):
            await asyncio.sleep(rng.uniform(2.0, 4.0))
            out.append(await s.move(values[i * steps + j]))
        return out

    per = await asyncio.gather(*(person(i, s) for i, s in enumerate(sessions)))
    return [m for ms in per for m in ms], sessions


async def vgg_filters(server: Server, k: int = 30) -> tuple[list[Move], list[Session]]:
    """The room together on a configuration nothing precomputes: fmnist-vgg, filters, L1 (compacted scoring)."""
    sessions = await _open_all(server, k, "model=fmnist-vgg&structure=filter&criterion=l1&sparsity=0.5")
    moves = []
    for value in (0.63, 0.37):
        moves += await asyncio.gather(*(s.move(value) for s in sessions))
        await asyncio.sleep(1.0)
    return moves, sessions


async def vgg16(server: Server, k: int = 30) -> tuple[list[Move], list[Session]]:
    sessions = await _open_all(server, k, "model=vgg16&sparsity=0.5")
    return [], sessions


BIG = (
    "vgg16",
    "regnet_y_16gf",
    "convnext_base",
    "wide_resnet101_2",
    "resnet152",
    "vit_b_16",
    "densenet201",
    "efficientnet_b7",
)
BIG_BUDGET_GB = 8.0  # the server's --memory-gb in big-links: about two of the large models at once


async def _open_model(server: Server, name: str) -> dict:
    """One visitor opening a link to ``name`` on the Prune page, waiting until the page shows it (its load's
    progress first); a "try again in a minute" refusal is tried again as a person would, half a minute later."""
    t0, refusals = time.perf_counter(), 0
    while True:
        s = Session(server.ws, f"model={name}&sparsity=0.5")
        await s.open()
        while not s.metrics and not any("needs about" in a for a in s.alerts):
            s.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(s.changed.wait(), 1.0)
            if time.perf_counter() - t0 > 900:
                break
        await s.close()
        refused = next((a for a in s.alerts if "needs about" in a), "" if s.metrics else "timed out")
        if "try again in a minute" not in refused:  # shown, or refused for good (the default shown instead)
            return {"model": name, "shown_s": time.perf_counter() - t0, "refusals": refusals, "refused": refused}
        refusals += 1
        await asyncio.sleep(30)


async def big_links(server: Server, k: int = 10, seed: int = 0) -> tuple[list[Move], list[Session]]:
    """``k`` sessions keep moving on the default model (as ``explore`` does) while another visitor opens the
    eight ``BIG`` models by link in turn, structure only, on a server with a ``BIG_BUDGET_GB`` budget."""
    rng = random.Random(seed)
    sessions = await _open_all(server, k, "sparsity=0.5")
    server.rss_peak = {"server": server.rss_mb(), "workers": server.workers_rss_mb()}
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            server.rss_peak["server"] = max(server.rss_peak["server"], server.rss_mb())
            server.rss_peak["workers"] = max(server.rss_peak["workers"], server.workers_rss_mb())
            await asyncio.sleep(0.5)

    async def opener() -> None:
        for name in BIG:
            server.opened.append(await _open_model(server, name))
            print(f"big-links: {server.opened[-1]}", file=sys.stderr, flush=True)  # a long run shows it goes on
        done.set()

    async def person(s: Session) -> list[Move]:
        out = []
        while not done.is_set():
            await asyncio.sleep(rng.uniform(2.0, 4.0))
            out.append(await s.move(rng.choice([v / 100 for v in range(1, 99) if v % 10])))
        return out

    server.opened = []
    *per, _, _ = await asyncio.gather(*(person(s) for s in sessions), opener(), sample())
    return [m for ms in per for m in ms], sessions


SCENARIO_ARGS = {"big-links": ("--memory-gb", str(BIG_BUDGET_GB))}

SCENARIOS = {
    "teacher": teacher,
    "crowd": crowd,
    "explore": explore,
    "vgg-filters": vgg_filters,
    "vgg16": vgg16,
    "big-links": big_links,
}


def _stats(values: list[float | None]) -> dict:
    done = sorted(v for v in values if v is not None)
    if not done:
        return {"n": 0, "missing": len(values)}
    p95 = done[min(len(done) - 1, round(0.95 * (len(done) - 1)))]
    return {
        "p50": statistics.median(done),
        "p95": p95,
        "max": done[-1],
        "n": len(done),
        "missing": len(values) - len(done),
    }


async def _run(name: str, live: bool) -> dict:
    server = Server(live, SCENARIO_ARGS.get(name, ()))
    try:
        cpu0, wcpu0 = server.cpu_s(), server.worker_cpu_s()
        moves, sessions = await SCENARIOS[name](server)
        rss, held = server.rss_mb(), server.threads_and_sockets()
        cpu, wcpu = server.cpu_s() - cpu0, server.worker_cpu_s() - wcpu0
        full_runs = sum(s.full_runs for s in sessions)
        fragment_runs = sum(s.fragment_runs for s in sessions)
        errors = sum(1 for s in sessions for body in s.metrics.values() if "failed" in body)
        pushed = sum(s.pushed for s in sessions)
        for s in sessions:
            await s.close()
        return {
            "scenario": name,
            "design": "live channel" if live else "polling",
            "pushed": pushed,
            "streams": sum(s.streams for s in sessions),
            "lost_moves": sum(1 for m in moves if m.full is None),
            "sessions": len(sessions),
            "moves": len(moves),
            "server_start_s": server.start_s,
            "rerun_s": _stats([m.rerun for m in moves]),
            "first_accuracy_s": _stats([m.first for m in moves]),
            "full_accuracy_s": _stats([m.full for m in moves]),
            "server_cpu_ms_per_full_rerun": 1000 * cpu / max(full_runs, 1),
            "server_cpu_ms_per_rerun": 1000 * cpu / max(full_runs + fragment_runs, 1),  # full and fragment together
            "server_cpu_s": cpu,
            "full_reruns": full_runs,
            "fragment_reruns": fragment_runs,
            "worker_cpu_s": wcpu,
            "mb_per_extra_session": (rss - server.rss_first) / max(len(sessions) - 1, 1),
            # sessions still connected (their streams done or open): what each holds beyond the first
            "threads_per_extra_session": (held[0] - server.held_first[0]) / max(len(sessions) - 1, 1),
            "sockets_per_extra_session": (held[1] - server.held_first[1]) / max(len(sessions) - 1, 1),
            "server_rss_after_first_session_mb": server.rss_first,
            "server_rss_mb": rss,
            "errors": errors,
            "rss_peak_mb": server.rss_peak,
            "opened": server.opened,
        }
    finally:
        server.stop()


def _fmt(s: dict) -> str:
    return f"{s['p50']:.2f} / {s['p95']:.2f} / {s['max']:.2f}" if s.get("n") else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="teacher,crowd,explore,vgg-filters,vgg16")
    parser.add_argument("--design", default="live,polling", help="live, polling or both (each scenario on each)")
    parser.add_argument("--json", action="store_true", help="one JSON object per scenario")
    args = parser.parse_args()
    designs = [d == "live" for d in args.design.split(",")]
    rows = [asyncio.run(_run(name, live)) for name in args.scenarios.split(",") for live in designs]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}")
    print(
        "| scenario | design | sessions | moves | rerun p50/p95/max s | first accuracy p50/p95/max s "
        "| full split p50/p95/max s | server CPU s | full reruns | fragment reruns | pushed figures | streams "
        "| MB per extra session | lost moves | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['scenario']} | {r['design']} | {r['sessions']} | {r['moves']} | {_fmt(r['rerun_s'])} "
            f"| {_fmt(r['first_accuracy_s'])} | {_fmt(r['full_accuracy_s'])} | {r['server_cpu_s']:.1f} "
            f"| {r['full_reruns']} | {r['fragment_reruns']} | {r['pushed']} | {r['streams']} "
            f"| {r['mb_per_extra_session']:.1f} | {r['lost_moves']} | {r['errors']} |"
        )
    print(
        "\n| scenario | design | server CPU ms per full rerun | per rerun, full and fragment "
        "| threads per extra session | sockets per extra session |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['scenario']} | {r['design']} | {r['server_cpu_ms_per_full_rerun']:.1f} "
            f"| {r['server_cpu_ms_per_rerun']:.1f} | {r['threads_per_extra_session']:.2f} "
            f"| {r['sockets_per_extra_session']:.2f} |"
        )
    for r in rows:
        if r["opened"]:
            peak = r["rss_peak_mb"]
            print(
                f"\n{r['scenario']}: budget {BIG_BUDGET_GB:.0f} GB; peak RSS: server {peak['server'] / 1024:.2f} GB, "
                f"workers together {peak['workers'] / 1024:.2f} GB"
            )
            print("| model opened by link | shown after s | 'try again' refusals | refused |")
            print("|---|---|---|---|")
            for o in r["opened"]:
                print(f"| {o['model']} | {o['shown_s']:.1f} | {o['refusals']} | {o['refused'] or '-'} |")


if __name__ == "__main__":
    main()

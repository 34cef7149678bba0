"""What do open live-channel streams cost the server while nothing lands, and what does one landing result cost
to push to all of them? N streams held open, server CPU, threads and sockets measured.

    python bench/channel_idle.py [--streams 100] [--seconds 30]

A server process runs the live channel's route (``prunekit/app/channel.py``, under uvicorn as Streamlit runs it)
with an evaluation service on which nothing lands until told, and offers one session's pending job. The client
opens ``--streams`` connections to it (as 100 students' pages waiting on a figure do), waits until each has its
first line, and then reads the server's CPU time from /proc over ``--seconds``, and its threads and open sockets
before and after the streams opened. Then the result lands (as a worker's would, through ``EvalService.watch``)
and the server's CPU is read again once every stream has its figure: the cost of one pushed update per listener.
Printed beside it: what the same sessions cost the polling design, at its paced rate of 60 polls a second at
about 10 ms of server CPU each (bench/workshop.py, docs/workshop.md), i.e. about 0.6 of a core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.procstat import threads_and_sockets  # noqa: E402

POLL_CORE_SHARE = 60 * 0.010  # the polling design's paced polls: 60 per second, ~10 ms of server CPU each


def serve(port: int) -> None:
    """The server side: the channel's route on uvicorn, a service whose job lands when told, one offered job."""
    import uvicorn  # noqa: PLC0415
    from starlette.applications import Starlette  # noqa: PLC0415

    from prunekit.app.channel import CHANNEL, PATH, routes  # noqa: PLC0415
    from prunekit.core.evaluate import Counts, from_counts  # noqa: PLC0415
    from prunekit.service.jobs import EvalJob  # noqa: PLC0415

    class Held:  # an evaluation service whose job lands when the client says so (a line on stdin)
        def __init__(self) -> None:
            self.listeners: list = []

        def watch(self, jobs, callback):
            self.listeners.append((list(jobs), callback))
            return lambda: None

        def lookup(self, job):
            return None

        def land_on_stdin(self) -> None:
            sys.stdin.readline()
            outcome = from_counts([Counts(9_013, None, 10_000, 0.4)], 10_000)
            for jobs, callback in self.listeners:
                for job in jobs:
                    callback(job, outcome)

    held = Held()
    CHANNEL.service = held
    token = CHANNEL.token()
    (key,) = CHANNEL.offer(token, [EvalJob("fmnist-cnn")]).values()
    threading.Thread(target=held.land_on_stdin, daemon=True).start()
    print(f"{PATH}?t={token}&k={key}", flush=True)
    uvicorn.run(Starlette(routes=routes()), host="127.0.0.1", port=port, log_level="warning")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def hold(port: int, query: str, n: int, seconds: float, proc: subprocess.Popen) -> dict:
    pid = proc.pid
    before = threads_and_sockets(pid)
    streams = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET {query} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n".encode())
        streams.append((reader, writer))
    for reader, _ in streams:  # each stream answered: headers, then its first event line
        while not (await reader.readline()).startswith(b"retry:"):
            pass
    keep_alive, figures = 0, 0
    all_figures = asyncio.Event()

    async def drain(reader) -> None:
        nonlocal keep_alive, figures
        while line := await reader.readline():
            keep_alive += line.startswith(b": still waiting")
            if line.startswith(b'data: {"key"'):
                figures += 1
                if figures == n:
                    all_figures.set()

    readers = [asyncio.create_task(drain(r)) for r, _ in streams]
    held = threads_and_sockets(pid)
    cpu0, t0 = cpu_s(pid), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, wall = cpu_s(pid) - cpu0, time.perf_counter() - t0
    cpu0, t0 = cpu_s(pid), time.perf_counter()
    proc.stdin.write("land\n")
    proc.stdin.flush()
    await asyncio.wait_for(all_figures.wait(), 60)
    push_cpu, push_wall = cpu_s(pid) - cpu0, time.perf_counter() - t0
    for task in readers:
        task.cancel()
    for _, writer in streams:
        writer.close()
    return {
        "streams": n,
        "seconds": wall,
        "server_cpu_s": cpu,
        "keep_alive_lines": keep_alive,
        "push_cpu_s": push_cpu,
        "push_wall_s": push_wall,
        "threads": (before[0], held[0]),
        "sockets": (before[1], held[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        query = proc.stdout.readline().strip()
        for _ in range(100):  # until uvicorn listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        row = asyncio.run(hold(port, query, args.streams, args.seconds, proc))
    finally:
        proc.terminate()
        proc.wait(10)
    share = row["server_cpu_s"] / row["seconds"]
    print(f"machine: {platform.node()}, {os.cpu_count()} cores")
    print("| design | open streams | idle for s | server CPU s | share of a core | keep-alive lines |")
    print("|---|---|---|---|---|---|")
    print(
        f"| live channel | {row['streams']} | {row['seconds']:.0f} | {row['server_cpu_s']:.2f} | {share:.2%} "
        f"| {row['keep_alive_lines']} |"
    )
    print(f"| polling (paced: 60 polls/s at ~10 ms) | - | - | - | about {POLL_CORE_SHARE:.0%} | - |")
    n = row["streams"]
    (t0, t1), (s0, s1) = row["threads"], row["sockets"]
    print(
        f"\nOne result landing, pushed to all {n} streams: {1000 * row['push_cpu_s']:.1f} ms of server CPU "
        f"({1000 * row['push_cpu_s'] / n:.2f} ms per pushed update), every stream had it after "
        f"{1000 * row['push_wall_s']:.0f} ms."
    )
    print(
        f"Held per open stream: {(t1 - t0) / n:.2f} threads ({t0} before the streams, {t1} with them), "
        f"{(s1 - s0) / n:.2f} sockets ({s0} before, {s1} with them)."
    )


if __name__ == "__main__":
    main()

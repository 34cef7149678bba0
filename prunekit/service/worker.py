"""A worker process's side of the protocol: :func:`answer` turns a :class:`JobRunner`'s run into a message,
:func:`worker_main` is a local worker's loop, :func:`jobs_from` and the control read what the scheduler sends."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import torch

from prunekit.core.loaded import ModelSpec
from prunekit.deploy.recover import Recovery
from prunekit.service.chunks import Control, Preempted, Resume
from prunekit.service.jobs import EvalJob
from prunekit.service.protocol import Order, Status
from prunekit.service.runner import JobRunner


def worker_main(conn, threads: int, nice: int = 0, env: dict[str, str] | None = None) -> None:
    """A worker process: receive ``(job, spec-or-None, resume-or-None)``, answer as :func:`answer` does
    (ok, error, preempted or part); meanwhile send ``("partial", ...)`` and
    ``("progress", ...)`` and heed ``("stop", job)`` and ``("preempt", job)``.

    ``nice`` lowers the worker's CPU priority so that the web server (and a browser on the same
    machine) stay responsive while the workers keep every core busy. ``env``: the environment to run in (the
    server's, when this process was forked by a fork server started earlier).
    """
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    if nice:
        os.nice(nice)
    torch.set_num_threads(threads)
    runner, drops = JobRunner(), []
    for job, spec, resume in jobs_from(conn, drops):
        _drop_all(runner, drops)
        try:
            conn.send(answer(runner, job, spec, _control(conn, job, resume, drops)))
        except (BrokenPipeError, EOFError, OSError):
            return  # the server went away


def _drop_all(runner: JobRunner, drops: list[str]) -> None:
    for key in drops:
        runner.drop(key)
    drops.clear()


def jobs_from(conn, drops: list[str] | None = None) -> Iterator[tuple[EvalJob, ModelSpec | None, Resume | None]]:
    """The ``(job, spec, resume)`` messages a worker receives, until the service closes the pipe; a stop or
    preempt read here is for a job that has already finished, and is dropped. A model to drop is added to
    ``drops`` (the worker forgets it before its next job)."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == Order.DROP and drops is not None:
            drops.append(message[1])
        elif not isinstance(message[0], str):
            yield message


PROGRESS_EVERY_S = 0.25


class _Inbox:
    """What the scheduler says while a job runs: stop (a recovery), preempt (a full pass), and models to drop."""

    def __init__(self, conn, job: EvalJob, drops: list[str]) -> None:
        self.conn, self.job, self.drops = conn, job, drops
        self.stop = self.preempt = False

    def read(self) -> None:
        while self.conn.poll():
            kind, target = self.conn.recv()
            if kind == Order.DROP:
                self.drops.append(target)  # not now: the running job may be using it
            elif target == self.job:
                self.stop |= kind == Order.STOP
                self.preempt |= kind == Order.PREEMPT


def _control(conn, job: EvalJob, resume: Resume | None, drops: list[str]) -> Control:
    """A worker's :class:`Control` over its pipe; a recovery's progress goes at most every PROGRESS_EVERY_S."""
    inbox, last = _Inbox(conn, job, drops), [0.0]

    def report(progress: Recovery) -> bool:
        inbox.read()
        now = time.monotonic()
        if inbox.stop or now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            conn.send((Status.PROGRESS, job, progress.without_weights()))
        return not inbox.stop

    def preempted() -> bool:
        inbox.read()
        return inbox.preempt

    return Control(report, lambda estimate, acc: conn.send((Status.PARTIAL, estimate, acc)), preempted, resume)


def answer(runner: JobRunner, job: EvalJob, spec: ModelSpec | None, control: Control | None = None) -> tuple:
    """Load ``spec`` if given, then run ``job``: ``("ok", job, outcome)``, ``("error", job, text)``,
    ``("preempted", job, Resume)`` when ``control`` asked the pass to hand its worker back, or
    ``("part", job, Resume)`` when it was given some of a pass's chunks and has scored them."""
    try:
        if spec is not None:
            runner.load(job.model, spec)
        outcome = runner.run(job, control)
        return (Status.PART, job, outcome) if isinstance(outcome, Resume) else (Status.OK, job, outcome)
    except Preempted as stop:
        return (Status.PREEMPTED, job, stop.resume)
    except Exception as exc:  # reported on the page; the worker lives on
        return (Status.ERROR, job, f"{type(exc).__name__}: {exc}")

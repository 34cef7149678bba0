"""The messages between the scheduler and a worker (a local process's pipe, or a Ray task's return value).

A worker answers ``(Status, job, payload)``; while a job runs it may also send ``(Status.PARTIAL, estimate job,
Accuracy)`` and ``(Status.PROGRESS, job, Recovery)``. The scheduler sends ``(job, spec or None, resume or None)``
to start one and ``(Order, job)`` to steer the one running. Both are string enums: a message pickles as text.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """What a worker says about a job."""

    OK = "ok"  # payload: the outcome
    ERROR = "error"  # payload: the message
    PREEMPTED = "preempted"  # payload: the Resume to go on from
    PART = "part"  # payload: the Resume of the chunks it was given, counted
    PARTIAL = "partial"  # (Status.PARTIAL, estimate job, Accuracy): the estimate a full pass scored first
    PROGRESS = "progress"  # payload: a recovery as far as it has gone
    LOST = "lost"  # a remote slot: its pool is gone (payload: why); the service falls back to local workers


class Order(StrEnum):
    """What the scheduler tells the worker running a job."""

    STOP = "stop"  # a recovery: stop after the current step
    PREEMPT = "preempt"  # a full pass: hand the worker back after the current chunk
    DROP = "drop"  # (Order.DROP, model key): the server let this model go; forget it once the running job ends

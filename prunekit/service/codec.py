"""Outcomes in the result store: each kind of job's outcome as JSON and back, one entry per kind."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import asdict, dataclass

from prunekit.core.connectivity import Connectivity
from prunekit.core.evaluate import Accuracy
from prunekit.core.oracle import GroupScores, Oracle
from prunekit.deploy.latency import Latency
from prunekit.deploy.recover import CurvePoint, Recovery
from prunekit.deploy.staircase import Staircase
from prunekit.deploy.training import Budget, MethodResult
from prunekit.service.jobs import (
    Collapse,
    CollapseJob,
    EvalJob,
    JobError,
    MethodJob,
    OracleJob,
    PathJob,
    Predictions,
    PredictJob,
    RecoverJob,
    ScoresJob,
    SpeedJob,
    StaircaseJob,
)

Measurement = (
    Accuracy
    | Latency
    | Staircase
    | Oracle
    | GroupScores
    | Recovery
    | MethodResult
    | Connectivity
    | Collapse
    | Predictions
)  # what the store holds
Outcome = Measurement | JobError  # what a job ends with


@dataclass(frozen=True)
class Codec:
    """How one kind of job's outcome is stored: ``encode`` gives JSON (None: not to be stored), ``decode``
    reads it back (TypeError/KeyError when another version wrote it)."""

    encode: Callable[[object], dict | None]
    decode: Callable[[dict], object]


def _recovery_json(outcome: Recovery) -> dict | None:
    if outcome.stopped:  # a stopped run is not the recipe's result
        return None
    return {
        "accuracy": {k: asdict(v) if v else None for k, v in outcome.accuracy.items()},
        "curve": [asdict(p) for p in outcome.curve],
        **{k: getattr(outcome, k) for k in ("step", "total_steps", "stopped", "seconds", "train_images")},
    }


def _recovery(value: dict) -> Recovery:
    acc = {k: Accuracy(**v) if v else None for k, v in value["accuracy"].items()}
    rest = {k: v for k, v in value.items() if k not in ("accuracy", "curve")}
    return Recovery(acc, [CurvePoint(**p) for p in value["curve"]], **rest)


def _method_json(outcome: MethodResult) -> dict | None:
    if outcome.stopped:
        return None
    plain = asdict(outcome.without_weights())
    for gone in ("model", "masks"):
        plain.pop(gone)
    return plain


def _method(value: dict) -> MethodResult:
    acc = Accuracy(**value["accuracy"]) if value["accuracy"] else None
    rest = {k: v for k, v in value.items() if k not in ("accuracy", "budget", "curve")}
    curve = [tuple(p) for p in value["curve"]]
    return MethodResult(accuracy=acc, budget=Budget(**value["budget"]), curve=curve, **rest)


CODECS: dict[type[EvalJob], Codec] = {
    EvalJob: Codec(asdict, lambda v: Accuracy(**v)),
    PredictJob: Codec(
        lambda o: {"data": base64.b64encode(o.data).decode("ascii"), "dtype": o.dtype},
        lambda v: Predictions(base64.b64decode(v["data"]), v["dtype"]),
    ),
    PathJob: Codec(asdict, lambda v: Connectivity(**v)),
    CollapseJob: Codec(asdict, lambda v: Collapse(**v)),
    SpeedJob: Codec(lambda o: o.to_json(), Latency.from_json),
    StaircaseJob: Codec(lambda o: o.to_json(), Staircase.from_json),
    OracleJob: Codec(lambda o: o.to_json(), Oracle.from_json),
    ScoresJob: Codec(lambda o: o.to_json(), GroupScores.from_json),
    RecoverJob: Codec(_recovery_json, _recovery),
    MethodJob: Codec(_method_json, _method),
}


def encode(job: EvalJob, outcome: Measurement) -> dict | None:
    """``job``'s outcome in a JSON-friendly form for the result store; None for what must not be stored."""
    return CODECS[type(job)].encode(outcome)


def decode(job: EvalJob, value: dict) -> Measurement:
    """The inverse of :func:`encode` for ``job``'s kind."""
    return CODECS[type(job)].decode(value)

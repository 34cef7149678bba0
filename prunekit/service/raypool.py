"""Evaluation slots on a Ray cluster: the evaluation service's jobs run as Ray tasks.

Imported only when a Ray address is given (``PRUNEKIT_RAY_ADDRESS``, ``--ray``); without one nothing
here, and nothing of Ray, is loaded. Each slot is a thread of the service's process that looks to the
scheduler like a worker process: it takes ``(job, spec, resume)`` on a pipe, runs the job as a Ray task and
answers on the pipe. A model's weights go into Ray's object store once (:class:`ModelPayload`), and
every Ray worker process loads a model at most once (its first task for that model fetches the payload).
A recovery or a training method talks to the driver through a :class:`~prunekit.service.rayline.Line` actor (its progress one way, a
stop the other); a method's trained weights come back with its answer and the driver writes them, as a local
worker does, since a node's disk is not the driver's.

Faults: a task whose worker process dies is retried by Ray (``max_retries``). A watchdog thread checks
that the cluster's GCS port still answers; when it stops, the pool calls ``on_lost(message)`` once (the
service falls back to local workers) and leaves the cluster, so that Ray's own 60-second reconnect
timeout never ends this process.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import pickle
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import ray
import torch

from prunekit.core.loaded import ModelSpec
from prunekit.deploy.recover import Recovery
from prunekit.errors import ClusterUnavailableError, InvalidArgumentError
from prunekit.service.chunks import Control
from prunekit.service.jobs import EvalJob, MethodJob, Report, reports_progress
from prunekit.service.protocol import Order, Status
from prunekit.service.rayline import Line
from prunekit.service.runner import JobRunner, keep_weights
from prunekit.service.threadproc import ThreadProcess
from prunekit.service.worker import PROGRESS_EVERY_S, answer, jobs_from

log = logging.getLogger(__name__)
LOCAL = "local"  # the address that starts a private Ray instance on this machine
MAX_RETRIES = 3  # Ray re-runs a task whose worker process died this many times
PROBE_EVERY_S = 2.0  # while a task runs, check this often that the cluster still answers
PROBE_TIMEOUT_S = 2.0
GCS_PATIENCE_S = 10 * 365 * 24 * 3600


@dataclass(frozen=True)
class ModelPayload:
    """What a Ray worker needs for one model: how to build it, and the driver's weights (numpy arrays,
    which Ray's object store shares without copying), so every node evaluates the same weights."""

    spec: ModelSpec
    weights: dict[str, np.ndarray]


def payload(spec: ModelSpec) -> ModelPayload:
    """Load ``spec`` here once and keep its weights: (name -> array) of the model's state dict."""
    model = spec.load().model
    return ModelPayload(spec, {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()})


# --- the worker side: one JobRunner per Ray worker process ------------------------------------------

_RUNNER: JobRunner | None = None
# model key -> the object-store payload this worker process loaded it from. A Ray worker outlives the pool that
# sent it a model (a cluster serves many drivers, and a driver's later pools): the same key may come with other
# weights or images, and a lab kept by key alone would answer with the old ones.
_LOADED: dict[str, str] = {}


@dataclass(frozen=True)
class _FromObjectStore:
    """A spec for ``JobRunner.load``: fetched from the object store only when this worker process has not
    loaded the model yet (the reference is boxed in a list so Ray does not fetch it for every task)."""

    boxed: list

    def load(self):
        held: ModelPayload = ray.get(self.boxed[0])
        loaded = held.spec.load()
        loaded.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in held.weights.items()})
        return loaded


def _runner(threads: int) -> JobRunner:
    global _RUNNER  # noqa: PLW0603 - one per Ray worker process, reused by its later tasks
    if _RUNNER is None:
        torch.set_num_threads(threads)
        _RUNNER = JobRunner(writes_weights=False)  # a node's disk is not the driver's: the weights travel back
    return _RUNNER


def _reporting(line) -> Report:
    """A task's ``Control.report`` through ``line``: progress at most every PROGRESS_EVERY_S (the stop is
    read on the same call, so it is heeded within that time and one step)."""
    last, going = [0.0], [True]

    def report(progress: Recovery) -> bool:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            going[0] = ray.get(line.report.remote(pickle.dumps(progress.without_weights())))
        return going[0]

    return report


@ray.remote(num_cpus=1, max_retries=MAX_RETRIES)
def run_remote(job: EvalJob, boxed: list, threads: int, line=None) -> tuple:
    """One job in a Ray worker: ``("ok", job, outcome)`` or ``("error", job, text)``, as a local worker answers;
    a recovery or a training method reports through ``line`` (a :class:`Line`) and stops when it says so."""
    control = None if line is None else Control(report=_reporting(line))
    runner, sent = _runner(threads), boxed[0].hex()
    if _LOADED.get(job.model) != sent:
        runner.drop(job.model)  # loaded again below, from this payload
        _LOADED[job.model] = sent
    return answer(runner, job, _FromObjectStore(boxed), control)


def _weights_kept(message: tuple) -> tuple:
    """A finished training method's weights came back with its answer: written here, as a local worker does."""
    status, job, payload = message
    if status == Status.OK and isinstance(job, MethodJob):
        return (status, job, keep_weights(job, payload))
    return message


# --- the driver side -------------------------------------------------------------------------------


def _reachable(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
        return True
    return False


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InvalidArgumentError(f"a Ray address is 'host:port', 'auto' or 'local', got {address!r}")
    return host, int(port)


def connect(address: str, cpus: int | None = None) -> str:
    """Join the Ray cluster at ``address`` ('host:port', 'auto', or 'local' for a private instance with
    ``cpus`` CPUs); returns the GCS address. Raises ClusterUnavailableError naming the address."""
    # an address named is checked even where this process has joined a cluster already: it must not be told
    # that an unreachable cluster works because another one does
    if address not in (LOCAL, "auto") and not _reachable(*_split(address.removeprefix("ray://"))):
        raise ClusterUnavailableError(f"no Ray cluster answers at {address!r}")
    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    # Ray ends a driver whose GCS stays unreachable for 60 s; this process is a web server that falls
    # back to local workers instead (read by Ray once per process, at its first init).
    os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", str(GCS_PATIENCE_S))
    options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    env = {"env_vars": {"PYTHONPATH": _root_path()}}
    try:
        if address == LOCAL:
            # 'local' always starts a new instance, even where `ray start` left a cluster address behind
            _init_in_a_lasting_thread(address=LOCAL, num_cpus=cpus or os.cpu_count() or 1, runtime_env=env, **options)
        else:
            ray.init(address=address, runtime_env=env, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterUnavailableError(f"could not join the Ray cluster at {address!r}: {exc}") from None
    return ray.get_runtime_context().gcs_address


def _init_in_a_lasting_thread(**options) -> None:
    """``ray.init`` from a thread that lives as long as this process: Ray's processes are told to die
    with the thread that started them, and a Streamlit script thread ends after every run."""
    done, failed = threading.Event(), []

    def run() -> None:
        try:
            ray.init(**options)
        except Exception as exc:  # re-raised in the caller
            failed.append(exc)
        done.set()
        if not failed:
            threading.Event().wait()

    threading.Thread(target=run, name="prunekit-ray-init", daemon=True).start()
    done.wait()
    if failed:
        raise failed[0]


def _root_path() -> str:
    """Where ``prunekit`` is importable from, so Ray workers started here import the same code."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)


class RayPool:
    """Slots that run evaluation jobs as Ray tasks on the cluster at ``address``.

    ``slots()`` is the cluster's CPU count: one task in flight per CPU. The object store holds each
    model's payload once; ``puts`` counts them (one per model, whatever the number of tasks)."""

    def __init__(self, address: str, threads: int = 1, cpus: int | None = None) -> None:
        self.address, self.threads = address, threads
        self._owns = not ray.is_initialized()  # a pool leaves a cluster only if it joined it
        self.gcs = connect(address, cpus)
        self._gcs_host_port = _split(self.gcs)
        self._cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._lock = threading.Lock()
        self._refs: dict[str, ray.ObjectRef] = {}
        self._specs: dict[str, ModelSpec] = {}
        self.puts = 0
        self.lost: str | None = None
        self.on_lost: Callable[[str], None] = lambda why: None
        self._closed = threading.Event()
        threading.Thread(target=self._watch, name="prunekit-ray-watchdog", daemon=True).start()

    def _watch(self) -> None:
        misses = 0
        while not self._closed.wait(PROBE_EVERY_S):
            misses = 0 if _reachable(*self._gcs_host_port) else misses + 1
            if misses >= 2:  # one refused connection can be a blip
                self.lost = f"the Ray cluster at {self.address!r} stopped answering"
                log.warning("%s", self.lost)
                self.on_lost(self.lost)
                self.close()
                return

    def slots(self) -> int:
        """One slot per CPU the cluster had when this pool joined it."""
        return self._cpus

    def describe(self) -> str:
        where = "a private Ray instance on this machine" if self.address == LOCAL else f"Ray at {self.address}"
        return f"{where} ({self._cpus} CPUs)"

    def spawn(self) -> tuple[ThreadProcess, object]:
        """A new slot: (process-like, the service's end of its pipe)."""
        parent, child = mp.Pipe()
        proc = ThreadProcess(lambda: self._serve(child), name="prunekit-ray-slot")
        proc.start()
        return proc, parent

    def _serve(self, conn) -> None:
        with contextlib.closing(conn):
            for job, spec, _ in jobs_from(conn):  # a Ray task is never preempted, so it never resumes
                answer = self._run(job, spec, conn)
                try:
                    conn.send(answer)
                except OSError:  # the service let this slot go (closed, or fell back to local workers)
                    return

    def _ref(self, key: str, spec: ModelSpec | None) -> ray.ObjectRef:
        """The payload of ``key`` in the object store, put there on first use (once per model)."""
        with self._lock:
            if spec is not None:
                self._specs.setdefault(key, spec)
            if key not in self._refs:
                if key not in self._specs:
                    raise InvalidArgumentError(f"model {key!r} was never sent to the Ray pool")
                self._refs[key] = ray.put(payload(self._specs[key]))
                self.puts += 1
            return self._refs[key]

    def _run(self, job: EvalJob, spec: ModelSpec | None, conn) -> tuple:
        if self.lost:
            return (Status.LOST, job, self.lost)
        line = Line.remote() if reports_progress(job) else None
        try:
            task = run_remote.remote(job, [self._ref(job.model, spec)], self.threads, line)
            while not self.lost:
                ready, _ = ray.wait([task], timeout=PROGRESS_EVERY_S if line else PROBE_EVERY_S)
                if ready:
                    return _weights_kept(ray.get(task))
                if line is not None:
                    self._relay(job, line, conn)
            return (Status.LOST, job, self.lost)
        except ray.exceptions.RayError as exc:  # retries spent: the job's error, the cluster is fine
            return (Status.ERROR, job, f"the Ray task failed after {MAX_RETRIES} retries: {type(exc).__name__}")
        except Exception as exc:  # a payload that cannot be built: the job's error
            return (Status.ERROR, job, f"{type(exc).__name__}: {exc}")
        finally:
            if line is not None:
                with contextlib.suppress(Exception):
                    ray.kill(line)

    @staticmethod
    def _relay(job: EvalJob, line, conn) -> None:
        """Between waits on a long task: pass the scheduler's stop to the task, and its progress back."""
        while conn.poll():
            order, target = conn.recv()
            if order == Order.STOP and target == job:
                line.stop.remote()
        progress = ray.get(line.latest.remote())
        if progress is not None:
            conn.send((Status.PROGRESS, job, pickle.loads(progress)))

    def close(self) -> None:
        """Leave the cluster (stops a private instance) if this pool joined it; safe after the cluster is
        gone; idempotent. A pool made while the process was in a cluster already leaves it to its owner."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._owns:
            with contextlib.suppress(Exception):
                ray.shutdown()

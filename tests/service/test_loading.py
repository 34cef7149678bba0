"""Models loaded apart from the pages: a page asks without waiting long, sees the step a load is at, and gets
the model (or the load's error) once it is there; loader threads run below the pages' priority."""

from __future__ import annotations

import gc
import os
import threading
import weakref

import pytest

from prunekit.core.lab import Pruner
from prunekit.core.spec import PruneSpec
from prunekit.errors import MemoryBudgetError
from prunekit.service.loading import LAB_STEPS, Loads, LoadStatus, prepared_lab
from prunekit.service.memory import GB, ModelBudget
from tests.helpers import TinyResNet, tiny_loaded
from tests.service.test_memory import Clock

STEPS = ("reading", "sorting")


class Gated:
    """A load that reports step 1, waits for ``open``, reports step 2 and returns; counts its calls."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[str] = []
        self.priority: list[int] = []

    def __call__(self, name, progress):
        self.calls.append(name)
        self.priority.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        progress(1)
        assert self.gate.wait(10)
        progress(2)
        if name == "broken":
            raise OSError("disk")
        return f"lab of {name}"


def _loads(load, clock=None, threads=2, budget_gb=10, sizes=None):
    sizes = sizes or {}
    budget = ModelBudget(int(budget_gb * GB), estimate=lambda n: sizes.get(n, 1) * GB, load=load)
    return Loads(budget, STEPS, threads=threads, clock=clock or Clock())


def _until(predicate, seconds=5.0):
    done = threading.Event()
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        done.wait(0.01)
    raise AssertionError("timed out")


def test_a_page_gets_the_status_at_once_and_the_model_once_it_is_loaded():
    clock, load = Clock(), Gated()
    loads = _loads(load, clock)
    first = loads.get("a", wait_s=0)
    assert isinstance(first, LoadStatus) and first.name == "a"
    _until(lambda: loads.status("a").step == 1)
    clock.later(12)
    status = loads.get("a", wait_s=0.01)  # a second asker: the same load, not another
    assert status == LoadStatus("a", 1, STEPS, 12.0, GB) and load.calls == ["a"]
    assert status.fraction == 0.5
    assert status.sentence() == (
        "Loading a (first time on this server; it will hold about 1.0 GB, an estimate): step 1 of 2: reading, "
        "12 s so far."
    )
    load.gate.set()
    assert loads.get("a") == "lab of a"  # waits, as a script does
    assert loads.status("a") is None and "a" in loads.budget
    assert loads.get("a", wait_s=0) == "lab of a" and load.calls == ["a"]


def test_a_failed_load_is_told_to_the_next_asker_and_tried_again_by_the_one_after():
    load = Gated()
    load.gate.set()
    loads = _loads(load)
    with pytest.raises(OSError, match="disk"):
        loads.get("broken", wait_s=5)
    assert loads.status("broken") is None and loads.budget.used() == 0
    with pytest.raises(OSError):
        loads.get("broken", wait_s=5)
    assert load.calls == ["broken", "broken"]


def test_a_model_larger_than_the_budget_is_refused_to_the_asker_without_loading():
    load = Gated()
    loads = _loads(load, sizes={"huge": 11})
    with pytest.raises(MemoryBudgetError, match="huge needs about 11.0 GB"):
        loads.get("huge", wait_s=5)
    assert load.calls == []


def test_loads_beyond_the_loader_threads_wait_and_say_so():
    load = Gated()
    loads = _loads(load, threads=1)
    loads.get("a", wait_s=0)
    _until(lambda: load.calls == ["a"])
    waiting = loads.get("b", wait_s=0)
    assert waiting.step == 0 and waiting.fraction == 0 and "waiting for a loader" in waiting.sentence()
    load.gate.set()
    assert loads.get("b") == "lab of b" and load.calls == ["a", "b"]


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="thread priorities are a POSIX call")
def test_loader_threads_run_below_the_pages_priority():
    load = Gated()
    load.gate.set()
    loads = _loads(load)
    loads.get("a")
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    assert load.priority == [min(19, mine + 10)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine  # the asker's own is unchanged


def test_a_prepared_lab_has_its_one_off_work_done_in_the_named_steps(monkeypatch):
    steps = []
    specs = [PruneSpec(sparsity=0.5, allocation=scope) for scope in ("global", "local")]
    lab = prepared_lab(lambda: tiny_loaded(TinyResNet), specs, steps.append)
    assert steps == [1, 2, 3, 4] and len(LAB_STEPS) == 4
    assert "profile" in lab.__dict__  # cached: the first page does not compute it

    def recomputed(*args, **kwargs):
        raise AssertionError("the first page's results were computed again")

    monkeypatch.setattr(Pruner, "prune", recomputed)
    for spec in specs:  # the first page's results are lookups now
        assert lab.result(spec, paths=lab.paths_in_move).achieved_sparsity == pytest.approx(0.5, abs=0.05)


def test_a_loaded_model_is_held_by_the_budget_alone():
    """Once loaded, nothing of the load keeps the model (a page that saw its progress asks again only once it is
    held): an eviction frees it."""

    class Model:
        pass

    gate = threading.Event()

    def load(name, progress):
        assert gate.wait(10)
        return Model()

    budget = ModelBudget(int(1.5 * GB), estimate=lambda n: GB, load=load, in_use_s=0)  # room for one
    loads = Loads(budget, STEPS)
    assert isinstance(loads.get("a", wait_s=0), LoadStatus)
    gate.set()
    _until(lambda: "a" in budget)
    gone = weakref.ref(loads.get("a", wait_s=0))
    loads.get("b")  # evicts a
    gc.collect()
    assert gone() is None

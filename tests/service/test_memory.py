"""The server's model budget: an injected footprint estimate and clock drive eviction order, the refusal
sentence and "never evict what is in use"."""

from __future__ import annotations

import threading

import pytest

from prunekit.errors import InvalidArgumentError, MemoryBudgetError
from prunekit.service.memory import GB, IN_USE_S, ModelBudget, budget_bytes, footprint, machine_bytes

SIZES = {"default": 1, "a": 3, "b": 3, "c": 4, "huge": 11}  # in GB


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def later(self, seconds: float = IN_USE_S + 1) -> None:
        self.now += seconds


def _budget(clock: Clock, budget_gb: float = 10, evicted: list | None = None, loads: list | None = None):
    def load(name, progress):
        if loads is not None:
            loads.append(name)
        return f"lab of {name}"

    return ModelBudget(
        int(budget_gb * GB),
        estimate=lambda name: SIZES[name] * GB,
        load=load,
        keep=frozenset({"default"}),
        on_evict=((lambda name, lab: evicted.append(name)) if evicted is not None else None),
        clock=clock,
    )


def test_least_recently_used_goes_first_and_the_kept_model_never():
    clock, evicted = Clock(), []
    labs = _budget(clock, evicted=evicted)
    for name in ("default", "a", "b"):  # 7 of 10 GB
        assert labs.get(name) == f"lab of {name}"
        clock.later()
    labs.get("a")  # a is now more recent than b; default is the oldest but kept
    clock.later()
    labs.get("c")  # needs 4: 3 free, b (least recently used, not kept) goes
    assert evicted == ["b"]
    assert [n for n, _ in labs.held()] == ["default", "a", "c"]
    assert labs.used() == 8 * GB <= labs.budget


def test_a_model_used_this_minute_is_never_evicted():
    clock, evicted = Clock(), []
    labs = _budget(clock, evicted=evicted)
    labs.get("default")
    labs.get("a")
    labs.get("b")
    clock.later(IN_USE_S / 2)  # a and b were used half a minute ago: both in use
    with pytest.raises(MemoryBudgetError) as err:
        labs.get("c")
    assert "c needs about 4.0 GB" in str(err.value) and "a, b are in use" in str(err.value)
    assert "try again in a minute" in str(err.value)
    assert evicted == [] and [n for n, _ in labs.held()] == ["default", "a", "b"]  # nothing dropped for nothing
    clock.later(IN_USE_S / 2 + 1)
    assert labs.get("c") == "lab of c" and evicted == ["a"]


def test_a_model_larger_than_the_whole_budget_is_refused_in_one_sentence():
    clock, loads = Clock(), []
    labs = _budget(clock, loads=loads)
    labs.get("a")
    with pytest.raises(MemoryBudgetError) as err:
        labs.get("huge")
    text = str(err.value)
    assert text == (
        "huge needs about 11.0 GB in the server, more than its whole memory budget of 10.0 GB: it is not loaded "
        "(the person starting the server can raise the budget with --memory-gb)"
    )
    assert loads == ["a"] and labs.held() == [("a", 3 * GB)]


def test_concurrent_askers_of_one_model_load_it_once():
    clock, loads = Clock(), []
    release = threading.Event()

    def slow(name, progress):
        loads.append(name)
        release.wait(5)
        return object()

    labs = ModelBudget(10 * GB, estimate=lambda n: GB, load=slow, clock=clock)
    got = []
    threads = [threading.Thread(target=lambda: got.append(labs.get("a"))) for _ in range(4)]
    for t in threads:
        t.start()
    release.set()
    for t in threads:
        t.join(5)
    assert loads == ["a"] and len(got) == 4 and all(g is got[0] for g in got)


def test_a_failed_load_holds_nothing_and_can_be_retried():
    clock, calls = Clock(), []

    def flaky(name, progress):
        calls.append(name)
        if len(calls) == 1:
            raise OSError("disk")
        return name

    labs = ModelBudget(10 * GB, estimate=lambda n: 2 * GB, load=flaky, clock=clock)
    with pytest.raises(OSError):
        labs.get("a")
    assert labs.used() == 0 and labs.held() == []
    assert labs.get("a") == "a" and labs.used() == 2 * GB


def test_the_budget_comes_from_the_environment_or_a_third_of_the_machine():
    assert budget_bytes({"PRUNEKIT_MEMORY_GB": "6"}) == 6 * GB
    assert budget_bytes({"PRUNEKIT_MEMORY_GB": "0.5"}) == GB // 2
    third = budget_bytes({})
    assert third == int(machine_bytes() / 3) and 0 < third < budget_bytes({"PRUNEKIT_MEMORY_GB": str(4 * third / GB)})
    for bad in ("lots", "0", "-2", "nan", "inf"):
        with pytest.raises(InvalidArgumentError, match="PRUNEKIT_MEMORY_GB"):
            budget_bytes({"PRUNEKIT_MEMORY_GB": bad})


def test_the_footprint_grows_with_parameters():
    assert footprint(0) < footprint(10**6) < footprint(10**8)
    with pytest.raises(InvalidArgumentError):
        footprint(-1)

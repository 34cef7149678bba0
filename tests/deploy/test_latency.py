"""Latency measurement against a fake clock: each model's forward advances it by a known cost, so
medians, interleaving, the time budget and speedups are checked exactly (no wall clock in a unit test)."""

import pytest
import torch
from torch import nn

from prunekit.deploy.latency import Latency, LatencyConfig, measure
from prunekit.errors import InvalidArgumentError


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.log: list[str] = []

    def __call__(self) -> float:
        return self.now


class Costly(nn.Module):
    """A forward that costs ``costs[k]`` seconds of the fake clock on its k-th call (cycling)."""

    def __init__(self, name: str, clock: FakeClock, *costs: float) -> None:
        super().__init__()
        self.name, self.clock, self.costs, self.calls = name, clock, costs, 0
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        self.clock.now += self.costs[self.calls % len(self.costs)]
        self.clock.log.append(self.name)
        self.calls += 1
        return x


def test_medians_and_speedups_equal_the_known_costs():
    clock = FakeClock()
    # warm-up call first (cost 1 s, ignored), then timed runs whose median is the middle cost
    dense = Costly("dense", clock, 1.0, 0.030, 0.050, 0.020, 0.031, 0.029, 0.030, 0.030)
    fast = Costly("fast", clock, 1.0, 0.010, 0.012, 0.009, 0.010, 0.011, 0.010, 0.010)
    config = LatencyConfig(batches=(1,), runs=7, warmup=1, min_runs=5, budget_s=100)
    got = measure({"dense": dense, "fast": fast}, (1, 2, 2), config, clock=clock)
    assert got.runs == {1: 7}
    assert got.ms["dense"][1] == pytest.approx(30.0) and got.ms["fast"][1] == pytest.approx(10.0)
    assert got.speedup("fast", 1) == pytest.approx(3.0)
    assert Latency.from_json(got.to_json()) == got
    assert [r["model"] for r in got.rows()] == ["dense", "fast"] and got.rows()[0]["speedup b1"] == "1.00x"
    assert got.rows()[1]["speedup b1"] == "3.00x"


def test_variants_are_interleaved_run_by_run():
    clock = FakeClock()
    models = {n: Costly(n, clock, 0.01) for n in ("dense", "masked", "compact")}
    measure(models, (1,), LatencyConfig(batches=(1, 4), runs=5, warmup=2, min_runs=5), clock=clock)
    assert clock.log == ["dense", "masked", "compact"] * (2 + 5) * 2


def test_a_time_budget_stops_adding_runs_after_min_runs():
    clock = FakeClock()
    slow = Costly("slow", clock, 0.05)
    got = measure({"slow": slow}, (1,), LatencyConfig(batches=(1,), runs=50, warmup=0, budget_s=0.1), clock=clock)
    assert got.runs[1] == 5  # over budget after 3 runs (0.15 s), but at least min_runs
    got = measure({"slow": slow}, (1,), LatencyConfig(batches=(1,), runs=50, warmup=0, budget_s=0.42), clock=clock)
    assert got.runs[1] == 9  # 9 x 0.05 = 0.45 s is the first total over 0.42 s


def test_bad_configs_are_refused():
    with pytest.raises(InvalidArgumentError, match="batches must be positive"):
        LatencyConfig(batches=(0,))
    with pytest.raises(InvalidArgumentError, match="runs >= min_runs"):
        LatencyConfig(runs=3, min_runs=5)

"""Latency measurement against models whose cost is known: a forward that sleeps a fixed time."""

import time

import pytest
import torch
from torch import nn

from prunekit.errors import InvalidArgumentError
from prunekit.latency import Latency, LatencyConfig, measure


class Sleeper(nn.Module):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        time.sleep(self.seconds)
        return x


def test_medians_and_speedups_follow_the_known_costs():
    config = LatencyConfig(batches=(1, 4), runs=7, warmup=1, min_runs=5)
    got = measure({"dense": Sleeper(0.03), "fast": Sleeper(0.01)}, (1, 2, 2), config)
    assert got.runs == {1: 7, 4: 7}
    for b in (1, 4):
        assert 30 <= got.ms["dense"][b] < 45 and 10 <= got.ms["fast"][b] < 25
        assert 1.5 < got.speedup("fast", b) <= 3.0
    assert Latency.from_json(got.to_json()) == got
    assert [r["model"] for r in got.rows()] == ["dense", "fast"] and got.rows()[0]["speedup b1"] == "1.00x"


def test_a_time_budget_stops_adding_runs_after_min_runs():
    got = measure({"slow": Sleeper(0.05)}, (1,), LatencyConfig(batches=(1,), runs=50, warmup=0, budget_s=0.1))
    assert got.runs[1] == 5


def test_bad_configs_are_refused():
    with pytest.raises(InvalidArgumentError, match="batches must be positive"):
        LatencyConfig(batches=(0,))

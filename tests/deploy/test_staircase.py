"""The latency staircase: every width timed in shuffled rounds, medians, a batch sized by the layer's work."""

import itertools

import pytest
import torch
from torch import nn

from prunekit.deploy.staircase import MAX_POINTS, Staircase, StaircaseConfig, check_layer, staircase, widths
from prunekit.errors import InvalidArgumentError


class _Clock:
    """Each reading 1 ms after the last: every timed forward takes exactly 1 ms."""

    def __init__(self) -> None:
        self.ticks = itertools.count()

    def __call__(self) -> float:
        return next(self.ticks) / 1000


def test_every_width_is_timed_with_an_injected_clock():
    conv = nn.Conv2d(3, 12, 3, padding=1)
    config = StaircaseConfig(rounds=5, min_rounds=2, budget_s=1e9)
    got = staircase("conv", conv, (3, 8, 8), macs=3 * 12 * 9 * 64, config=config, clock=_Clock())
    assert got.counts == list(range(1, 13)) and got.dense == 12 and got.rounds == 5
    assert got.ms == pytest.approx([1.0] * 12)  # one tick between a forward's two readings
    assert got.batch == 64  # a tiny layer: the most the config allows
    stopped = staircase("conv", conv, (3, 8, 8), 3 * 12 * 9 * 64, StaircaseConfig(budget_s=0.0), clock=_Clock())
    assert stopped.rounds == StaircaseConfig().min_rounds  # over budget at once: the fewest rounds


def test_the_batch_fits_the_layers_work_and_wide_layers_keep_their_top_widths():
    fc = nn.Linear(16, 300)
    got = staircase("fc", fc, (16,), macs=int(1e8), config=StaircaseConfig(rounds=1, min_rounds=1, warmup=0))
    assert got.batch == 2 and got.counts == widths(300) == list(range(300 - MAX_POINTS + 1, 301))


def test_only_plain_convolutions_and_linear_layers_have_a_staircase():
    assert check_layer("c", nn.Conv2d(4, 8, 3)) == 8 and check_layer("l", nn.Linear(4, 5)) == 5
    with pytest.raises(InvalidArgumentError, match="grouped convolution"):
        check_layer("dw", nn.Conv2d(8, 8, 3, groups=8))
    with pytest.raises(InvalidArgumentError, match="BatchNorm2d"):
        check_layer("bn", nn.BatchNorm2d(8))


def test_the_widest_width_no_slower_than_the_kept_one():
    steps = Staircase("c", [5, 6, 7, 8, 9], [2.0, 3.0, 3.1, 2.9, 4.0], dense=9, batch=1, rounds=3, threads=1)
    assert steps.no_faster_than(6) == 8 and steps.no_faster_than(5) is None and steps.no_faster_than(4) is None
    assert Staircase.from_json(steps.to_json()) == steps


def test_a_staircase_leaves_the_layer_alone():
    conv = nn.Conv2d(2, 4, 3)
    before = {k: v.clone() for k, v in conv.state_dict().items()}
    staircase("c", conv, (2, 6, 6), 100, StaircaseConfig(rounds=1, min_rounds=1, warmup=0))
    assert all(torch.equal(before[k], v) for k, v in conv.state_dict().items())

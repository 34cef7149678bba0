"""A latency staircase: one layer's measured time against the number of output channels it keeps.

Fewer channels is not always faster: a CPU's vector units and a convolution library's blocking work on
4, 8 or 16 channels at once, so a width just past a multiple can cost as much as the next multiple up,
and some widths fall off the fast path altogether. The layer is rebuilt alone at each width (same input
channels, kernel, stride and padding, random weights), and every width is timed in rounds in a shuffled
order, so that a slow spell of a shared machine spreads over all of them; each figure is a median.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from prunekit.deploy.latency import Clock, machine_name
from prunekit.errors import InvalidArgumentError

MAX_POINTS = 128  # widths measured: every one up to 128 channels, the top 128 of a wider layer
TARGET_MACS = 2e8  # a forward at the dense width does about this much work (the batch is chosen for it)


@dataclass(frozen=True)
class StaircaseConfig:
    rounds: int = 9  # at most this many timed forwards per width
    min_rounds: int = 3
    warmup: int = 1  # rounds before timing
    budget_s: float = 6.0  # stop adding rounds after this long (at least ``min_rounds``)
    max_batch: int = 64

    def __post_init__(self) -> None:
        if not 1 <= self.min_rounds <= self.rounds or self.warmup < 0 or self.max_batch < 1:
            raise InvalidArgumentError(f"need 1 <= min_rounds <= rounds, warmup >= 0, max_batch >= 1; got {self}")


@dataclass(frozen=True)
class Staircase:
    """Median milliseconds of one forward of ``layer`` alone at each output width in ``counts`` (ascending)."""

    layer: str
    counts: list[int]
    ms: list[float]
    dense: int  # the layer's own width
    batch: int
    rounds: int
    threads: int
    machine: str = field(default_factory=machine_name)

    def at(self, count: int) -> float | None:
        """The measured time at ``count`` channels, or None when that width was not measured."""
        return dict(zip(self.counts, self.ms, strict=True)).get(count)

    def no_faster_than(self, count: int) -> int | None:
        """The smallest measured width above ``count`` that ran no slower than ``count`` (a wider layer at
        the same cost: where the staircase says to keep more), or None."""
        here = self.at(count)
        if here is None:
            return None
        wider = [c for c, t in zip(self.counts, self.ms, strict=True) if c > count and t <= here]
        return max(wider) if wider else None

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Staircase:
        return cls(**d)


def widths(dense: int) -> list[int]:
    """The widths a staircase measures: 1..dense, or the top :data:`MAX_POINTS` of a wider layer."""
    return list(range(max(1, dense - MAX_POINTS + 1), dense + 1))


def _rebuilt(layer: nn.Module, width: int) -> nn.Module:
    """``layer`` alone with ``width`` outputs (random weights: time depends on shapes, not values)."""
    if isinstance(layer, nn.Conv2d):
        return nn.Conv2d(
            layer.in_channels,
            width,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            bias=layer.bias is not None,
            padding_mode=layer.padding_mode,
        )
    return nn.Linear(layer.in_features, width, bias=layer.bias is not None)


def check_layer(name: str, layer: nn.Module) -> int:
    """The layer's width, or :class:`InvalidArgumentError` for one a staircase cannot rebuild alone."""
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise InvalidArgumentError(
                f"{name!r} is a grouped convolution ({layer.groups} groups): its width is tied to its groups, so it "
                "has no staircase of its own; pick a plain convolution or a linear layer"
            )
        return layer.out_channels
    if isinstance(layer, nn.Linear):
        return layer.out_features
    raise InvalidArgumentError(
        f"{name!r} is a {type(layer).__name__}: a staircase times convolutions and linear layers"
    )


@torch.inference_mode()
def staircase(
    name: str,
    layer: nn.Module,
    input_shape: tuple[int, ...],
    macs: int,
    config: StaircaseConfig | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
    clock: Clock = time.perf_counter,
) -> Staircase:
    """Time ``layer`` (a plain Conv2d or a Linear named ``name``) alone at every width of :func:`widths`, on
    random inputs of ``(batch, *input_shape)`` (``input_shape``: one image's input of the layer; ``macs``: its
    multiply-adds per image at the dense width, which sets the batch)."""
    config = config or StaircaseConfig()
    dense = check_layer(name, layer)
    counts = widths(dense)
    batch = int(max(1, min(config.max_batch, TARGET_MACS // max(1, macs))))
    x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0))
    conv = isinstance(layer, nn.Conv2d)
    if conv:
        x = x.contiguous(memory_format=memory_format)
    torch.manual_seed(0)
    layers = {c: _rebuilt(layer, c).eval() for c in counts}
    if conv:
        layers = {c: m.to(memory_format=memory_format) for c, m in layers.items()}
    times = _rounds(layers, x, config, clock)
    ms = [statistics.median(times[c]) * 1000 for c in counts]
    return Staircase(name, counts, ms, dense, batch, len(times[counts[0]]), torch.get_num_threads())


def _rounds(layers: dict[int, nn.Module], x: torch.Tensor, config: StaircaseConfig, clock: Clock) -> dict:
    order = list(layers)
    for _ in range(config.warmup):
        for m in layers.values():
            m(x)
    times: dict[int, list[float]] = {c: [] for c in layers}
    start, shuffle = clock(), random.Random(0)
    for i in range(config.rounds):
        shuffle.shuffle(order)
        for c in order:
            t0 = clock()
            layers[c](x)
            times[c].append(clock() - t0)
        if i + 1 >= config.min_rounds and clock() - start > config.budget_s:
            break
    return times

"""Measured latency: the median wall time of a forward pass, for several models measured side by side.

Variants are interleaved run by run (dense, masked, compact, dense, ...) so that a slow spell on a
shared machine hits them alike; each figure is the median of its runs after warm-up runs.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from prunekit.errors import InvalidArgumentError

UNSTRUCTURED_NOTE = (
    "Unstructured pruning zeroes weights inside dense kernels: the same multiply-adds still run on the "
    "zeros, so the measured speedup is about 1x whatever the theoretical one."
)


@dataclass(frozen=True)
class LatencyConfig:
    batches: tuple[int, ...] = (1, 64)
    runs: int = 21  # at most this many timed runs per (variant, batch)
    warmup: int = 3
    budget_s: float = 4.0  # stop adding runs to a batch size after this long (at least ``min_runs``)
    min_runs: int = 5

    def __post_init__(self) -> None:
        if not self.batches or min(self.batches) <= 0 or self.runs < self.min_runs or self.min_runs < 1:
            raise InvalidArgumentError(f"batches must be positive and runs >= min_runs >= 1, got {self}")


@dataclass
class Latency:
    """Median milliseconds per forward pass: ``ms[variant][batch]``; ``runs[batch]`` timed runs each."""

    ms: dict[str, dict[int, float]]
    runs: dict[int, int]
    threads: int
    machine: str = field(default_factory=lambda: machine_name())
    note: str | None = None  # why a variant is missing or why the speedup is ~1x

    def speedup(self, variant: str, batch: int, over: str = "dense") -> float:
        return self.ms[over][batch] / self.ms[variant][batch]

    def not_faster(self, variant: str, over: str = "dense") -> list[int]:
        """The batch sizes at which ``variant`` took at least as long as ``over``."""
        return [b for b, t in self.ms[variant].items() if t >= self.ms[over][b]]

    def rows(self) -> list[dict]:
        """One table row per variant: milliseconds and speedup over dense at each batch size."""
        return [
            {"model": variant}
            | {f"batch {b} (ms)": round(t, 3) for b, t in per.items()}
            | {f"speedup b{b}": f"{self.speedup(variant, b):.2f}x" for b in per}
            for variant, per in self.ms.items()
        ]

    def to_json(self) -> dict:
        return {
            "ms": {v: {str(b): t for b, t in per.items()} for v, per in self.ms.items()},
            "runs": {str(b): n for b, n in self.runs.items()},
            "threads": self.threads,
            "machine": self.machine,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, d: dict) -> Latency:
        ms = {v: {int(b): t for b, t in per.items()} for v, per in d["ms"].items()}
        return cls(ms, {int(b): n for b, n in d["runs"].items()}, d["threads"], d["machine"], d.get("note"))


def machine_name() -> str:
    """The CPU model and core count (latencies only compare on the same machine)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            names = [line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


Clock = Callable[[], float]  # seconds, monotonic: time.perf_counter, or a fake one in tests


@torch.inference_mode()
def measure(
    models: dict[str, nn.Module],
    input_shape: tuple[int, ...],
    config: LatencyConfig | None = None,
    clock: Clock = time.perf_counter,
) -> Latency:
    """Median latency of each model in ``models`` (eval mode, CPU or its device) on random inputs
    (batch, *input_shape), at every batch size of ``config``, timed by ``clock``."""
    config = config or LatencyConfig()
    ms: dict[str, dict[int, float]] = {name: {} for name in models}
    runs: dict[int, int] = {}
    for batch in config.batches:
        x = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(batch))
        times = _interleaved(models, x, config, clock)
        runs[batch] = len(next(iter(times.values())))
        for name, ts in times.items():
            ms[name][batch] = statistics.median(ts) * 1000
    return Latency(ms, runs, torch.get_num_threads())


def _interleaved(
    models: dict[str, nn.Module], x: torch.Tensor, config: LatencyConfig, clock: Clock
) -> dict[str, list[float]]:
    inputs = {name: x.to(next(m.parameters()).device) for name, m in models.items()}
    for _ in range(config.warmup):
        for name, m in models.items():
            m.eval()(inputs[name])
    times: dict[str, list[float]] = {name: [] for name in models}
    start = clock()
    for i in range(config.runs):
        for name, m in models.items():
            t0 = clock()
            m(inputs[name])
            _sync(inputs[name])
            times[name].append(clock() - t0)
        if i + 1 >= config.min_runs and clock() - start > config.budget_s:
            break
    return times


def _sync(x: torch.Tensor) -> None:
    if x.is_cuda:
        torch.cuda.synchronize()

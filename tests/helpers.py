"""Seeded tiny models for the engine's invariants."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from prunekit.core.data import EvalData
from prunekit.core.loaded import InputSpec, Loaded, ModelSpec
from prunekit.core.spec import Allocation, PruneConfig, PruneSpec


class TinyCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 3)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 4), 1))


class TinyResNet(nn.Module):
    """A residual add couples conv2's and shortcut's filters; a depthwise conv couples in/out."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(4)
        self.conv1 = nn.Conv2d(4, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn_dw = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)
        self.short = nn.Conv2d(4, 6, 1, bias=False)
        self.bn_s = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn_dw(self.dw(y)))
        y = self.bn2(self.conv2(y)) + self.bn_s(self.short(x))
        return self.fc(torch.relu(y).mean((2, 3)))


ROOT = Path(__file__).resolve().parent.parent
APP_SCRIPT = str(ROOT / "prunekit" / "app" / "main.py")  # the script every session runs (app.py serves it)


def page(name: str) -> str:
    """The page file ``name`` (``pages/NAME.py`` at the top of the checkout), as AppTest.switch_page takes it."""
    return str(ROOT / "pages" / f"{name}.py")


def seeded(cls: type[nn.Module], seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = cls()
    with torch.no_grad():  # non-trivial BN statistics so BN-based criteria differ from uniform
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def tiny_loaded(cls: type[nn.Module], seed: int = 0, n: int = 64) -> Loaded:
    model = seeded(cls, seed)
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    data = EvalData(
        "tiny",
        torch.randn(n, 1, 8, 8, generator=gen),
        torch.randint(0, 3, (n,), generator=gen),
        ("a", "b", "c"),
        "random",
    )
    return Loaded(
        cls.__name__, model, InputSpec((1, 8, 8), (0.0,), (1.0,)), lambda: data, data.classes, {}, True, "test"
    )


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


TINY = {"TinyCNN": TinyCNN, "TinyResNet": TinyResNet}


def load_tiny(name: str, seed: int = 0) -> Loaded:
    """A worker-side loader (importable by name, as ``ModelSpec`` needs)."""
    return tiny_loaded(TINY[name], seed)


def load_tiny_counted(log: str) -> Loaded:
    """The tiny residual model, each load written down as one line in ``log`` (which process loads, and when)."""
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    return tiny_loaded(TinyResNet)


def load_tiny_noting_env(log: str, name: str) -> Loaded:
    """The tiny residual model, the value of environment variable ``name`` in the loading process written to
    ``log`` (what a worker's environment was when it loaded)."""
    with open(log, "a") as f:
        f.write(f"{os.environ.get(name, '<unset>')}\n")
    return tiny_loaded(TinyResNet)


class _Crashing(TinyCNN):
    """Kills its process on a forward while ``flag`` exists (removing it first when ``once``)."""

    def __init__(self, flag: str, once: bool) -> None:
        super().__init__()
        self.flag, self.once = flag, once

    def forward(self, x):
        import os

        if x.shape[0] > 8 and os.path.exists(self.flag):  # the 8-image warm-up at load passes
            if self.once:
                os.remove(self.flag)
            os._exit(3)
        return super().forward(x)


def load_crashing(flag: str, once: bool) -> Loaded:
    loaded = tiny_loaded(TinyCNN)
    model = _Crashing(flag, once)
    model.load_state_dict(loaded.model.state_dict())
    loaded.model = model.eval()
    return loaded


HANG_GUARD_S = 900.0  # far beyond any honest wait on a busy CI machine: only a hang reaches it


STEP_PAUSE_S = 0.5


def wait_until(condition: Callable[[], bool], step: Callable[[], None] | None = None, what: str = "") -> None:
    """Poll ``condition`` (calling ``step`` between polls, e.g. an AppTest rerun) until it holds. Asserts no
    duration: the guard only turns a hang into a failure that names ``what``.

    A ``step`` waits STEP_PAUSE_S first: an AppTest rerun is a whole page's work at normal priority, and rerun
    back to back it starves the niced evaluation workers it is waiting for (on 2 cores, a 20 s recovery took 100 s).
    """
    deadline = time.monotonic() + HANG_GUARD_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what or condition}")
        time.sleep(STEP_PAUSE_S if step is not None else 0.02)
        if step is not None:
            step()


def spec_of(criterion: str, structure: str, normalise: str, config: PruneConfig) -> PruneSpec:
    """The spec of a score table's (criterion, structure, normalisation) and an allocation ``config``."""
    allocation = Allocation(config.scope, normalise)
    return PruneSpec(criterion, structure, allocation, config.sparsity, config.keep_first_last, config.overrides)


TINY_SPEC = ModelSpec("tests.helpers:load_tiny", ("TinyResNet",))  # how a worker loads the tiny residual model


def wait_for(service, jobs, session: str = "t") -> dict:
    """Ask an EvalService for ``jobs`` as live full figures until every one is known; their outcomes."""
    from prunekit.service.queue import LIVE_FULL

    known: dict = {}

    def done() -> bool:
        known.update(service.request([(j, LIVE_FULL) for j in jobs], session))
        return all(v is not None for v in known.values())

    wait_until(done, what=f"jobs {jobs}")
    return known


def write_hf_weights(hub_id: str, state: dict[str, torch.Tensor], cache: Path | None = None) -> Path:
    """A Hugging Face hub cache entry of ``hub_id`` ('timm/resnet10t.c3_in1k') holding ``state`` as
    model.safetensors, laid out as huggingface_hub writes it (refs/main -> snapshots/<commit>/), in ``cache``
    (default: ``$HF_HUB_CACHE``, which tests/conftest.py points at a throw-away folder)."""
    from safetensors.torch import save_file

    cache = Path(cache or os.environ["HF_HUB_CACHE"])
    repo = cache / f"models--{hub_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    target = repo / "snapshots" / commit / "model.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(target))
    return target

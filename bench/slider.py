"""Slider-move benchmark: prunekit against torch.nn.utils.prune, side by side, in one run.

    python bench/slider.py [--models resnet50,vgg16] [--json]

A slider move, as the server does it: ``Lab.result`` at a position it has not seen (global magnitude,
unstructured): allocation, masked working copy, and every count of the page measured on the tensors;
the path test (effective sparsity, a forward and backward of the whole model) is timed apart, as the app
runs it in an evaluation worker on models over INLINE_PATHS_MACS. "masks ms" is the masked copy alone.
The peer is ``torch.nn.utils.prune.global_unstructured`` with L1Unstructured to the same sparsity on a
fresh copy (masks only, no counts). Our one-off cost (scoring + sorting) is printed too. A second table
times the accuracy refresh of each bundled model on the full test split against a bare dense forward.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prunekit.core.evaluate import DEFAULT_BATCH  # noqa: E402
from prunekit.core.lab import Lab  # noqa: E402
from prunekit.core.loaded import InputSpec, Loaded  # noqa: E402
from prunekit.core.spec import PruneConfig, PruneSpec  # noqa: E402
from prunekit.deploy.latency import machine_name  # noqa: E402
from prunekit.models import zoo  # noqa: E402

SPARSITIES = (0.3, 0.5, 0.7, 0.9)


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def torch_prune_ms(model: nn.Module, sparsity: float) -> float:
    from torch.nn.utils import prune

    fresh = copy.deepcopy(model)
    params = [(m, "weight") for m in fresh.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return _timed(lambda: prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity))


def slider_row(name: str, peer_runs: int) -> dict:
    from torchvision import models

    model = models.get_model(name, weights=None).eval()
    loaded = Loaded(name, model, InputSpec((3, 224, 224), (0.5,) * 3, (0.5,) * 3), lambda: None, (), {}, False, "bench")
    lab = Lab(loaded)
    setup_ms = _timed(lambda: lab.table("magnitude", "unstructured"))
    pruner = lab.pruner(PruneSpec("magnitude", "unstructured"))
    pruner.apply_(PruneConfig(0.1))  # first touch of the working copy's pages
    masks = [_timed(lambda s=s: pruner.apply_(PruneConfig(s))) for s in SPARSITIES for _ in range(3)]
    lab.result("magnitude", "unstructured", "none", PruneConfig(0.1), paths=False)  # the pool's copy
    moves = [_timed(lambda s=s: _move(lab, s, False)) for s in _fresh(SPARSITIES, 0.001)]
    with_paths = [_timed(lambda s=s: _move(lab, s, True)) for s in _fresh(SPARSITIES, 0.002)]
    peer = [torch_prune_ms(model, s) for s in (0.5, 0.9)[:peer_runs]]
    ours_ms, peer_ms = statistics.median(moves), statistics.median(peer)
    return {
        "model": name,
        "ours_ms": round(ours_ms, 1),
        "masks_ms": round(statistics.median(masks), 1),
        "paths_ms": round(statistics.median(with_paths), 1),
        "torch_prune_ms": round(peer_ms, 1),
        "ratio": round(peer_ms / ours_ms, 1),
        "ours_one_off_ms": round(setup_ms, 1),
    }


def _fresh(sparsities, offset: float) -> list[float]:
    """Positions nobody has asked for yet (a result is computed once per position, then looked up)."""
    return [s + offset * (k + 1) for s in sparsities for k in range(3)]


def _move(lab: Lab, sparsity: float, paths: bool) -> None:
    lab.result("magnitude", "unstructured", "none", PruneConfig(sparsity), paths=paths)


def eval_row(name: str) -> dict:
    loaded = zoo.load(name)
    data = loaded.eval_data()
    pruner = Lab(loaded).pruner(PruneSpec("magnitude", "unstructured"))
    pruner.apply_(PruneConfig(0.5))

    @torch.inference_mode()
    def bare() -> None:
        for start in range(0, len(data), DEFAULT_BATCH):
            loaded.model(data.images[start : start + DEFAULT_BATCH])

    bare()  # warm-up
    bare_ms = statistics.median(_timed(bare) for _ in range(3))
    ours_ms = statistics.median(_timed(pruner.evaluate) for _ in range(3))
    return {
        "model": name,
        "refresh_ms": round(ours_ms),
        "bare_forward_ms": round(bare_ms),
        "ratio": round(ours_ms / bare_ms, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,vgg16")
    parser.add_argument(
        "--peer-runs", type=int, default=1, help="torch.nn.utils.prune runs per model (vgg16: ~20 s each)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rows = [slider_row(m, args.peer_runs) for m in args.models.split(",")]
    evals = [eval_row(n) for n in zoo.BUNDLED if (zoo.MODELS_DIR / f"{n}.json").is_file()]
    if args.json:
        for row in rows:
            print(json.dumps({k: row[k] for k in ("model", "ours_ms", "torch_prune_ms", "ratio")}))
        return
    print(f"slider move, global magnitude, unstructured ({torch.get_num_threads()} threads, {machine_name()}; median)")
    head = ("model", "move ms", "masks ms", "+ path test ms", "torch.prune ms", "ratio", "one-off sort ms")
    print(" ".join(f"{h:>15}" for h in head))
    for r in rows:
        cells = ("model", "ours_ms", "masks_ms", "paths_ms", "torch_prune_ms", "ratio", "ours_one_off_ms")
        print(" ".join(f"{r[k]:>15}" for k in cells))
    print("\naccuracy refresh on the full 10k test split (pruned working copy vs bare dense forward)")
    print(f"{'model':18} {'refresh ms':>11} {'bare ms':>8} {'ratio':>6}")
    for r in evals:
        print(f"{r['model']:18} {r['refresh_ms']:>11} {r['bare_forward_ms']:>8} {r['ratio']:>6}")


if __name__ == "__main__":
    main()

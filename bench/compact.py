"""Compaction benchmark: theoretical against measured speedup of filter pruning, next to Torch-Pruning.

    python bench/compact.py [--models fmnist-cnn,resnet50] [--ratios 0.3,0.5,0.7] [--json]

For each model and ratio: prunekit (local L1 filters, our clusters, compacted by Torch-Pruning's
dependency graph) and Torch-Pruning's own ``MagnitudePruner`` (L1, local, the same ratio, last Linear
ignored). Theoretical speedup = dense MACs / MACs after; measured = dense latency / compacted latency
(median of interleaved runs, batch 1 and 64, the threads named in the header). resnet50 has no
weights offline: structure only (speed does not depend on the values).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prunekit.core.lab import Lab  # noqa: E402
from prunekit.core.profile import profile_model  # noqa: E402
from prunekit.core.spec import PruneConfig, PruneSpec  # noqa: E402
from prunekit.deploy.latency import LatencyConfig, machine_name, measure  # noqa: E402
from prunekit.models import zoo  # noqa: E402

DEFAULT_MODELS = [*zoo.BUNDLED, "resnet50"]


def torch_pruning_compact(model: nn.Module, shape: tuple[int, ...], ratio: float) -> nn.Module:
    """Torch-Pruning's MagnitudePruner (L1, local) at ``ratio``, on a copy; returns the pruned model."""
    import torch_pruning as tp

    peer = copy.deepcopy(model).eval()
    for p in peer.parameters():
        p.requires_grad_(True)
    last = [m for m in peer.modules() if isinstance(m, nn.Linear)][-1:]
    pruner = tp.pruner.MagnitudePruner(
        peer,
        torch.zeros(1, *shape),
        importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio,
        ignored_layers=last,
    )
    pruner.step()
    for p in peer.parameters():
        p.requires_grad_(False)
    return peer.eval()


def row(lab: Lab, ratio: float, latency: LatencyConfig) -> dict:
    shape, dense = lab.loaded.input_spec.shape, lab.loaded.model
    ours = lab.pruner(PruneSpec("l1", "filter")).compact(PruneConfig(ratio, "local")).model
    peer = torch_pruning_compact(dense, shape, ratio)
    macs = {name: profile_model(m, shape).total_macs for name, m in (("dense", dense), ("ours", ours), ("tp", peer))}
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in (("ours", ours), ("tp", peer))}
    lat = measure({"dense": dense, "ours": ours, "tp": peer}, shape, latency)
    out = {"model": lab.loaded.name, "ratio": ratio, "params_dense": sum(p.numel() for p in dense.parameters())}
    for name in ("ours", "tp"):
        out[f"{name}_params"] = params[name]
        out[f"{name}_theoretical"] = macs["dense"] / macs[name]
        for b in latency.batches:
            out[f"{name}_measured_b{b}"] = lat.speedup(name, b)
    for b in latency.batches:
        out[f"dense_ms_b{b}"] = lat.ms["dense"][b]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--ratios", default="0.3,0.5,0.7")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    latency = LatencyConfig(runs=15, budget_s=6.0)
    rows = []
    for name in args.models.split(","):
        lab = Lab(zoo.load(name))
        rows.extend(row(lab, float(r), latency) for r in args.ratios.split(","))
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"machine: {machine_name()}; torch {torch.__version__}, {torch.get_num_threads()} threads; CPU")
    print(
        "speedup = dense / pruned: theoretical from MACs, measured from median latency (b1 = batch 1, b64 = batch 64)"
    )
    head = "| model | ratio | dense ms b1 / b64 | prunekit params | prunekit theor. | prunekit meas. b1 / b64 | Torch-Pruning params | TP theor. | TP meas. b1 / b64 |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    for r in rows:
        print(
            f"| {r['model']} | {r['ratio']:.0%} | {r['dense_ms_b1']:.2f} / {r['dense_ms_b64']:.1f} | {r['ours_params']:,} "
            f"| {r['ours_theoretical']:.2f}x | {r['ours_measured_b1']:.2f}x / {r['ours_measured_b64']:.2f}x "
            f"| {r['tp_params']:,} | {r['tp_theoretical']:.2f}x | {r['tp_measured_b1']:.2f}x / {r['tp_measured_b64']:.2f}x |"
        )


if __name__ == "__main__":
    main()

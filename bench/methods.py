"""The methods side by side: top-1, cost in steps and seconds, per method and sparsity, on one budget.

    python bench/methods.py [--model fmnist-cnn] [--sparsities 0.8,0.9,0.95] [--epochs 1] [--train-images N]
                            [--methods ft,lth,...] [--json out.json]

Every method's final training is the same budget (``--epochs`` over the training images); the table adds what
each spent before it (the lottery ticket's replay and rounds, rewinding's rounds). Top-1 is on the whole
Fashion-MNIST test split with its 95% Wilson interval; the last lines say at which sparsities the lottery ticket
beats its random re-initialisation by more than the two intervals allow. The machine and threads are named.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prunekit.core.evaluate import interval_label  # noqa: E402
from prunekit.core.lab import Lab  # noqa: E402
from prunekit.deploy.latency import machine_name  # noqa: E402
from prunekit.deploy.methods import METHODS, train_sparse  # noqa: E402
from prunekit.deploy.training import Budget  # noqa: E402
from prunekit.errors import PrunekitError  # noqa: E402
from prunekit.models import zoo  # noqa: E402


def run(model: str, methods: list[str], sparsities: list[float], budget: Budget) -> list[dict]:
    lab = Lab(zoo.load(model))
    rows = []
    for sparsity in sparsities:
        for name in methods:
            started = time.perf_counter()
            try:
                result = train_sparse(lab, name, sparsity, budget)
            except PrunekitError as exc:
                rows.append({"method": name, "sparsity": sparsity, "error": str(exc)})
                print(f"{name:11} {sparsity:.0%}  n/a: {exc}", flush=True)
                continue
            acc = result.accuracy
            row = {**result.to_json(), "interval": list(acc.interval()), "wall_s": time.perf_counter() - started}
            rows.append(row)
            print(
                f"{name:11} {sparsity:.0%}  top-1 {acc.top1:.2%} ({interval_label(acc.top1, acc.n)})  "
                f"weights removed {result.weight_sparsity:.1%}  {result.steps:,} steps  {result.seconds:.0f} s",
                flush=True,
            )
    return rows


def ticket_lines(rows: list[dict]) -> list[str]:
    """Where the lottery ticket beats its random re-initialisation (intervals apart), where it does not."""
    lines = []
    by = {(r["method"], r["sparsity"]): r for r in rows if "error" not in r}
    for s in sorted({r["sparsity"] for r in rows}):
        ticket, control = by.get(("lth", s)), by.get(("lth-reinit", s))
        if not ticket or not control:
            continue
        gap = ticket["accuracy"] - control["accuracy"]
        apart = ticket["interval"][0] > control["interval"][1] or control["interval"][0] > ticket["interval"][1]
        verdict = "beats" if gap > 0 and apart else "loses to" if gap < 0 and apart else "is within the intervals of"
        lines.append(f"at {s:.0%} the lottery ticket {verdict} its random re-initialisation ({100 * gap:+.2f} points)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fmnist-cnn")
    parser.add_argument("--sparsities", default="0.8,0.9,0.95")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--train-images", type=int, default=None)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    budget = Budget(args.epochs, args.train_images)
    methods = [m for m in args.methods.split(",") if m]
    sparsities = [float(s) for s in args.sparsities.split(",")]
    print(f"# {args.model}, budget {budget}, on {machine_name()} ({torch.get_num_threads()} threads)", flush=True)
    rows = run(args.model, methods, sparsities, budget)
    print("\n".join(ticket_lines(rows)))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_name(), "model": args.model, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

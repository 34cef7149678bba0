"""What a model costs the server, estimated before loading against measured: the check of prunekit.service.memory.

    python bench/memory.py [--models resnet18,vgg16,...] [--json]

Each model runs in a fresh Python process that does what the server does when a session opens it and moves
the slider once: load it (structure only where no weights are cached), profile it, and compute both scopes'
pruning results at 50% (magnitude, unstructured; the path test inline where the app runs it inline). The
process's resident memory (RSS, /proc) is read after importing prunekit and after that work, and its peak; the
difference is what the server holds for the model. Beside it: ``footprint(params)``, the estimate the server's
budget uses before it loads anything. The estimate should be at or above the measured RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT = "fmnist-vgg,resnet50,vgg16,efficientnet_b4,regnet_y_16gf,convnext_base,wide_resnet101_2"

CHILD = """
import json, resource, torch
torch.set_num_threads(1)
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * __import__('os').sysconf('SC_PAGE_SIZE')
from prunekit.core.lab import Lab
from prunekit.core.spec import COMPARED_SCOPES, PruneSpec
from prunekit.models import zoo
before = rss()
lab = Lab(zoo.load({name!r}))
lab.profile
inline = lab.paths_inline or lab.probe_unavailable is not None
for scope in COMPARED_SCOPES:
    lab.result(PruneSpec(sparsity=0.5).with_scope(scope), paths=inline)
after = rss()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(dict(params=lab.profile.total_params, held=after - before, peak=peak - before, inline=inline)))
"""


def measure(name: str) -> dict:
    code = CHILD.format(name=name)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode != 0:
        return {"model": name, "error": out.stderr.strip().splitlines()[-1]}
    return {"model": name, **json.loads(out.stdout.strip().splitlines()[-1])}


def main() -> None:
    from prunekit.service.memory import GB, footprint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        row = measure(name)
        if "params" in row:
            row["estimate"] = footprint(row["params"])
        rows.append(row)
        if not args.json:
            print(_line(row, GB), flush=True)
    if args.json:
        print(json.dumps({"machine": platform.node(), "cpus": os.cpu_count(), "rows": rows}, indent=1))


def _line(row: dict, gb: int) -> str:
    if "error" in row:
        return f"| {row['model']} | error: {row['error']} |"
    return (
        f"| {row['model']} | {row['params'] / 1e6:.1f}M | {row['held'] / gb:.2f} GB | {row['peak'] / gb:.2f} GB | "
        f"{row['estimate'] / gb:.2f} GB | {row['estimate'] / max(row['held'], 1):.2f} | "
        f"{'inline' if row['inline'] else 'in a worker'} |"
    )


if __name__ == "__main__":
    print("| model | parameters | held after one move (RSS) | peak | estimate | estimate / held | path test |")
    print("|---|---|---|---|---|---|---|")
    main()

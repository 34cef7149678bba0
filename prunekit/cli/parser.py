"""The command line's parser: every subcommand, its options and how their values are checked (bad ones exit 2
with one line naming the value)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from prunekit.core.budget import TARGETS
from prunekit.core.importance import CRITERIA
from prunekit.core.spec import (
    ALLOCATIONS,
    KNOB_STRUCTURES,
    NORMALISATIONS,
    ROUND_TO_CHOICES,
    SCOPES,
    STRUCTURES,
    Structure,
    check_sparsity,
    get_allocation,
)
from prunekit.deploy.methods import METHODS
from prunekit.deploy.recover import SCHEDULES
from prunekit.errors import InvalidArgumentError
from prunekit.models import imagenette
from prunekit.service.evaluation import RAY_ENV
from prunekit.service.jobs import ESTIMATE_IMAGES


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _sparsity(text: str) -> float:
    try:
        return check_sparsity(float(text))
    except (ValueError, InvalidArgumentError):
        raise argparse.ArgumentTypeError(f"sparsity must be a number in [0, 1), got {text!r}") from None


def _sparsity_list(text: str) -> list[float]:
    return [_sparsity(part) for part in text.split(",") if part.strip()]


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="a name from the zoo (prunekit list), or --model-def for your own")
    p.add_argument("--download", action="store_true", help="let torchvision or timm download missing weights (online)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    own = p.add_argument_group("your own model (instead of MODEL)")
    own.add_argument(
        "--model-def", metavar="MODULE:FUNCTION", help="a function returning your nn.Module, by import path"
    )
    own.add_argument("--weights", type=Path, metavar="FILE", help="its weights: safetensors or a state_dict")
    own.add_argument("--input-shape", type=_shape, metavar="C,H,W", help="one input's shape, e.g. 3,32,32")
    own.add_argument(
        "--input-mean", type=_floats, metavar="M,...", help="per-channel mean the images are normalised with"
    )
    own.add_argument("--input-std", type=_floats, metavar="S,...", help="per-channel std (default: ImageNet's for RGB)")
    p.add_argument(
        "--eval-folder",
        type=Path,
        default=None,
        metavar="DIR",
        help="evaluate on an ImageFolder (DIR/<class>/<image>, classes in sorted order)",
    )
    p.add_argument(
        "--imagenette",
        action="store_true",
        help="evaluate an ImageNet model on Imagenette's validation images (after `prunekit data imagenette`)",
    )


def _shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"an input shape is C,H,W with positive integers, got {text!r}")
    return shape


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _add_prune_options(p: argparse.ArgumentParser) -> None:
    _add_recipe(p)
    p.add_argument("--eval-limit", type=int, default=None, help="score only the first N eval images (an estimate)")


def _add_recipe(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allocation",
        choices=list(ALLOCATIONS),
        default=None,
        help="how much to prune where (docs/methods.md); default global",
    )
    p.add_argument("--scope", choices=SCOPES, default=None, help="the older spelling: --scope global|local|erk")
    p.add_argument("--criterion", choices=list(CRITERIA), default="magnitude")
    p.add_argument("--structure", choices=STRUCTURES, type=Structure, default=Structure.UNSTRUCTURED)
    p.add_argument("--normalise", choices=list(NORMALISATIONS), default=None, help="score normalisation (default none)")
    p.add_argument("--keep-first-last", action="store_true", help="keep the first and last layer dense")
    p.add_argument(
        "--round-to",
        type=int,
        choices=ROUND_TO_CHOICES,
        default=1,
        help="filters: keep channel counts to multiples of this (SIMD-friendly widths; 1: any count)",
    )


def _add_fan_out(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--eval-limit", type=int, default=None, help="score a stratified subset of about N eval images (an estimate)"
    )
    _add_backend(p)


def _add_backend(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--ray",
        default=os.environ.get(RAY_ENV) or None,
        metavar="ADDRESS",
        help=f"run the points as Ray tasks: host:port, auto, or local (a private instance); default ${RAY_ENV}",
    )
    p.add_argument(
        "--workers", type=int, default=0, help="run the points on N local worker processes (0: in this process)"
    )
    p.add_argument("--shard-size", type=int, default=1000, metavar="N", help="images per shard of --eval-folder")


def _add_sweep_options(p: argparse.ArgumentParser) -> None:
    _add_recipe(p)
    _add_fan_out(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="prunekit", description="prunekit: profile and prune pretrained CNNs")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("list", help="list the models").add_argument("--json", action="store_true")
    _add_data(sub)
    _add_app(sub)
    _add_model(sub.add_parser("profile", help="per-layer params and MACs"))
    for add in (
        _add_prune,
        _add_sweep,
        _add_export,
        _add_recover,
        _add_train_sparse,
        _add_sensitivity,
        _add_plan,
        _add_forget,
        _add_oracle,
    ):
        add(sub)
    return parser


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="download an evaluation set into the cache folder (Imagenette)")
    p.add_argument("dataset", choices=["imagenette"], help="Imagenette: 3,925 ImageNet validation images, 10 classes")
    p.add_argument("--size", choices=list(imagenette.SIZES), default="160", help="shorter image side (default 160)")
    p.add_argument("--json", action="store_true")


def _add_app(sub) -> None:
    app = sub.add_parser(
        "app",
        help="start the browser lab (any further options go to streamlit run, e.g. --server.port 8502)",
        description="Start the browser lab on the embedded default model. Options this parser does not know "
        "(--server.port, --server.address, ...) are passed to `streamlit run`.",
    )
    app.add_argument(
        "--eval-folder",
        type=Path,
        metavar="DIR",
        help="offer this ImageFolder as evaluation data (DIR/<class>/<image>, or ImageNet WNID folders)",
    )
    app.add_argument(
        "--models",
        metavar="PATTERNS",
        help="offer only these models: comma-separated names or patterns, e.g. 'fmnist-*,resnet18,resnet50' "
        "(the default model is always offered)",
    )
    app.add_argument(
        "--memory-gb",
        type=float,
        metavar="GB",
        help="memory budget for the models the server holds (default: a third of this machine's); least recently "
        "used models are dropped to stay within it, and a model larger than it is refused",
    )
    app.add_argument(
        "--trusted",
        action="store_true",
        help="also accept whole pickled models and TorchScript uploads (loading them runs code: your own files only)",
    )


def _add_prune(sub) -> None:
    prune = sub.add_parser("prune", help="prune to one sparsity")
    _add_model(prune)
    _add_prune_options(prune)
    prune.add_argument("--sparsity", type=_sparsity, required=True)
    prune.add_argument("--eval", action="store_true", help="also measure dense and pruned accuracy")


def _add_sweep(sub) -> None:
    sweep = sub.add_parser("sweep", help="accuracy and collapse against sparsity")
    _add_model(sweep)
    _add_sweep_options(sweep)
    sweep.add_argument("--sparsities", type=_sparsity_list, default=[0.1, 0.3, 0.5, 0.7, 0.9])


def _add_export(sub) -> None:
    export = sub.add_parser("export", help="compact, time and write masks, ratios, snippet, safetensors, ONNX")
    _add_model(export)
    _add_prune_options(export)
    export.set_defaults(structure=Structure.FILTER, criterion="l1")
    export.add_argument("--sparsity", type=_sparsity, required=True)
    export.add_argument("--out", type=Path, required=True, help="folder to write the files into")


def _add_recover(sub) -> None:
    recover = sub.add_parser("recover", help="BN recalibration and a masked fine-tune after pruning")
    _add_model(recover)
    _add_prune_options(recover)
    recover.add_argument("--sparsity", type=_sparsity, required=True)
    recover.add_argument("--bn-recalibrate", type=int, default=1024, metavar="N", help="training images (0: skip)")
    recover.add_argument("--finetune-epochs", type=float, default=1.0, metavar="E", help="0: skip the fine-tune")
    recover.add_argument("--train-images", type=int, default=None, help="fine-tune on N training images (default all)")
    recover.add_argument("--schedule", choices=list(SCHEDULES), default="one-shot")
    recover.add_argument("--steps", type=int, default=1, help="pruning steps of an iterative or AGP schedule")
    recover.add_argument("--lr", type=float, default=1e-3)


def _add_train_sparse(sub) -> None:
    ts = sub.add_parser(
        "train-sparse", help="reach a sparsity by a training method (lottery ticket, rewinding, SNIP, RigL, ...)"
    )
    _add_model(ts)
    ts.add_argument("--method", choices=list(METHODS), required=True, help="; ".join(
        f"{m.name}: {m.title} ({m.paper})" for m in METHODS.values()))  # fmt: skip
    ts.add_argument(
        "--sparsity", type=_sparsity, required=True, help="fraction of the weights removed (slimming: channels)"
    )
    ts.add_argument("--epochs", type=float, default=1.0, help="the final training's epochs, the same for every method")
    ts.add_argument("--train-images", type=int, default=None, help="train on N training images (default all)")
    ts.add_argument("--batch-size", type=int, default=128)
    ts.add_argument("--rounds", type=int, default=3, help="rounds of iterative magnitude pruning (lth, lrr)")
    ts.add_argument("--rewind-step", type=int, default=200, help="the lottery ticket's theta_k (0: theta_0)")
    ts.add_argument("--out", type=Path, required=True, help="folder for model.safetensors, masks.pt, result.json")


def _add_sensitivity(sub) -> None:
    sens = sub.add_parser("sensitivity", help="prune one layer at a time")
    _add_model(sens)
    sens.add_argument("--criterion", choices=list(CRITERIA), default="magnitude")
    sens.add_argument("--structure", choices=KNOB_STRUCTURES, type=Structure, default=Structure.UNSTRUCTURED)
    sens.add_argument("--sparsities", type=_sparsity_list, default=[0.3, 0.6, 0.9])
    _add_fan_out(sens)


def _add_forget(sub) -> None:
    p = sub.add_parser("forget", help="per-class damage, flipped images and McNemar's test, dense against pruned")
    _add_model(p)
    p.add_argument("--sparsity", type=_sparsity, required=True)
    _add_recipe(p)
    _add_backend(p)
    p.set_defaults(eval_limit=None)  # the whole evaluation set, always


def _add_oracle(sub) -> None:
    p = sub.add_parser(
        "oracle", help="every filter's true importance (loss increase when removed alone) and each criterion against it"
    )
    _add_model(p)
    p.add_argument(
        "--images", type=int, default=None, help="a stratified subset of N evaluation images (default: the whole split)"
    )
    p.add_argument("--criteria", type=lambda s: [c for c in s.split(",") if c], default=None, help="e.g. l1,taylor")
    _add_backend(p)


def _add_plan(sub) -> None:
    p = sub.add_parser("plan", help="per-layer sparsities that meet a budget with the least predicted drop")
    _add_model(p)
    p.add_argument(
        "--target",
        required=True,
        metavar="KIND=X",
        help="; ".join(f"{k}=X: {v}" for k, v in TARGETS.items()),
    )
    p.add_argument("--criterion", choices=[n for n, c in CRITERIA.items() if c.weight], default="magnitude")
    p.add_argument(
        "--sparsities",
        type=_sparsity_list,
        default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95],
        help="the scan's grid per layer (dense is always an option)",
    )
    _add_fan_out(p)
    p.set_defaults(eval_limit=ESTIMATE_IMAGES)


def resolve_allocation(args) -> None:
    """Spell the recipe as (scope, normalise) whichever way it was given; --allocation must agree with both."""
    if not hasattr(args, "scope"):
        return
    if args.allocation is None:
        args.scope, args.normalise = args.scope or "global", args.normalise or "none"
        return
    method = get_allocation(args.allocation)
    clash = [
        f"--{flag} {given}"
        for flag, given, meant in (("scope", args.scope, method.scope), ("normalise", args.normalise, method.normalise))
        if given not in (None, meant)
    ]
    if clash:
        raise InvalidArgumentError(
            f"--allocation {method.name} is scope '{method.scope}' on '{method.normalise}' scores: "
            f"it does not go with {' and '.join(clash)}"
        )
    args.scope, args.normalise = method.scope, method.normalise

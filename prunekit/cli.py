"""``prunekit list|profile|prune|sweep|sensitivity|export|recover MODEL ... [--json]`` and ``prunekit app``
(also ``python -m prunekit ...``).

Bad arguments exit 2 with one line naming the bad value; an unknown model lists the known ones.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from prunekit import tasks
from prunekit.core.budget import TARGETS, Target
from prunekit.core.evaluate import Accuracy, interval_label
from prunekit.core.importance import CRITERIA
from prunekit.core.lab import Lab, PruneResult
from prunekit.core.spec import (
    ALLOCATIONS,
    KNOB_STRUCTURES,
    NORMALISATIONS,
    SCOPES,
    STRUCTURES,
    Allocation,
    Normalisation,
    PruneSpec,
    Scope,
    Structure,
    allocation_of,
    check_sparsity,
    get_allocation,
)
from prunekit.deploy.export import report_lines
from prunekit.deploy.recover import SCHEDULES, Recipe
from prunekit.errors import InvalidArgumentError, PrunekitError, UntrainedModelError
from prunekit.models import custom, zoo
from prunekit.service.evaluation import RAY_ENV
from prunekit.service.fanout import (
    Backend,
)
from prunekit.service.jobs import ESTIMATE_IMAGES
from prunekit.service.store import ResultStore


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
    p.add_argument("--download", action="store_true", help="let torchvision download missing weights (online)")
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
    _add_app(sub)
    _add_model(sub.add_parser("profile", help="per-layer params and MACs"))
    for add in (_add_prune, _add_sweep, _add_export, _add_recover, _add_sensitivity, _add_plan, _add_forget):
        add(sub)
    return parser


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


def _resolve_allocation(args) -> None:
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


def _result_json(result: PruneResult) -> dict:
    out = result.to_json()
    method = allocation_of(result.scope, result.normalise)
    out["allocation"] = method.name if method else None
    out["layers"] = [
        {k: row[k] for k in ("name", "type", "params", "macs", "sparsity", "effective_sparsity")}
        for row in out["layers"]
    ]
    return out


def _require_trained(loaded: zoo.Loaded) -> None:
    if not loaded.pretrained:
        raise UntrainedModelError(
            f"model {loaded.name!r} is untrained (no cached weights), so its accuracy means nothing; "
            "use --download when online or put the weights in the torch hub cache"
        )


def cmd_list(args) -> tuple[object, str]:
    rows = zoo.list_models()
    data = [r.__dict__ for r in rows]
    status = {True: "pretrained", False: "untrained"}
    lines = [
        f"{r.name:28} {r.family:18} {r.dataset:14} {r.params or 0:>12,}  {status[r.pretrained]}  {r.note}" for r in rows
    ]
    return data, "\n".join(lines)


def cmd_profile(args) -> tuple[object, str]:
    lab = _load(args)
    prof = lab.profile
    data = {
        "model": lab.loaded.name,
        "input_shape": list(prof.input_shape),
        "convention": prof.convention,
        "layers": [
            {
                "name": x.name,
                "type": x.kind,
                "input_shape": list(x.input_shape),
                "output_shape": list(x.output_shape),
                "params": x.params,
                "macs": x.macs,
            }
            for x in prof.layers
        ],
        "total_params": prof.total_params,
        "total_macs": prof.total_macs,
        "total_flops": 2 * prof.total_macs,
        "conv_params": prof.conv_params,
        "conv_macs": prof.conv_macs,
        "pretrained": lab.loaded.pretrained,
    }
    lines = [f"{x.name:40} {x.kind:12} {x.params:>12,} {x.macs:>16,}" for x in prof.layers if x.params or x.macs]
    lines.append(f"{'total':40} {'':12} {prof.total_params:>12,} {prof.total_macs:>16,}  ({prof.convention})")
    return data, "\n".join(lines)


def _prune_one(lab: Lab, args, sparsity: float, with_eval: bool) -> dict:
    spec = _spec(args, sparsity)
    pruner = lab.pruner(spec)
    result = pruner.prune(spec)
    if with_eval:
        result.accuracy = _accuracy_fields(zoo_accuracy(lab, args.eval_limit), pruner.evaluate(limit=args.eval_limit))
    return _result_json(result)


def _accuracy_fields(dense: Accuracy, pruned: Accuracy) -> dict:
    return {
        "dense": dense.top1,
        "pruned": pruned.top1,
        "images": pruned.n,
        "estimate": pruned.is_estimate,
        "dense_interval": dense.interval(),
        "pruned_interval": pruned.interval(),
    }


def zoo_accuracy(lab: Lab, limit: int | None):
    from prunekit.core.evaluate import accuracy

    return accuracy(lab.loaded.model, lab.loaded.eval_data(), limit=limit)


def _effective(d: dict) -> str:
    return f"{d['effective_sparsity']:.3f}" if d["effective_sparsity"] is not None else f"n/a ({d['probe_note']})"


def _summary(d: dict) -> str:
    acc = d.get("accuracy")
    acc_text = ""
    if acc:
        acc_text = (
            f"  accuracy {acc['dense']:.2%} -> {acc['pruned']:.2%}, {interval_label(acc['pruned'], acc['images'])}"
        )
        acc_text += (
            f" (estimate from {acc['images']:,} images)" if acc["estimate"] else ""
        )  # the interval names the count
    return (
        f"sparsity {d['sparsity']:.3f} ({d['scope']}, {d['criterion']}, {d['structure']}): "
        f"achieved {d['achieved_sparsity']:.3f}, "
        f"effective {_effective(d)}, compression {d['compression_ratio']:.2f}x, "
        f"speedup {d['theoretical_speedup'] or float('inf'):.2f}x, collapse {d['collapse']}{acc_text}"
    )


def cmd_prune(args) -> tuple[object, str]:
    lab = _load(args)
    if args.eval:
        _require_trained(lab.loaded)
    data = _prune_one(lab, args, args.sparsity, args.eval)
    lines = [f"{r['name']:40} {r['type']:8} {r['params']:>10,} sparsity {r['sparsity']:.3f}" for r in data["layers"]]
    return data, "\n".join([*lines, _summary(data)])


def _load(args) -> tasks.Lab:
    """The zoo's MODEL, or your own (--model-def), evaluated on --eval-folder when given."""
    if args.eval_folder is not None and getattr(args, "eval_limit", None) is not None:
        raise InvalidArgumentError("--eval-limit and --eval-folder do not go together: a folder is scored whole")
    if args.model_def is not None:
        return tasks.Lab(custom.from_definition(_definition(args)))
    own = [
        f"--{k.replace('_', '-')}" for k in ("weights", "input_shape", "input_mean", "input_std") if getattr(args, k)
    ]
    if args.model is None or own:
        raise InvalidArgumentError(
            f"{', '.join(own)} go with --model-def" if own and args.model else "name a MODEL or give --model-def"
        )
    return tasks.load(args.model, args.download, args.eval_folder)


def _definition(args) -> custom.Definition:
    if args.model is not None:
        raise InvalidArgumentError(f"give MODEL ({args.model!r}) or --model-def, not both")
    if args.input_shape is None or args.eval_folder is None:
        raise InvalidArgumentError(
            "--model-def needs --input-shape C,H,W and --eval-folder DIR (your evaluation images)"
        )
    if (args.input_mean is None) != (args.input_std is None):
        raise InvalidArgumentError("--input-mean and --input-std go together")
    norm = None if args.input_mean is None else (args.input_mean, args.input_std)
    weights = None if args.weights is None else str(args.weights)
    return custom.Definition(args.model_def, args.input_shape, str(args.eval_folder), weights, norm, os.getcwd())


def _run(args) -> tasks.RunOptions:
    """Where ``--ray``/``--workers`` say the points run (an ImageFolder in shards), with a progress bar."""
    backend = Backend(args.ray, args.workers, ResultStore() if args.ray or args.workers else None)
    return tasks.RunOptions(backend, args.shard_size, _progress_bar)


def _progress_bar(done: int, total: int) -> None:
    filled = round(30 * done / max(total, 1))
    end = "\n" if done == total else ""
    print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{total} points", end=end, file=sys.stderr, flush=True)


def _spec(args, sparsity: float = 0.0) -> PruneSpec:
    """The spec the options give (a command without --scope or --normalise prunes globally on raw scores)."""
    allocation = Allocation(getattr(args, "scope", Scope.GLOBAL), getattr(args, "normalise", Normalisation.NONE))
    return PruneSpec(args.criterion, args.structure, allocation, sparsity, getattr(args, "keep_first_last", False))


def cmd_sweep(args) -> tuple[object, str]:
    lab = _load(args)
    _require_trained(lab.loaded)
    report = lab.sweep(_spec(args), args.sparsities, args.eval_limit, _run(args))
    rows = []
    for result, (dense, pruned) in zip(report.results, report.accuracies, strict=True):
        result.accuracy = _accuracy_fields(dense, pruned)
        rows.append(_result_json(result))
    point, note = report.collapse_point, report.probe_note
    data = {"model": lab.loaded.name, "collapse_point": point, "probe_note": note, "results": rows}
    return data, "\n".join([_summary(r) for r in rows] + [note or f"collapse first at sparsity {point}"])


def cmd_sensitivity(args) -> tuple[object, str]:
    lab = _load(args)
    _require_trained(lab.loaded)
    scan = lab.sensitivity(args.criterion, args.structure, args.sparsities, args.eval_limit, _run(args))
    rows = [{**row.__dict__, "drop": row.drop} for row in scan]
    lines = [
        f"{r['layer']:40} {r['sparsity']:.2f} accuracy {r['accuracy']:.2%} (drop {r['drop']:+.2%}; "
        f"{interval_label(r['accuracy'], r['images'])})"
        for r in rows
    ]
    return {"model": lab.loaded.name, "results": rows}, "\n".join(lines)


def cmd_plan(args) -> tuple[object, str]:
    lab = _load(args)
    _require_trained(lab.loaded)
    report = lab.plan(Target.parse(args.target), args.criterion, args.sparsities, args.eval_limit, _run(args))
    data = report.to_json()
    return data, "\n".join(_plan_lines(data))


def _plan_lines(d: dict) -> list[str]:
    acc, scan = d["accuracy"], d["scan"]
    lines = [f"{name:40} sparsity {s:.2f}" for name, s in d["plan"].items()]
    lines.append(
        f"target {d['target']} {'met' if d['met'] else 'NOT met'}: MACs left {d['macs_ratio']:.1%}, "
        f"parameters left {d['params_ratio']:.1%}"
    )
    lines.append(
        f"accuracy: dense {acc['dense']:.2%}, predicted {acc['predicted']:.2%} (dense less the scan's drops, added up; "
        f"scan on {scan['images']:,} images), measured {acc['measured']:.2%} ({interval_label(acc['measured'], acc['images'])})"
    )
    return lines


def cmd_forget(args) -> tuple[object, str]:
    lab = _load(args)
    _require_trained(lab.loaded)
    report = lab.forget(_spec(args, args.sparsity), _run(args))
    data = {"model": lab.loaded.name, "sparsity": args.sparsity, "scope": args.scope, **report.to_json()}
    return data, "\n".join(_forget_lines(report))


def _forget_lines(report) -> list[str]:
    lines = [
        f"{report.classes[k]:24} {report.dense_per_class[k]:7.2%} -> {report.pruned_per_class[k]:7.2%} "
        f"({100 * report.change[k]:+.2f} points)"
        for k in report.worst_first()
    ]
    t = report.test
    lines.append(f"flipped: {t.b} lost (dense right, pruned wrong), {t.c} gained; McNemar's exact test p = {t.p:.3g}")
    return lines


def cmd_export(args) -> tuple[object, str]:
    lab = _load(args)
    exported = lab.export(_spec(args, args.sparsity), args.out)
    report, paths = exported.report, exported.files
    data = {**report, "files": {name: str(path) for name, path in paths.items()}}
    return data, "\n".join(report_lines(report) + [f"wrote {', '.join(paths)} to {args.out}"])


def cmd_recover(args) -> tuple[object, str]:
    lab = _load(args)
    _require_trained(lab.loaded)
    recipe = Recipe(
        bn_images=args.bn_recalibrate,
        epochs=args.finetune_epochs,
        train_images=args.train_images,
        schedule=args.schedule,
        steps=args.steps,
        lr=args.lr,
    )
    result = lab.recover(_spec(args, args.sparsity), recipe, _progress_line)
    print(file=sys.stderr)
    data = {"model": lab.loaded.name, "sparsity": args.sparsity, "recipe": asdict(recipe), **result.to_json()}
    data["intervals"] = {k: v.interval() for k, v in result.accuracy.items() if v}
    lines = [f"{k:13} {'skipped' if v is None else interval_label(v.top1, v.n)}" for k, v in result.accuracy.items()]
    return data, "\n".join([*lines, f"{result.train_images:,} training images, {result.seconds:.0f} s"])


def _progress_line(r) -> bool:
    if r.total_steps:
        last = f", estimate {r.curve[-1].top1:.2%}" if r.curve else ""
        print(f"\rfine-tune step {r.step}/{r.total_steps}{last}   ", end="", file=sys.stderr, flush=True)
    return True


COMMANDS: dict[str, Callable] = {
    "export": cmd_export,
    "recover": cmd_recover,
    "list": cmd_list,
    "profile": cmd_profile,
    "prune": cmd_prune,
    "sweep": cmd_sweep,
    "sensitivity": cmd_sensitivity,
    "plan": cmd_plan,
    "forget": cmd_forget,
}


def run_app(args: argparse.Namespace, streamlit_args: list[str]) -> int:
    """Serve the lab in this process until it is stopped (Ctrl-C)."""
    from prunekit.app import serve  # noqa: PLC0415 - streamlit loads only for this command
    from prunekit.app.resources import EVAL_FOLDER_ENV  # noqa: PLC0415
    from prunekit.models.checkpoints import TRUSTED_ENV  # noqa: PLC0415

    if args.trusted:
        os.environ[TRUSTED_ENV] = "1"
    if args.eval_folder is not None:
        if not args.eval_folder.is_dir():
            raise InvalidArgumentError(f"--eval-folder {str(args.eval_folder)!r} is not a directory")
        os.environ[EVAL_FOLDER_ENV] = str(args.eval_folder.resolve())
    return serve.main(["--server.headless", "true", "--browser.gatherUsageStats", "false", *streamlit_args])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "app":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "app":
            return run_app(args, extra)
        _resolve_allocation(args)
        data, text = COMMANDS[args.command](args)
    except PrunekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(data, indent=1, default=float) if args.json else text)
    return 0

"""What each subcommand does: its arguments turned into a lab and a spec, one call of the use-case layer
(``prunekit.tasks``), and the result as (JSON data, text) for ``render`` to print."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict

from prunekit import tasks
from prunekit.cli import render
from prunekit.core.budget import Target
from prunekit.core.evaluate import Accuracy, accuracy, interval_label
from prunekit.core.lab import Lab
from prunekit.core.spec import Allocation, Normalisation, PruneSpec, Scope
from prunekit.deploy.export import report_lines
from prunekit.deploy.methods import Budget, write_result
from prunekit.deploy.recover import Recipe
from prunekit.errors import InvalidArgumentError, UntrainedModelError
from prunekit.models import custom, imagenette, zoo
from prunekit.progress import Bar
from prunekit.service.fanout import Backend
from prunekit.service.store import ResultStore


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
    width = max(len(r.name) for r in rows)
    lines = [
        f"{r.name:{width}} {r.family:18} {r.dataset:14} {_count(r.params):>12}  {status[r.pretrained]}  {r.note}"
        for r in rows
    ]
    return data, "\n".join(lines)


def cmd_data(args) -> tuple[object, str]:
    folder = imagenette.download(args.size)
    count = sum(1 for f in folder.rglob("*") if f.is_file())
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    data = {"dataset": "imagenette", "size": args.size, "folder": str(folder), "images": count, "classes": classes}
    text = (
        f"Imagenette ({args.size}): {count:,} validation images in {len(classes)} classes at {folder}; evaluate an "
        "ImageNet model on them with --imagenette (CLI), eval_folder=prunekit.imagenette_folder() (API), or the "
        "sidebar's Imagenette switch (app)"
    )
    return data, text


def _count(params: int | None) -> str:
    return "-" if params is None else f"{params:,}"  # timm's counts cost a build each: `prunekit profile` has it


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
        result.accuracy = render.accuracy_fields(
            zoo_accuracy(lab, args.eval_limit), pruner.evaluate(limit=args.eval_limit)
        )
    return render.result_json(result)


def zoo_accuracy(lab: Lab, limit: int | None) -> Accuracy:
    return accuracy(lab.loaded.model, lab.loaded.eval_data(), limit=limit)


def cmd_prune(args) -> tuple[object, str]:
    lab = _load(args)
    if args.eval:
        _require_trained(lab.loaded)
    data = _prune_one(lab, args, args.sparsity, args.eval)
    lines = [f"{r['name']:40} {r['type']:8} {r['params']:>10,} sparsity {r['sparsity']:.3f}" for r in data["layers"]]
    return data, "\n".join([*lines, render.summary(data)])


def _load(args) -> tasks.Lab:
    """The zoo's MODEL, or your own (--model-def), evaluated on --eval-folder when given."""
    if (args.eval_folder is not None or args.imagenette) and getattr(args, "eval_limit", None) is not None:
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
    if args.imagenette and args.eval_folder is not None:
        raise InvalidArgumentError("--imagenette and --eval-folder name two evaluation sets: give one")
    folder = imagenette.require() if args.imagenette else args.eval_folder
    return tasks.load(args.model, args.download, folder)


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
    return tasks.RunOptions(backend, args.shard_size, Bar("evaluating"))


def _spec(args, sparsity: float = 0.0) -> PruneSpec:
    """The spec the options give (a command without --scope or --normalise prunes globally on raw scores)."""
    allocation = Allocation(getattr(args, "scope", Scope.GLOBAL), getattr(args, "normalise", Normalisation.NONE))
    keep, round_to = getattr(args, "keep_first_last", False), getattr(args, "round_to", 1)
    return PruneSpec(args.criterion, args.structure, allocation, sparsity, keep, round_to=round_to)


def cmd_sweep(args) -> tuple[object, str]:
    lab = _load(args)
    _require_trained(lab.loaded)
    report = lab.sweep(_spec(args), args.sparsities, args.eval_limit, _run(args))
    rows = []
    for result, (dense, pruned) in zip(report.results, report.accuracies, strict=True):
        result.accuracy = render.accuracy_fields(dense, pruned)
        rows.append(render.result_json(result))
    point, note = report.collapse_point, report.probe_note
    data = {"model": lab.loaded.name, "collapse_point": point, "probe_note": note, "results": rows}
    return data, "\n".join([render.summary(r) for r in rows] + [note or f"collapse first at sparsity {point}"])


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
    return data, "\n".join(render.plan_lines(data))


def cmd_forget(args) -> tuple[object, str]:
    lab = _load(args)
    _require_trained(lab.loaded)
    report = lab.forget(_spec(args, args.sparsity), _run(args))
    data = {"model": lab.loaded.name, "sparsity": args.sparsity, "scope": args.scope, **report.to_json()}
    return data, "\n".join(render.forget_lines(report))


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
    result = lab.recover(_spec(args, args.sparsity), recipe, tasks.recovery_bar())
    data = {"model": lab.loaded.name, "sparsity": args.sparsity, "recipe": asdict(recipe), **result.to_json()}
    data["intervals"] = {k: v.interval() for k, v in result.accuracy.items() if v}
    lines = [f"{k:13} {'skipped' if v is None else interval_label(v.top1, v.n)}" for k, v in result.accuracy.items()]
    return data, "\n".join([*lines, f"{result.train_images:,} training images, {result.seconds:.0f} s"])


def cmd_train_sparse(args) -> tuple[object, str]:
    lab = _load(args)
    budget = Budget(args.epochs, args.train_images, args.batch_size, args.rounds, args.rewind_step)
    result = lab.train_sparse(args.method, args.sparsity, budget, tasks.method_bar())
    paths = write_result(result, lab.loaded.name, args.out)
    data = {"model": lab.loaded.name, **result.to_json(), "files": {k: str(v) for k, v in paths.items()}}
    return data, "\n".join(render.method_lines(result) + [f"wrote {', '.join(paths)} to {args.out}"])


def cmd_oracle(args) -> tuple[object, str]:
    lab = _load(args)
    _require_trained(lab.loaded)
    report = lab.oracle(args.images, args.criteria, _run(args))
    return report.to_json(), "\n".join(render.oracle_lines(report))


COMMANDS: dict[str, Callable] = {
    "export": cmd_export,
    "recover": cmd_recover,
    "train-sparse": cmd_train_sparse,
    "list": cmd_list,
    "data": cmd_data,
    "profile": cmd_profile,
    "prune": cmd_prune,
    "sweep": cmd_sweep,
    "sensitivity": cmd_sensitivity,
    "plan": cmd_plan,
    "forget": cmd_forget,
    "oracle": cmd_oracle,
}

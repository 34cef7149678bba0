"""``prunekit list|profile|prune|sweep|sensitivity|plan|forget|oracle|export|recover MODEL ... [--json]`` and
``prunekit app`` (also ``python -m prunekit ...``): ``parser`` reads the arguments, ``commands`` runs the use case,
``render`` prints it.

Bad arguments exit 2 with one line naming the bad value; an unknown model lists the known ones.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from prunekit.cli.commands import COMMANDS
from prunekit.cli.parser import build_parser, resolve_allocation
from prunekit.errors import InvalidArgumentError, PrunekitError

__all__ = ["build_parser", "main"]


def run_app(args: argparse.Namespace, streamlit_args: list[str]) -> int:
    """Serve the lab in this process until it is stopped (Ctrl-C)."""
    from prunekit.app import entry  # noqa: PLC0415 - streamlit loads only for this command
    from prunekit.app.server_state import EVAL_FOLDER_ENV, MODELS_ENV, offered_models  # noqa: PLC0415
    from prunekit.models.checkpoints import TRUSTED_ENV  # noqa: PLC0415
    from prunekit.service.memory import MEMORY_ENV, budget_bytes  # noqa: PLC0415

    if args.trusted:
        os.environ[TRUSTED_ENV] = "1"
    if args.eval_folder is not None:
        if not args.eval_folder.is_dir():
            raise InvalidArgumentError(f"--eval-folder {str(args.eval_folder)!r} is not a directory")
        os.environ[EVAL_FOLDER_ENV] = str(args.eval_folder.resolve())
    if args.models is not None:
        offered_models(args.models)  # a pattern that matches nothing stops here, before the server starts
        os.environ[MODELS_ENV] = args.models
    if args.memory_gb is not None:
        os.environ[MEMORY_ENV] = repr(args.memory_gb)
        budget_bytes()  # a bad budget stops here too
    return entry.run(["--server.headless", "true", "--browser.gatherUsageStats", "false", *streamlit_args])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "app":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "app":
            return run_app(args, extra)
        resolve_allocation(args)
        data, text = COMMANDS[args.command](args)
    except PrunekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(data, indent=1, default=float) if args.json else text)
    return 0

"""Where the folders that ship beside the package are: ``assets/`` (bundled checkpoints, model cards, the
Fashion-MNIST test split) and ``pages/`` (the app's page files) sit at the top of a checkout, as the design
card lays the repository out, and inside the package once installed (pyproject.toml maps them to
``prunekit/assets`` and ``prunekit/pages``)."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def folder(name: str) -> Path:
    """The checkout's top-level ``name`` folder when running from a checkout (editable installs too), else
    the installed copy inside the package."""
    checkout = PACKAGE.parent / name
    if (PACKAGE.parent / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    return PACKAGE / name

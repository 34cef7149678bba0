"""How the app starts: the script every session runs (``main.py``), the warm-up that runs before the server
answers its health check (:func:`lifespan`), and :func:`run`, which ``prunekit app``, ``./dev app`` and
``prunekit.launch`` call.

The server is an ``st.App`` (Streamlit 1.67): ``app.py`` at the top of a checkout defines it, and so does
``serve.py`` beside this file for an installed package that has no checkout around it. Both wrap the same
script with the same warm-up; the pages are listed once, in ``main.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

MAIN = Path(__file__).with_name("main.py")
PAGE_MODULES = ("model", "prune", "importance", "sensitivity", "tradeoffs", "forget")


def server_file() -> Path:
    """The file that defines the server: the checkout's ``app.py``, or the installed package's ``serve.py``."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "app.py").is_file():
        return checkout / "app.py"
    return Path(__file__).with_name("serve.py")


def warm_up() -> None:
    """Everything the first page needs, before any session arrives: the page modules with what they import
    (pandas and plotly among them: two script threads importing them at once can meet a half-initialised
    module), the default model, its profile and first result, and the evaluation workers."""
    from streamlit import config  # noqa: PLC0415

    from prunekit.app import server_state  # noqa: PLC0415
    from prunekit.models import checkpoints  # noqa: PLC0415

    if not config.is_manually_set("server.maxUploadSize"):  # Streamlit refuses larger files first
        config.set_option("server.maxUploadSize", checkpoints.max_upload_mb(), "prunekit")
    importlib.import_module("pandas")
    for name in PAGE_MODULES:
        importlib.import_module(f"prunekit.app.views.{name}")
    server_state.warm()


@contextlib.asynccontextmanager
async def lifespan(_app) -> AsyncIterator[None]:
    """The server takes no connection until this has warmed up (off the event loop's thread)."""
    await asyncio.to_thread(warm_up)
    yield


def run(streamlit_args: list[str]) -> int:
    """``streamlit run`` on the server file with ``streamlit_args`` (e.g. ``--server.port 8502``), in this
    process, until it is stopped."""
    from streamlit.web import cli  # noqa: PLC0415

    sys.argv = ["streamlit", "run", str(server_file()), *streamlit_args]
    return cli.main()

"""``prunekit.launch``: the whole browser lab on the caller's own model, from a notebook or a script.

The server runs in a child process (``python -m prunekit app``), so the notebook stays free and
``stop()`` ends everything the server started. The model travels to it, and from it to the evaluation
workers, as cloudpickle bytes (:mod:`prunekit.models.custom`); this module does not import streamlit.
"""

from __future__ import annotations

import html
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import webbrowser
from dataclasses import dataclass, field
from pathlib import Path

from prunekit.core import own
from prunekit.errors import InvalidArgumentError, PrunekitError
from prunekit.models import custom


class LaunchError(PrunekitError, RuntimeError):
    """The lab's server did not come up; the message carries the end of its log."""


@dataclass
class App:
    """A running lab: open ``url``; ``stop()`` ends the server and its workers. In Jupyter, an ``App`` as a cell's
    value shows the lab inline (an iframe ``height`` pixels tall) with its URL."""

    url: str
    process: subprocess.Popen
    model_file: Path
    log_file: Path
    height: int = 800
    _stopped: bool = field(default=False, repr=False)

    def _repr_html_(self) -> str:
        url = html.escape(self.url, quote=True)
        if not self.running():
            return f"<p>prunekit lab at {url}: its server has stopped.</p>"
        return (
            f'<iframe src="{url}/?embed=true" width="100%" height="{int(self.height)}" '
            'style="border: 1px solid #ddd; border-radius: 4px" title="prunekit lab"></iframe>'
            f'<p>prunekit lab: <a href="{url}" target="_blank" rel="noopener">{url}</a> (opens in its own tab)</p>'
        )

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_ready(self, timeout: float = 300.0, poll: float = 0.25) -> App:
        """Block until the server answers its health check (it loads and profiles the model first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise LaunchError(f"the lab's server exited with code {self.process.returncode}: {self.log()}")
            if _healthy(self.url):
                return self
            time.sleep(poll)
        raise LaunchError(f"the lab's server did not answer at {self.url} within {timeout:.0f} s: {self.log()}")

    def log(self, chars: int = 2000) -> str:
        """The end of the server's output."""
        try:
            return self.log_file.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> None:
        """End the server and everything it started (its worker processes are in its process group)."""
        if self._stopped:
            return
        self._stopped = True
        if self.running():
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        self.model_file.unlink(missing_ok=True)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
            return answer.read().decode().strip() == "ok"
    except OSError:
        return False


def launch(
    model,
    example_input,
    eval_data: own.EvalSource,
    classes=None,
    train_data: own.EvalSource | None = None,
    port: int = 8501,
    open_browser: bool = False,
    address: str = "localhost",
    height: int = 800,
    **options,
) -> App:
    """Start the browser lab on ``model`` and return at once (see :meth:`App.wait_ready`).

    Arguments as :meth:`prunekit.Lab.from_model` (checked here, before anything starts); ``options`` may
    also hold ``name`` and ``normalisation``. The model and data are the caller's own, so no trust switch
    is needed; uploads through the browser stay weights-only. In a notebook the returned ``App`` shows the lab
    inline, ``height`` pixels tall.
    """
    if not 0 < int(port) < 65536:
        raise InvalidArgumentError(f"port must be in 1..65535, got {port}")
    loaded = own.from_model(model, own.OwnModel(example_input, eval_data, classes, train_data, **options))
    handle, name = tempfile.mkstemp(prefix="prunekit-model-", suffix=".pkl")
    os.close(handle)
    model_file = custom.write(loaded, Path(name))
    log_file = model_file.with_suffix(".log")
    if int(height) < 100:
        raise InvalidArgumentError(f"height is in pixels, at least 100, got {height}")
    server = _start(model_file, log_file, port, address)
    app = App(f"http://{address}:{port}", server, model_file, log_file, int(height))
    if open_browser:
        webbrowser.open(app.url)
    return app


def _start(model_file: Path, log_file: Path, port: int, address: str) -> subprocess.Popen:
    root = str(Path(__file__).resolve().parents[2])  # where this prunekit is imported from
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, custom.MODEL_FILE_ENV: str(model_file), "PYTHONPATH": path}
    args = ["--server.port", str(port), "--server.address", address, "--server.headless", "true"]
    args += ["--browser.gatherUsageStats", "false"]
    with log_file.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "prunekit", "app", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends the workers too
        )

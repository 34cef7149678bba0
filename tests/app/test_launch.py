"""The whole lab on a model defined in this file only (inside a function: no module can import it), as
``prunekit.launch`` serves it: the pages, the evaluation workers, a local Ray instance and the real server."""

import copy
import os
import socket
import time

import pytest
import torch
from streamlit.testing.v1 import AppTest
from torch import nn
from torch.nn.utils import prune

import prunekit
from prunekit.core import own
from prunekit.core.spec import Allocation, PruneSpec
from prunekit.models import custom
from prunekit.service.fanout import Backend, run_jobs, sweep_jobs
from prunekit.service.jobs import EvalJob
from tests.apptest import APP, metric, settle
from tests.browser import CHROMIUM, launch_browser
from tests.helpers import page

NAME = "my-net"


@pytest.fixture(scope="module")
def mine():
    """(model, images, labels): the class is local to this function, so it travels by value (cloudpickle)."""

    class MyNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 12, 3, padding=1)
            self.grouped = nn.Conv2d(12, 12, 3, padding=1, groups=3)
            self.head = nn.Linear(12, 5)

        def forward(self, x):
            y = torch.tanh(self.stem(x))
            y = y + nn.functional.elu(self.grouped(y))
            return self.head(y.mean((2, 3)))

    torch.manual_seed(3)
    model = MyNet().eval()
    images = torch.randn(300, 3, 14, 14, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        labels = model(images).argmax(1)
    labels[::3] = torch.arange(100) % 5  # a model right on about 2/3 of the images, every class present
    return model, images, labels


def _independent_top1(model: nn.Module, images, labels, sparsity: float) -> float:
    """torch.nn.utils.prune's global L1 masks, then a plain loop over the images."""
    ref = copy.deepcopy(model).eval()
    if sparsity:
        params = [(ref.stem, "weight"), (ref.grouped, "weight"), (ref.head, "weight")]
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=sparsity)
    with torch.no_grad():
        return int((ref(images).argmax(1) == labels).sum()) / len(labels)


@pytest.fixture
def served(mine, tmp_path, monkeypatch):
    """The app's resources pointed at the launched model (what ``launch`` does for its server process)."""
    from prunekit.app import server_state

    model, images, labels = mine
    loaded = own.from_model(model, own.OwnModel(images[0], (images, labels), name=NAME))
    monkeypatch.setenv(custom.MODEL_FILE_ENV, str(custom.write(loaded, tmp_path / "model.pkl")))
    server_state.own_lab.clear()
    yield
    monkeypatch.delenv(custom.MODEL_FILE_ENV)
    server_state.own_lab.clear()


def test_every_page_opens_on_the_launched_model_and_its_accuracy_comes_from_a_worker(served, mine):
    model, images, labels = mine
    at = AppTest.from_file(APP, default_timeout=240).run()
    assert not at.exception, at.exception
    assert any(NAME in h.value for h in at.header)
    assert at.selectbox(key="w_model").value == NAME
    layers = at.dataframe[1].value["layer"].tolist()  # [0] is the bundled models' table
    assert layers == ["stem", "grouped", "head"]
    at.switch_page(page("prune")).run()
    settle(at)
    assert metric(at, "Dense") == f"{_independent_top1(model, images, labels, 0.0):.2%}"
    assert metric(at, "Global at 50%") == f"{_independent_top1(model, images, labels, 0.5):.2%}"
    for name in (page("importance"), page("sensitivity"), page("tradeoffs")):
        at.switch_page(name).run()
        assert not at.exception, (name, at.exception)


@pytest.mark.xdist_group("ray")
def test_local_workers_and_a_local_ray_instance_give_the_same_numbers(mine, tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_worker_niceness", "0")  # as in tests/service/test_ray.py: the suite's other worker is busy
    model, images, labels = mine
    lab = prunekit.Lab.from_model(model, images[0], (images, labels), name=NAME)
    spec = custom.portable(lab.loaded).spec
    jobs = sweep_jobs(
        EvalJob(NAME, PruneSpec("magnitude", "unstructured", allocation=Allocation("global"))), [0.5, 0.9]
    )
    local = run_jobs(jobs, spec, lab.fingerprint, Backend(workers=1))
    ray = run_jobs(jobs, spec, lab.fingerprint, Backend(ray="local"))
    for job, sparsity in zip(jobs, (0.0, 0.5, 0.9), strict=True):
        want = _independent_top1(model, images, labels, sparsity)
        assert local[job].top1 == ray[job].top1 == pytest.approx(want, abs=1e-9)
        assert local[job].n == ray[job].n == len(labels)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.browser
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed")
def test_launch_returns_at_once_and_serves_the_lab_until_stop(mine, tmp_path, monkeypatch):
    from playwright.sync_api import sync_playwright

    model, images, labels = mine
    monkeypatch.setenv("PRUNEKIT_CACHE_DIR", str(tmp_path))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    app = prunekit.launch(
        model, images[0], eval_data=(images, labels), port=_free_port(), address="127.0.0.1", name=NAME
    )
    try:
        assert app.running()  # returned while the server starts
        app.wait_ready(timeout=300)
        want = f"{_independent_top1(model, images, labels, 0.5):.2%}"
        with sync_playwright() as pw:
            browser = launch_browser(pw)
            page = browser.new_page(viewport={"width": 1400, "height": 2000})
            page.goto(f"{app.url}/model", timeout=120_000)
            page.get_by_text(f"{NAME}", exact=True).first.wait_for(timeout=120_000)
            page.get_by_text("Most parameters: grouped").wait_for(timeout=60_000)
            page.goto(f"{app.url}/prune", timeout=120_000)
            full = page.get_by_test_id("pkReadout").filter(has_text="Global at 50%").filter(has_not_text="estimate")
            full.filter(has_text=want).first.wait_for(timeout=240_000)
            inline = browser.new_page(viewport={"width": 1200, "height": 1000})
            inline.set_content(app._repr_html_())  # what Jupyter shows for `app` as a cell's value
            assert inline.locator("iframe").get_attribute("height") == str(app.height)
            inline.frame_locator("iframe").get_by_text(NAME, exact=True).first.wait_for(timeout=120_000)
            assert inline.get_by_role("link", name=app.url).get_attribute("href") == app.url
            browser.close()
    finally:
        app.stop()
    deadline = time.monotonic() + 30  # a hang guard: the process group goes down with the server
    while app.running() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not app.running() and not app.model_file.exists()
    assert "its server has stopped" in app._repr_html_()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

"""prunekit as an installed package: ``pip install .`` into a fresh virtual environment, then the
``prunekit`` command from another directory, reading its bundled assets from the installed copy."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.browser import NAVIGATION, free_port, launch_browser, needs_chromium, open_directly, served
from tests.helpers import ROOT

OURS = ("prunekit", "__editable__")  # the checkout's own editable install must not be seen


def _dependencies_only(target: Path) -> Path:
    """A directory of links to this environment's installed packages, prunekit's own left out, so the
    fresh environment finds its dependencies without downloading several GB of torch again."""
    target.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(OURS) and entry.suffix != ".pth":
            (target / entry.name).symlink_to(entry)
    return target


# One xdist worker for the module: the fixture builds a wheel, which is the slow part; twice at once gains nothing.
pytestmark = pytest.mark.xdist_group("package")


def _source_copy(target: Path) -> Path:
    """The checkout's files that git does not ignore, copied apart: building from the checkout itself raced other test
    workers writing beside it (``__pycache__`` files vanishing mid-copy, a shared ``build/`` folder)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    if listed.returncode != 0:  # not a git checkout (an unpacked archive): everything but what a run writes
        litter = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache")
        return Path(shutil.copytree(ROOT, target, ignore=litter))
    for name in filter(None, listed.stdout.decode().split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the work tree is not part of the package
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """``pip install .`` into a fresh venv; returns the venv's bin directory. The venv has no pip of its own and
    builds with the setuptools it finds among the linked dependencies: this environment's pip installs into it
    (``--python``), 4 s instead of 10 (a venv's own pip took 3.5 s to set up, an isolated build env 3 more)."""
    base = tmp_path_factory.mktemp("pkg")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    purelib = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "dependencies.pth").write_text(str(_dependencies_only(base / "deps")) + "\n")
    install = ["install", "-q", "--disable-pip-version-check", "--no-build-isolation", str(_source_copy(base / "src"))]
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), *install],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    return venv / "bin"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_installed_command_lists_the_models_from_another_directory(installed, tmp_path):
    help_ = _run(str(installed / "prunekit"), "--help", cwd=tmp_path)
    assert help_.returncode == 0, help_.stderr
    for command in ("app", "list", "profile", "prune", "sweep", "sensitivity", "export", "recover"):
        assert command in help_.stdout
    listed = _run(str(installed / "prunekit"), "list", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    bundled = [n for n, r in rows.items() if r["family"] == "bundled"]
    assert len(bundled) == 4 and all(rows[n]["pretrained"] for n in bundled)  # the checkpoints came along


def test_the_installed_package_reads_its_own_copy_of_the_assets(installed, tmp_path):
    script = (
        "import json, prunekit\n"
        "from prunekit.models import datasets, zoo\n"
        "test = datasets.fashion_mnist('test')\n"
        "print(json.dumps([prunekit.__file__, str(datasets.ASSETS), len(test), zoo.bundled_card('fmnist-cnn')['name']]))\n"
    )
    out = _run(str(installed / "python"), "-c", script, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    package, assets, images, card = json.loads(out.stdout)
    assert not Path(package).is_relative_to(ROOT) and Path(assets).is_relative_to(Path(package).parent)
    assert images == 10_000 and card == "fmnist-cnn"
    shipped = {p.relative_to(ROOT / "assets") for p in (ROOT / "assets").rglob("*.*")}
    assert shipped and shipped == {p.relative_to(assets) for p in Path(assets).rglob("*.*")}
    module = _run(str(installed / "python"), "-m", "prunekit", "list", cwd=tmp_path)
    assert module.returncode == 0 and "fmnist-cnn" in module.stdout


def test_every_package_folder_is_installed():
    """pyproject.toml names its packages (two are mapped from top-level folders): a new subpackage must be listed."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "prunekit").rglob("__init__.py")}
    assert folders and folders | {"prunekit.assets", "prunekit.pages"} == listed


@pytest.mark.browser
@needs_chromium
def test_the_installed_app_serves_a_page_from_a_direct_first_link(installed, tmp_path):
    """``prunekit app`` from another directory: pages and assets from the installed copy, no checkout around."""
    from playwright.sync_api import sync_playwright

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"PRUNEKIT_CACHE_DIR": str(tmp_path / "cache"), "PRUNEKIT_WORKERS": "1", "PRUNEKIT_CURVE_FILL": "0"}
    command = [str(installed / "prunekit"), "app", "--server.port", str(port), "--server.address", "127.0.0.1"]
    command += ["--global.developmentMode", "false"]  # Streamlit guesses 'development' from its linked folder
    log = tmp_path / "server.log"
    with served(command, port, tmp_path, env, log) as url, sync_playwright() as pw:
        browser = launch_browser(pw)
        assert open_directly(browser, f"{url}/forget", "What the pruned model forgets") == NAVIGATION
        assert open_directly(browser, f"{url}/model", "Where do the parameters and the compute live?") == NAVIGATION
        browser.close()
    text = log.read_text(errors="replace")
    assert "Traceback" not in text and str(ROOT) not in text, text[-3000:]

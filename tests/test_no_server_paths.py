"""No server path in the browser: every page's text (all elements, their labels, help, tables and
charts) is searched for absolute paths and for the server's own folders."""

import os
import re
import sys
import tempfile
from pathlib import Path

import pytest

from prunekit.errors import without_server_paths
from tests.apptest import PAGES, open_page
from tests.helpers import ROOT, page

ABSOLUTE = re.compile(r"(?<![\w:/.~-])/(?:[\w.+@-]+/)+[\w.+@-]+")
MEDIA = re.compile(r"/(?:mock/)?media/[0-9a-f]+\.\w+")  # Streamlit's own URL for an image it serves, not a path
ROUTES = {"/prunekit/live"}  # the app's own routes (the live channel), URLs rather than paths
SERVER_DIRS = [str(ROOT), sys.prefix, tempfile.gettempdir(), str(Path.home()), "/usr/share/datasets", "/proc/"]


def _walk(node):
    yield node
    for child in getattr(node, "children", {}).values():
        yield from _walk(child)


def _page_text(at) -> str:
    """Every proto on the page in protobuf text form: markdown, captions, notices, widget labels and
    help, metrics, dataframes (Arrow bytes), chart specs."""
    return "\n".join(str(n.proto) for n in _walk(at._tree) if getattr(n, "proto", None) is not None)


def _assert_no_path(text: str, where: str) -> None:
    for folder in SERVER_DIRS:
        assert folder not in text, f"{where}: the server folder {folder!r} is shown"
    found = [
        m.group(0) for m in ABSOLUTE.finditer(text) if not MEDIA.fullmatch(m.group(0)) and m.group(0) not in ROUTES
    ]
    assert not found, f"{where}: absolute paths on the page: {found[:5]}"


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_no_page_shows_a_server_path(page):
    at = open_page(page)
    _assert_no_path(_page_text(at), page)


@pytest.mark.slow
def test_an_untrained_torchvision_model_names_its_missing_weights_without_the_cache_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    at = open_page(page("model"), {"model": "resnet18"})
    text = _page_text(at)
    assert "resnet18-" in text and "torch hub cache" in text  # the file it lacks, by name
    _assert_no_path(text, "model page, resnet18")
    assert str(tmp_path) not in text


def test_without_paths_keeps_names_and_drops_folders():
    assert without_server_paths("all images (/srv/a/fashion-mnist)") == "all images ('fashion-mnist')"
    assert without_server_paths("folder '/data/imagenette/val' is empty") == "folder 'val' is empty"
    assert without_server_paths("see https://pytorch.org/vision/stable/models.html") == (
        "see https://pytorch.org/vision/stable/models.html"
    )
    assert without_server_paths("1/2 of dense / masked") == "1/2 of dense / masked"
    assert os.sep == "/"  # the server paths this guards are POSIX ones

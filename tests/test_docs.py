"""The front door and the docs say what runs: README's Python quickstart runs as written, every command line
they show parses with the CLI's own parser, every command is documented, every link points at a file."""

import os
import re
import shlex
import subprocess
import sys

import pytest

from prunekit.cli import build_parser
from tests.helpers import ROOT

README = (ROOT / "README.md").read_text()
DOCS = {p.name: p.read_text() for p in (ROOT / "docs").glob("*.md")}


def _command_lines(text: str) -> list[str]:
    """Indented lines that call prunekit (as `prunekit ...` or `.venv/bin/prunekit ...`)."""
    lines = [line.strip() for line in text.splitlines() if line.startswith("    ")]
    return [line.removeprefix(".venv/bin/") for line in lines if line.startswith(("prunekit ", ".venv/bin/prunekit "))]


def _subcommands() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return list(sub.choices)


def test_readme_is_a_front_door():
    assert len(README.splitlines()) <= 200
    assert max(len(line) for line in README.splitlines() if not line.startswith("|")) <= 130


def test_every_link_of_the_readme_and_docs_points_at_a_file():
    for name, text in {"README.md": README, **{f"docs/{k}": v for k, v in DOCS.items()}}.items():
        base = ROOT if name == "README.md" else ROOT / "docs"
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if not target.startswith("http"):
                assert (base / target).exists(), f"{name} links to {target}"


@pytest.mark.parametrize("page", ["README.md", "cli.md", "own-model.md"])
def test_every_command_line_shown_parses(page):
    text = README if page == "README.md" else DOCS[page]
    lines = _command_lines(text)
    assert lines, page
    parser = build_parser()
    for line in lines:
        args, extra = parser.parse_known_args(shlex.split(line)[1:])
        assert not extra or args.command == "app", line


def test_every_command_is_documented_in_the_cli_page():
    shown = {shlex.split(line)[1] for line in _command_lines(DOCS["cli.md"])}
    assert set(_subcommands()) - {"app"} <= shown, set(_subcommands()) - shown


def test_the_readme_python_quickstart_runs_as_written(tmp_path):
    code = re.search(r"## Quickstart: Python\n\n```python\n(.*?)```", README, flags=re.S).group(1)
    (tmp_path / "quickstart.py").write_text(code)
    env = {**os.environ, "PRUNEKIT_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("PYTHONPATH", None)
    run = subprocess.run(
        [sys.executable, "quickstart.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "measured" in run.stdout and "masks.pt" in run.stdout
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == sorted(
        ["masks.pt", "model.onnx", "model.safetensors", "prune_snippet.py", "ratios.json"]
    )

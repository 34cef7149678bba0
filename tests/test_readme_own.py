"""docs/own-model.md's "Use it on your own model", run as written: the module, the notebook (launch included) and the
command lines, in a fresh directory."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image

from tests.helpers import ROOT

BIN = Path(sys.executable).parent


def _section() -> str:
    text = (ROOT / "docs" / "own-model.md").read_text()
    return text.split("## Use it on your own model\n", 1)[1].split("\n## ", 1)[0]


def _blocks(section: str) -> tuple[list[str], list[str]]:
    """The fenced python blocks and the indented command lines, in order."""
    python = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    commands = [line.strip() for line in section.splitlines() if line.startswith("    prunekit ")]
    return python, commands


def _images(root: Path, classes: int = 10, per_class: int = 3) -> None:
    gen = torch.Generator().manual_seed(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = (torch.rand(32, 32, 3, generator=gen) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")


def test_the_readme_section_runs_as_written(tmp_path):
    module, notebook = _blocks(_section())[0]
    commands = _blocks(_section())[1]
    assert len(commands) == 2
    (tmp_path / "mynets.py").write_text(module)
    (tmp_path / "notebook.py").write_text(notebook)
    env = {**os.environ, "PRUNEKIT_CACHE_DIR": str(tmp_path / "cache"), "PRUNEKIT_WORKERS": "1"}
    env.pop("PYTHONPATH", None)
    run = subprocess.run(
        [sys.executable, "notebook.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    printed = run.stdout.strip().splitlines()
    assert [line.split()[0] for line in printed] == ["global", "local", "lamp"]
    assert (tmp_path / "weights.safetensors").is_file()

    _images(tmp_path / "my_images")
    outputs = []
    for line in commands:
        args = [str(BIN / "prunekit"), *line.split()[1:]]
        done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (line, done.stderr[-3000:])
        outputs.append(json.loads(done.stdout))
    pruned, sensitivity = outputs
    assert [layer["name"] for layer in pruned["layers"]] == ["stem", "block", "head"]
    assert pruned["accuracy"]["images"] == 30 and pruned["model"] == "build"
    assert {row["layer"] for row in sensitivity["results"]} >= {"stem", "block", "head"}

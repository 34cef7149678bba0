"""Stored results are keyed by the engine's code version: editing any engine file must change it."""

import shutil
from pathlib import Path

import prunekit
from prunekit.service.cache import code_version

ENGINE = Path(prunekit.__file__).parent


def test_editing_any_engine_file_changes_the_code_version(tmp_path):
    copy = tmp_path / "prunekit"
    shutil.copytree(ENGINE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    base = code_version(copy)
    assert base == code_version(ENGINE) == code_version()  # the copy is the package, byte for byte
    files = sorted(f for f in copy.rglob("*.py") if f.relative_to(copy).parts[0] != "app")
    assert {"lab.py", "zoo.py", "data.py", "datasets.py", "checkpoints.py", "scheduler.py", "evaluation.py"} <= {
        f.name for f in files
    }
    seen = {base}
    for path in files:
        original = path.read_bytes()
        path.write_bytes(original + b"\n# one edit\n")
        edited = code_version(copy)
        assert edited not in seen, f"editing {path.relative_to(copy)} left the code version unchanged"
        seen.add(edited)
        path.write_bytes(original)
        assert code_version(copy) == base


def test_a_new_engine_file_changes_the_code_version(tmp_path):
    copy = tmp_path / "prunekit"
    shutil.copytree(ENGINE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    base = code_version(copy)
    (copy / "extra.py").write_text("X = 1\n")
    assert code_version(copy) != base


def test_editing_the_app_keeps_stored_results(tmp_path):
    copy = tmp_path / "prunekit"
    shutil.copytree(ENGINE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    base = code_version(copy)
    page = copy / "app" / "views" / "prune.py"
    page.write_text(page.read_text() + "\n# restyled\n")
    assert code_version(copy) == base

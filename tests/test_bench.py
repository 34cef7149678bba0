"""The benchmark scripts README.md quotes still import against the package as it is now (one of them
once imported a module that had moved, and nothing ran it)."""

import subprocess
import sys

from tests.helpers import ROOT

SCRIPTS = sorted((ROOT / "bench").glob("*.py"))

LOAD_ALL = """
import importlib.util, sys
for path in sys.argv[1:]:
    name = "bench_" + path.rsplit("/", 1)[-1][:-3]
    spec = importlib.util.spec_from_file_location(name, path)
    sys.modules[name] = module = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(module)  # top level only: main() is guarded
"""


def test_every_benchmark_script_imports():
    assert len(SCRIPTS) >= 5
    done = subprocess.run(
        [sys.executable, "-c", LOAD_ALL, *map(str, SCRIPTS)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]

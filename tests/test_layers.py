"""The package's architecture, checked: imports run one way (core <- models <- deploy <- service <- app/cli)
and only the app imports streamlit."""

import ast
from pathlib import Path

import prunekit

PACKAGE = Path(prunekit.__file__).parent
LAYERS = {
    "errors": 0,
    "units": 0,
    "progress": 0,
    "shipped": 0,
    "core": 1,
    "models": 2,
    "deploy": 3,
    "service": 4,
    "tasks": 5,
    "app": 6,
    "cli": 6,
}
TOP = {"__init__", "__main__"}  # the public API and `python -m prunekit` may import anything


def _part(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (lazy imports inside functions count too)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module == "prunekit":
                found |= {f"prunekit.{a.name}" for a in node.names}
    return found


def _modules() -> list[tuple[str, Path]]:
    return [(".".join(("prunekit", *p.relative_to(PACKAGE).with_suffix("").parts)), p) for p in PACKAGE.rglob("*.py")]


def test_every_module_belongs_to_a_layer():
    for name, _ in _modules():
        part = _part(name)
        assert part in LAYERS or part in TOP, f"{name} is in no layer: add it to one"


def test_imports_run_one_way():
    wrong = []
    for name, path in _modules():
        here = _part(name)
        if here in TOP:
            continue
        for target in _imports(path):
            if target.startswith("prunekit.") and LAYERS.get(_part(target), 0) > LAYERS[here]:
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_only_the_app_imports_streamlit():
    wrong = [
        name
        for name, path in _modules()
        if _part(name) != "app" and any(t.split(".")[0] == "streamlit" for t in _imports(path))
    ]
    assert not wrong


APP_ORDER = [
    "launch",
    "channel",
    "settings",
    "links",
    "pacing",
    "turns",
    "plots",
    "accuracy_plots",
    "server_state",
    "session_state",
    "readouts",
    "live",
    "curve_chart",
    "computed",
    "overlay",
    "planning",
    "forgetting",
    "oracles",
    "sidebar",
    "views",
    "main",
    "entry",
    "serve",
]


def test_the_app_imports_downwards_and_pages_go_through_its_helpers():
    """pages -> app helpers -> engine: a page may read engine constants, but it asks the app's helpers
    for results and never reaches the evaluation service or the zoo itself."""
    wrong = []
    for name, path in _modules():
        parts = name.split(".")
        if parts[1] != "app" or len(parts) < 3 or parts[2] == "__init__":
            continue
        rank = APP_ORDER.index(parts[2])
        for target in _imports(path):
            tparts = target.split(".")
            if target.startswith("prunekit.app.") and APP_ORDER.index(tparts[2]) > rank:
                wrong.append(f"{name} imports {target}")
            if parts[2] == "views" and tparts[:2] == ["prunekit", "models"]:
                wrong.append(f"the page {name} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_top_level_entry_and_pages_only_call_the_app_layer():
    """app.py and pages/*.py (the design card's top level) hold no logic: they import streamlit and prunekit.app."""
    root = PACKAGE.parent
    files = [root / "app.py", *sorted((root / "pages").glob("*.py"))]
    assert len(files) == 8
    for path in files:
        for target in _imports(path):
            assert target == "streamlit" or target.startswith("prunekit.app"), f"{path.name} imports {target}"
        assert len(path.read_text().splitlines()) <= 15, f"{path.name} is not thin"

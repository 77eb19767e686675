"""The package's shape: layers, one owner per contract, nothing imported that does not exist."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from windpipe import names
from windpipe.models.compare import rank_runs
from windpipe.models.promotion import gate, improvement

from .conftest import REPO

PACKAGE = REPO / "windpipe"
# where code that uses windpipe lives (teaching material and entry points included)
USERS = [PACKAGE, REPO / "projects", REPO / "tests", REPO / "benchmarks", REPO / "dashboard", REPO / "report",
         REPO / "server", REPO / "notebooks", REPO / "1_starting_point", REPO / "2_tracked"]


def sources() -> dict[Path, str]:
    """Every Python source that uses windpipe: modules, scripts and the code cells of the notebooks."""
    out: dict[Path, str] = {}
    for root in USERS:
        for path in root.rglob("*"):
            if "__pycache__" in path.parts or any(part == "windpipe" for part in path.relative_to(root).parts[:-1]):
                continue  # (projects/<step>/windpipe is a link to the package)
            if path.suffix == ".py":
                out[path] = path.read_text()
            elif path.suffix == ".jinja":  # the step templates write code that uses windpipe
                out[path] = path.read_text()
            elif path.suffix == ".ipynb":
                cells = json.loads(path.read_text())["cells"]
                out[path] = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return out


def test_import_contracts_hold():
    """The layers of pyproject.toml's import-linter contracts: no upward import, no cycle."""
    proc = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_the_package_has_few_top_level_modules():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= 8, modules


def test_every_windpipe_import_names_something_that_exists():
    """Deleting or renaming a public function that anything imports (even inside a function) fails here."""
    missing = []
    for path, text in sources().items():
        try:
            tree = ast.parse(text)
        except SyntaxError:  # notebook cells with IPython magics
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "windpipe":
                module = importlib.import_module(node.module)
                for alias in node.names:
                    if not hasattr(module, alias.name):
                        try:
                            importlib.import_module(f"{node.module}.{alias.name}")
                        except ImportError:
                            missing.append(f"{path.relative_to(REPO)}: {node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "windpipe":
                        importlib.import_module(alias.name)
    assert missing == []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _registers(node: ast.AST) -> bool:
    """A decorator that hands the function to a framework (`@app.command(...)`, `@app.callback`):
    the framework calls it, so it is used without being named again."""
    target = node.func if isinstance(node, ast.Call) else node
    return isinstance(target, ast.Attribute) and target.attr in {"command", "callback", "group"}


def _public_definitions() -> dict[tuple[str, str], ast.AST]:
    """(module, name) -> the public module-level function or class of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_"):
                out[(_module_name(path), node.name)] = node
    return out


def _references(texts: dict[Path, str], modules: set[str]) -> set[tuple[str, str]]:
    """(module, name) pairs that code names: imported, reached as `module.name` through an imported
    module, used by name in its own module, or written as `windpipe.module:name` / `windpipe.module.name`
    (entry points, MLproject commands, templates). By module, not by spelling: a `run` of one module
    is not used because another module's `run` is."""
    used: set[tuple[str, str]] = set()
    reexports: dict[tuple[str, str], tuple[str, str]] = {}
    for path, text in texts.items():
        own = _module_name(path) if path.is_relative_to(PACKAGE) else None
        try:
            tree = ast.parse(text)
        except SyntaxError:  # templates and notebook cells with magics: their import lines
            for module, names_ in re.findall(r"^\s*from (windpipe[\w.]*) import ([\w, ]+)", text, re.M):
                used.update((module, n.strip()) for n in names_.split(","))
            continue
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "windpipe":
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in modules:
                        aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                    elif path.name == "__init__.py" and own and node.module.startswith(own + "."):
                        reexports[(own, alias.asname or alias.name)] = (node.module, alias.name)
                    else:
                        used.add((node.module, alias.name))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "windpipe":
                        aliases[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.Name) and own:
                used.add((own, node.id))
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                chain, value = [node.attr], node.value
                while isinstance(value, ast.Attribute):
                    chain.append(value.attr)
                    value = value.value
                if isinstance(value, ast.Name) and (value.id in aliases or value.id == "windpipe"):
                    dotted = ".".join([aliases.get(value.id, value.id), *reversed(chain)])
                    used.add(tuple(dotted.rsplit(".", 1)))
    for found in re.findall(r"windpipe(?:\.\w+)+(?::\w+)?", "\n".join(texts.values())):
        used.add(tuple(found.replace(":", ".").rsplit(".", 1)))
    used.update(target for exported, target in reexports.items() if exported in used)
    return used


def test_every_public_function_is_used_somewhere():
    """No dead code: each public function or class of the package is used by code other than its definition."""
    texts = sources()
    for path in [REPO / "pyproject.toml", *REPO.glob("projects/*/MLproject"), *REPO.glob("orchestration/**/*.py")]:
        texts[path] = path.read_text()
    definitions = _public_definitions()
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    used = _references(texts, modules)
    unused = [f"{module}: {name}" for (module, name), node in definitions.items()
              if (module, name) not in used and not any(_registers(d) for d in getattr(node, "decorator_list", []))]
    assert unused == []


def test_the_used_check_tells_modules_apart():
    """A function is used when its own module's function is named, not another one spelt the same."""
    texts = {PACKAGE / "a.py": "def run():\n    pass\n",
             PACKAGE / "b.py": "import subprocess\nfrom windpipe import a\n\ndef run():\n    subprocess.run([])\n",
             REPO / "tests" / "t.py": "from windpipe.b import run\n"}
    used = _references(texts, {"windpipe.a", "windpipe.b"})
    assert ("windpipe.b", "run") in used and ("windpipe.a", "run") not in used


def _string_constants(tree: ast.AST) -> list[str]:
    """String literals of a module, docstrings left out (f-strings give their constant parts)."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_tag_strings_and_alias_names_are_written_only_in_names():
    """windpipe.names owns the run-tag and alias contract: no other module spells a tag or an alias."""
    tags = {v for k, v in vars(names).items() if k.endswith("_TAG") and isinstance(v, str)}
    prefixes = {v for k, v in vars(names).items() if k.endswith("_PREFIX") and v.startswith("windpipe.")}
    aliases = {names.PRODUCTION, names.CHALLENGER}
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "names.py" and path.parent == PACKAGE or "__pycache__" in path.parts:
            continue
        for value in _string_constants(ast.parse(path.read_text())):
            is_module = value.startswith("windpipe.") and importlib.util.find_spec(value.split(" ")[0]) is not None
            if (value in tags or value in aliases or any(f"@{a}" in value for a in aliases)
                    or (not is_module and any(value.startswith(p) for p in prefixes))):
                offenders.append(f"{path.relative_to(REPO)}: {value!r}")
    assert offenders == []


def test_the_templates_spell_no_tag_either():
    for path in (PACKAGE / "templates").rglob("*"):
        if path.is_file():
            assert "windpipe.data_date" not in path.read_text() and "windpipe.promot" not in path.read_text(), path


# -------------------------------------------------------------------------- metric direction, one owner


@pytest.mark.parametrize("metric, higher", [
    ("r2", True), ("r2_wind_GW", True), ("holdout_r2", True), ("eval_r2_solar_GW", True), ("best_r2", True),
    ("rmse", False), ("mae_wind_GW", False), ("holdout_rmse", False), ("best_rmse", False), ("loss", False),
    ("val_loss", False), ("r2x", False),
])
def test_metric_direction(metric, higher):
    assert names.higher_is_better(metric) is higher


def test_ranking_and_the_gate_follow_the_metric_direction():
    """`windpipe compare`, the compare step (rank_runs) and the promotion gate agree on which is better."""
    frame = pd.DataFrame({"run_id": ["a", "b", "c"], "model_uri": ["m1", "m2", "m3"], "r2": [0.5, 0.9, 0.7],
                          "rmse": [3.0, 1.0, 2.0], "start_time": pd.to_datetime([1, 2, 3], unit="s", utc=True)})
    assert rank_runs(frame, "r2")["run_id"].tolist() == ["b", "c", "a"]
    assert rank_runs(frame, "rmse")["run_id"].tolist() == ["b", "c", "a"]
    assert improvement(0.9, 0.8, "r2") > 0 > improvement(0.8, 0.9, "r2")
    assert improvement(1.0, 2.0, "rmse") > 0 > improvement(2.0, 1.0, "rmse")
    assert gate(0.9, 0.8, "r2", 0.0)[0] and not gate(0.8, 0.9, "r2", 0.0)[0]
    assert names.better(0.9, 0.8, "r2") and names.better(1.0, 2.0, "rmse")


def test_pure_modules_take_their_settings_from_the_caller():
    """The pure modules (pyproject.toml's second contract) call neither get_settings() nor a helper that does
    (projects_dir()): the edges pass the values in."""
    import tomllib

    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    pure = next(c for c in contracts if c["name"].startswith("pure modules"))["source_modules"]
    files = []
    for module in pure:
        path = REPO / Path(*module.split("."))
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
    calls = [f"{f.relative_to(REPO)}:{node.lineno} {node.func.id}()" for f in files
             for node in ast.walk(ast.parse(f.read_text())) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Name) and node.func.id in ("get_settings", "projects_dir")]
    assert len(files) > 10 and calls == [], calls

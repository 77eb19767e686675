"""`windpipe new-step`: a new step folder from the jinja2 templates in windpipe/templates/step/;
`windpipe new-step --family`: a new model family (windpipe/templates/family/): its module in
windpipe/training/families/ and its project folder, a trainer that joins the training pipeline, its
Airflow DAG and compare's candidates without another edit.

The folder is rendered into a temporary folder beside the target, checked (its interface
parses, agrees with its MLproject, and fits the pipeline DAG without a cycle or an unproduced
input), and only then renamed into place: on any error nothing is written.
"""

from __future__ import annotations

import json
import keyword
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from windpipe import names
from windpipe.entities.schema import ENTITIES
from windpipe.errors import UsageError, WindpipeError
from windpipe.fileio import atomic_folder, atomic_write_text
from windpipe.pipeline.graph import build_graph
from windpipe.pipeline.interfaces import PIPELINES, SPEC_FILE, StepInterface, load_interface, load_interfaces
from windpipe.settings import package_dir, projects_dir

TEMPLATE_DIR = package_dir() / "templates" / "step"
TEMPLATES = {"MLproject.jinja": "MLproject", "python_env.yaml.jinja": "python_env.yaml", "step.py.jinja": "step.py",
             "step.yaml.jinja": SPEC_FILE, "README.md.jinja": "README.md", "test_step.py.jinja": "test_step.py"}
FAMILY_TEMPLATE_DIR = package_dir() / "templates" / "family"
FAMILY_TEMPLATES = {"MLproject.jinja": "MLproject", "step.py.jinja": "step.py", "step.yaml.jinja": SPEC_FILE,
                    "README.md.jinja": "README.md", "step/python_env.yaml.jinja": "python_env.yaml"}
NAME_RE = re.compile(r"^[a-z][a-z0-9_]{1,39}$")
RESERVED = frozenset({"windpipe", "mlflow", "step", "steps", "test", "tests", "templates", "projects", "graph",
                      "new_step", "export_step", "all", "none", "latest", "main", "data", "entities"})
DEMO_COLUMNS = {"utc_timestamp": "datetime", "value": "float"}
REFERENCE_ENV = "process"  # new steps copy this step's python_env.yaml pins


def check_name(name: str, what: str = "step") -> str:
    """A lower-case slug usable as a folder, an MLflow tag value and a Python identifier; not reserved."""
    if not NAME_RE.match(name or ""):
        raise UsageError(f"{name!r} is not a valid {what} name.",
                            f"use 2-40 characters: a lower-case letter, then lower-case letters, digits or _ "
                            f"(e.g. {'clean_weather' if what == 'step' else 'weather_daily'})")
    if keyword.iskeyword(name) or name in RESERVED:
        raise UsageError(f"{name!r} is reserved and cannot be a {what} name.",
                            f"pick another name (reserved: Python keywords and {', '.join(sorted(RESERVED))})")
    return name


def _split(values: Sequence[str] | str | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    dupes = sorted({v for v in out if out.count(v) > 1})
    if dupes:
        raise UsageError(f"Entity {', '.join(dupes)} is listed twice.", "list each entity once")
    return out


def reference_env(root: Path | None = None) -> dict[str, Any]:
    """python, build_dependencies and dependencies of projects/process/python_env.yaml (so pins never diverge)."""
    import yaml

    path = (root or projects_dir()) / REFERENCE_ENV / "python_env.yaml"
    if not path.exists():
        path = projects_dir() / REFERENCE_ENV / "python_env.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise WindpipeError(f"Cannot read the reference environment {path} ({exc}).",
                            "new steps copy its pins: restore projects/process/python_env.yaml") from None
    return {"python": str(data["python"]), "build_dependencies": list(data.get("build_dependencies") or ["pip"]),
            "dependencies": list(data["dependencies"])}


def _input_port(entity: str, specs: list[StepInterface]) -> dict[str, Any]:
    check_name(entity, "entity")
    known = ENTITIES.get(entity)
    if known is not None:
        if known.kind != "table":
            raise WindpipeError(f"new-step scaffolds steps that read tables; {entity!r} is a {known.kind} entity.",
                                "start from a table input and add the rest by hand (see projects/predict for a model)")
        columns = dict(known.columns)
    else:
        port = next((p for s in specs if not s.driver for p in s.outputs if p.entity == entity), None)
        if port is None:
            producers = sorted({p.entity for s in specs for p in s.outputs} | set(ENTITIES))
            raise WindpipeError(f"No step produces the entity {entity!r}, so the new step could not read it.",
                                f"create the producing step first, or read one of: {', '.join(producers)}")
        if port.kind != "table":
            raise WindpipeError(f"new-step scaffolds steps that read tables; {entity!r} is a {port.kind} entity.",
                                "start from a table input and add the rest by hand")
        columns = dict(port.columns)
    return {"entity": entity, "parameter": f"{entity}_uri", "option": f"{entity}-uri".replace("_", "-"),
            "columns": columns, "known": known is not None}


def _output_port(entity: str, source_columns: dict[str, str], specs: list[StepInterface]) -> dict[str, Any]:
    check_name(entity, "entity")
    known = ENTITIES.get(entity)
    if known is not None and known.kind != "table":
        raise WindpipeError(f"new-step scaffolds steps that write tables; {entity!r} is a {known.kind} entity.",
                            "write a table here and log models by hand (see projects/lr)")
    if known is not None:
        columns = dict(known.columns)
    else:  # another step may write it already: keep its schema
        port = next((p for s in specs if not s.driver for p in s.outputs if p.entity == entity), None)
        columns = dict(port.columns) if port is not None and port.columns else dict(source_columns)
    return {"entity": entity, "tag": names.entity_tag(entity), "columns": columns, "known": known is not None}


def render_step(name: str, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]], target: Path,
                description: str, env: dict[str, Any], pipeline: str = "training") -> None:
    """Render every template into the (existing, empty) folder `target`."""
    ctx = {"inputs": inputs, "outputs": outputs, "description": description, "env": env, "pipeline": pipeline}
    _render(TEMPLATE_DIR, TEMPLATES, name, target, ctx)


def _render(folder: Path, templates: dict[str, str], name: str, target: Path, ctx: dict[str, Any]) -> None:
    """Render `templates` (template -> file name) of `folder` into `target`, with `ctx`, the name, the windpipe
    version and the folder's path as a user would type it (`dest_hint`)."""
    from windpipe import __version__

    jenv = _jinja(folder)
    for template, filename in templates.items():
        text = jenv.get_template(template).render(name=name, windpipe_version=__version__,
                                                  dest_hint=_dest_hint(target.parent, name), **ctx)
        (target / filename).write_text(text, encoding="utf-8")


def _jinja(folder: Path) -> Any:
    import jinja2

    jenv = jinja2.Environment(loader=jinja2.FileSystemLoader([str(folder), str(folder.parent)]), trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    jenv.filters["json"] = lambda value: json.dumps(value, ensure_ascii=False)  # valid YAML and Python literals
    return jenv


def _dest_hint(parent: Path, name: str) -> str:
    try:
        hint = os.path.relpath(parent, Path.cwd()) + f"/{name}"
    except ValueError:
        hint = str(parent / name)
    return str(parent / name) if hint.startswith("../..") else hint


def new_step(name: str, inputs: Sequence[str] | str | None = None, outputs: Sequence[str] | str | None = None,
             dest: Path | str | None = None, description: str | None = None, pipeline: str = "training") -> Path:
    """Create `<dest>/<name>` (dest: projects/) ready for `mlflow run`; return the folder.

    `inputs`/`outputs` are entity names (or comma-separated strings). With no outputs the step
    writes an entity named after itself. `pipeline` (training, prediction, none) says which
    pipeline, and so which Airflow DAG, runs it. Raises WindpipeError, writing nothing, on a bad or
    taken name, an input no step produces, a non-table entity, or an interface that would make a cycle.
    """
    name = check_name(name)
    if pipeline not in PIPELINES:
        raise UsageError(f"There is no {pipeline!r} pipeline.", f"use one of {', '.join(PIPELINES)}")
    dest = Path(dest) if dest else projects_dir()
    target = dest / name
    if target.exists() or target.is_symlink():
        raise UsageError(f"{target} exists already.", "pick another step name (or delete that folder)")
    specs = load_interfaces(dest) if dest.is_dir() else []
    if any(s.name == name for s in specs):
        raise UsageError(f"A step named {name!r} exists already in {dest}.", "pick another step name")
    in_names, out_names = _split(inputs), _split(outputs) or [name]
    ins = [_input_port(e, specs) for e in in_names]
    source = ins[0]["columns"] if ins else dict(DEMO_COLUMNS)
    outs = [_output_port(e, source, specs) for e in out_names]
    both = sorted(set(in_names) & set(out_names))
    if both:
        raise UsageError(f"The step would read and write {', '.join(both)}: a cycle {name} -> {both[0]} -> {name}.",
                         "write a new entity (e.g. --outputs " + f"{both[0]}_{name}) instead")
    reads = ", ".join(in_names) or "a sample table"
    description = description or f"{reads} -> {', '.join(out_names)} (made by windpipe new-step; edit transform)"
    env = reference_env(dest)
    with atomic_folder(target) as tmp:
        render_step(name, ins, outs, tmp, description, env, pipeline)
        os.symlink(os.path.relpath(package_dir(), dest.resolve() / name), tmp / "windpipe")
        spec = load_interface(tmp)
        build_graph([*specs, spec])  # fits the pipeline: no cycle, every input produced
        if pipeline != "none":
            build_graph([*specs, spec], pipeline)  # and the pipeline it joins on its own
        if target.exists() or target.is_symlink():
            raise UsageError(f"{target} exists already.", "pick another step name (or delete that folder)")
    return target


def new_family(name: str, dest: Path | str | None = None, family_dir: Path | str | None = None,
               description: str | None = None) -> tuple[Path, Path]:
    """Create a model family: `<family_dir>/<name>.py` (family_dir: windpipe/training/families) registering it, and
    `<dest>/<name>` (dest: projects/), its training step (main, backtest, evaluate; reads `processed`, writes
    `model`). Returns (step folder, module). Raises WindpipeError, writing nothing, on a bad or taken name or an
    interface that does not fit the pipeline.
    """
    from windpipe import __version__
    from windpipe.training import families

    name = check_name(name, "family")
    dest = Path(dest) if dest else projects_dir()
    family_dir = Path(family_dir) if family_dir else package_dir() / "training" / "families"
    target, module = dest / name, family_dir / f"{name}.py"
    if target.exists() or target.is_symlink():
        raise UsageError(f"{target} exists already.", "pick another family name (or delete that folder)")
    if module.exists() or name in families.names():
        raise UsageError(f"A model family named {name!r} exists already ({module}).", "pick another family name")
    specs = load_interfaces(dest) if dest.is_dir() else []
    if any(s.name == name for s in specs):
        raise UsageError(f"A step named {name!r} exists already in {dest}.", "pick another family name")
    if not family_dir.is_dir():
        raise UsageError(f"{family_dir} is not a folder.", "pass --family-dir <an existing folder>")
    description = description or "Ridge regression on the weather and the time columns (a start: edit fit)"
    shown = _dest_hint(family_dir, f"{name}.py")
    code = _jinja(FAMILY_TEMPLATE_DIR).get_template("family.py.jinja").render(
        name=name, description=description, windpipe_version=__version__)
    compile(code, str(module), "exec")
    with atomic_folder(target) as tmp:
        _render(FAMILY_TEMPLATE_DIR, FAMILY_TEMPLATES, name, tmp, {"description": description, "module": shown,
                                                                   "env": reference_env(dest)})
        os.symlink(os.path.relpath(package_dir(), dest.resolve() / name), tmp / "windpipe")
        spec = load_interface(tmp)
        build_graph([*specs, spec])  # fits the pipeline: no cycle, every input produced
        build_graph([*specs, spec], "training")
    try:
        atomic_write_text(module, code)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # the family is both or nothing
        raise
    return target, module

"""Step interfaces: `projects/<step>/step.yaml` (entities read and written, presets) beside the step's
`MLproject` (entry points, parameters and their defaults).

    step: rf
    description: fit random forests on the processed entity
    entry_point: grid                  # what the pipelines run (default: main)
    inputs:
      - {entity: processed, parameter: data}   # this parameter carries the entity's URI
    outputs:
      - {entity: model}                 # the run records its URI (tag: windpipe.names.entity_tag)
    metrics: [rmse, mae, r2]            # what the run logs; the first one is shown in summaries
    queue: heavy                        # Airflow: the worker queue its task goes to (default: Airflow's default queue)
    presets:                            # parameter values per preset (`--quick`; the default run is `full`)
      full: {n_estimators: "32,64", max_depth: "10,14"}
      quick: {n_estimators: "16,32", max_depth: "6,10"}

Each parameter's default lives in the MLproject only (MLflow's own format, which `mlflow run`
reads anyway); step.yaml never repeats it. Entities known to `windpipe.entities.schema.ENTITIES`
take their schema from there; any other table entity declares `columns: {name: kind}`. An input
with `all: true` collects the entity from every step that writes it (the compare step reads every
model). `pipeline:` says which pipeline runs the step: `training` (default), `prediction`, or
`none`; a step with `driver: true` (projects/pipeline) runs the others.

Nothing here touches MLflow or the network.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from windpipe import names
from windpipe.entities.schema import ENTITIES, Entity
from windpipe.errors import WindpipeError, first_line
from windpipe.names import TIMESTAMP
from windpipe.settings import default_projects_dir

SPEC_FILE = "step.yaml"
MLPROJECT_FILE = "MLproject"
COLUMN_KINDS = ("datetime", "float", "int")  # what Entity.validate checks
PARAM_TYPES = ("string", "float", "path", "uri")
ENTITY_KINDS = ("table", "model", "files")
PIPELINES = ("training", "prediction", "none")
SPEC_KEYS = {"step", "description", "driver", "pipeline", "entry_point", "inputs", "outputs", "metrics", "presets",
             "queue"}
PORT_KEYS = {"entity", "parameter", "columns", "kind", "external", "description", "all"}


@dataclass(frozen=True)
class Parameter:
    """An MLproject parameter: name, type (string, float, path, uri), default (None: required) and help."""

    name: str
    type: str = "string"
    default: Any = None
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is None

    @property
    def default_text(self) -> str | None:
        """The default as `mlflow run` passes it on the command line."""
        if self.default is None:
            return None
        if isinstance(self.default, bool):
            return str(self.default).lower()
        return str(self.default)


@dataclass(frozen=True)
class Port:
    """One entity a step reads (input) or writes (output)."""

    entity: str
    columns: dict[str, str]
    kind: str = "table"  # table | model | files
    parameter: str | None = None  # the parameter that carries the entity's URI (input) or path (output)
    external: bool = False  # input: may come from outside the pipeline (raw downloads, new features)
    collect: bool = False  # input: every producer's URI, comma-separated (`all: true`)
    description: str = ""

    @property
    def tag(self) -> str:
        """The run tag that holds this entity's URI (windpipe.names owns the contract)."""
        return names.entity_tag(self.entity)

    def as_entity(self) -> Entity:
        """The `windpipe.entities.schema.Entity` for this port (the registry's, or one from the declared columns)."""
        if self.entity in ENTITIES:
            return ENTITIES[self.entity]
        return Entity(name=self.entity, columns=dict(self.columns), filename=f"{self.entity}.parquet",
                      index=TIMESTAMP if TIMESTAMP in self.columns else None, kind=self.kind,
                      description=self.description)


@dataclass(frozen=True)
class StepInterface:
    """A step: its step.yaml and the entry points of its MLproject."""

    name: str
    folder: Path
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    entry_points: dict[str, dict[str, Parameter]]  # from the MLproject
    entry_point: str = "main"  # the one the pipelines run
    pipeline: str = "training"
    description: str = ""
    driver: bool = False
    metrics: tuple[str, ...] = ()
    presets: dict[str, dict[str, str]] = field(default_factory=dict)
    queue: str | None = None  # the Airflow worker queue of its task (None: the default queue)

    @property
    def spec_file(self) -> Path:
        return self.folder / SPEC_FILE

    @property
    def parameters(self) -> dict[str, Parameter]:
        """The parameters of the entry point the pipelines run."""
        return self.entry_points.get(self.entry_point, {})

    @property
    def key_metric(self) -> str | None:
        return self.metrics[0] if self.metrics else None

    def input(self, entity: str) -> Port | None:
        return next((p for p in self.inputs if p.entity == entity), None)

    def output(self, entity: str) -> Port | None:
        return next((p for p in self.outputs if p.entity == entity), None)

    def defaults(self, entry_point: str | None = None) -> dict[str, str]:
        """Parameter defaults of an entry point as `mlflow run` passes them (required ones left out)."""
        eps = self.entry_points.get(entry_point or self.entry_point, {})
        return {p.name: p.default_text for p in eps.values() if p.default_text is not None}

    def check_parameters(self, values: Mapping[str, object], where: str, entry_point: str | None = None) -> None:
        """Raise WindpipeError naming the step and the fix for a parameter its entry point does not declare."""
        ep = entry_point or self.entry_point
        declared = self.entry_points.get(ep, {})
        unknown = sorted(set(values) - set(declared))
        if unknown:
            raise WindpipeError(
                f"Step {self.name!r} ({ep} entry point) has no parameter {', '.join(map(repr, unknown))} ({where}); "
                f"it declares: {', '.join(declared) or 'none'}.",
                f"use one of those names (see {self.folder / MLPROJECT_FILE})")
        for name, value in values.items():
            if declared[name].type == "float" and not _is_number(value):
                raise WindpipeError(f"Step {self.name!r} parameter {name!r} must be a number, got {str(value)[:200]!r} "
                                    f"({where}).", f"pass a number, e.g. {name}={declared[name].default or 1}")


def _is_number(value: object) -> bool:
    import math

    try:
        return math.isfinite(float(str(value)))
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------- reading


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WindpipeError(f"{path} does not exist.",
                            "write it (see docs/steps.md) or pass the right folder") from None
    except yaml.YAMLError as exc:
        raise WindpipeError(f"{path} is not valid YAML ({first_line(exc)}).",
                            "fix the YAML syntax (indentation, colons, quotes)") from None


def _bad(path: Path, what: str, fix: str = "see docs/steps.md for the step.yaml format") -> WindpipeError:
    return WindpipeError(f"{path}: {what}", fix)


def _parameter(path: Path, name: str, raw: Any) -> Parameter:
    if isinstance(raw, str):  # MLproject shorthand `name: type`
        raw = {"type": raw}
    if not isinstance(raw, Mapping):
        raise _bad(path, f"parameter {name!r} must be a mapping like {{type: string, default: x}}.")
    ptype = str(raw.get("type", "string"))
    if ptype not in PARAM_TYPES:
        raise _bad(path, f"parameter {name!r} has type {ptype!r}; use one of {', '.join(PARAM_TYPES)}.")
    return Parameter(name=str(name), type=ptype, default=raw.get("default"), help=str(raw.get("help", "")))


@dataclass(frozen=True)
class MLProject:
    """A step folder's MLproject as windpipe reads it: each entry point's parameters and command template."""

    folder: Path
    entry_points: dict[str, dict[str, Parameter]]
    commands: dict[str, str]


def mlproject_entry_points(folder: Path | str) -> dict[str, dict[str, Parameter]]:
    """The entry points of `<folder>/MLproject` and their parameters (with defaults and help)."""
    return read_mlproject(folder).entry_points


def read_mlproject(folder: Path | str) -> MLProject:
    """`<folder>/MLproject`: its entry points, their parameters (with defaults and help) and commands."""
    path = Path(folder) / MLPROJECT_FILE
    if not path.is_file():
        raise WindpipeError(f"The step folder {Path(folder)} has no {MLPROJECT_FILE}.",
                            "add one (see docs/steps.md, or make the step with `windpipe new-step`)")
    data = _read_yaml(path)
    eps = (data or {}).get("entry_points") if isinstance(data, Mapping) else None
    if not isinstance(eps, Mapping) or not eps:
        raise _bad(path, "has no `entry_points:` mapping.", "see https://mlflow.org/docs/latest/projects.html")
    out: dict[str, dict[str, Parameter]] = {}
    commands: dict[str, str] = {}
    for ep_name, ep in eps.items():
        raw = (ep or {}).get("parameters") if isinstance(ep, Mapping) else None
        if raw is not None and not isinstance(raw, Mapping):
            raise _bad(path, f"entry point {ep_name!r}: `parameters` must be a mapping of name -> {{type, default}}.")
        out[str(ep_name)] = {str(k): _parameter(path, str(k), v) for k, v in (raw or {}).items()}
        command = ep.get("command") if isinstance(ep, Mapping) else None
        if isinstance(command, str):
            commands[str(ep_name)] = command
    return MLProject(Path(folder), out, commands)


def step_defaults(step: str, entry_point: str = "main", root: Path | str | None = None) -> dict[str, str]:
    """The MLproject defaults of a step's entry point (required parameters left out): for code that calls
    a step body directly (notebooks, benchmarks, tests) with the same values `mlflow run` would pass."""
    folder = Path(root or default_projects_dir()) / step
    params = mlproject_entry_points(folder).get(entry_point)
    if params is None:
        raise WindpipeError(f"The step {step!r} has no entry point {entry_point!r}.",
                            f"use one of {', '.join(mlproject_entry_points(folder))}")
    return {p.name: p.default_text for p in params.values() if p.default_text is not None}


def _port(path: Path, raw: Any, direction: str) -> Port:
    if isinstance(raw, str):
        raw = {"entity": raw}
    if not isinstance(raw, Mapping) or not raw.get("entity"):
        raise _bad(path, f"each of `{direction}` needs an `entity:` name (got {raw!r}).")
    unknown = set(raw) - PORT_KEYS
    if unknown:
        keys = ", ".join(sorted(map(str, unknown)))
        raise _bad(path, f"{direction} entry {raw['entity']!r} has unknown key(s) {keys}.")
    name = str(raw["entity"])
    known = ENTITIES.get(name)
    declared = raw.get("columns")
    if declared is not None and not isinstance(declared, Mapping):
        raise _bad(path, f"`columns` of entity {name!r} must be a mapping of column -> kind.")
    if known is not None:
        if declared is not None and dict(declared) != known.columns:
            raise _bad(path, f"entity {name!r} declares columns {dict(declared)} but windpipe.entities.schema "
                             f"defines {known.columns}.",
                       f"drop `columns:` for {name} (the schema comes from windpipe) or rename the entity")
        columns, kind, external, description = dict(known.columns), known.kind, known.external, known.description
    else:
        kind = str(raw.get("kind", "table"))
        if kind not in ENTITY_KINDS:
            raise _bad(path, f"entity {name!r} has kind {kind!r}; use {', '.join(ENTITY_KINDS)}.")
        columns = {str(c): str(k) for c, k in (declared or {}).items()}
        if kind == "table" and not columns:
            raise _bad(path, f"entity {name!r} is not one windpipe knows ({', '.join(ENTITIES)}), so it must "
                             f"declare `columns: {{name: kind}}` (kinds: {', '.join(COLUMN_KINDS)}).")
        bad = {c: k for c, k in columns.items() if k not in COLUMN_KINDS}
        if bad:
            raise _bad(path, f"entity {name!r} has columns of unknown kind {bad}; use {', '.join(COLUMN_KINDS)}.")
        external, description = False, str(raw.get("description", ""))
    return Port(entity=name, columns=columns, kind=kind, parameter=raw.get("parameter"),
                external=bool(raw.get("external", external)), collect=bool(raw.get("all", False)),
                description=description)


def _ports(path: Path, raw: Any, direction: str) -> tuple[Port, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _bad(path, f"`{direction}` must be a list of entities.")
    ports = tuple(_port(path, r, direction) for r in raw)
    seen = [p.entity for p in ports]
    dupes = sorted({n for n in seen if seen.count(n) > 1})
    if dupes:
        raise _bad(path, f"`{direction}` lists {', '.join(dupes)} more than once.")
    return ports


def _presets(path: Path, raw: Any) -> dict[str, dict[str, str]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not all(isinstance(v, Mapping | None) for v in raw.values()):
        raise _bad(path, "`presets` must map a preset name (full, quick) to {parameter: value}.")
    return {str(k): {str(p): _text(v) for p, v in (vals or {}).items()} for k, vals in raw.items()}


def _queue(path: Path, raw: Any) -> str | None:
    """A worker queue name: letters, digits, `-`, `_`, `.` (edge workers take it in `--queues a,b`)."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", raw):
        raise _bad(path, f"`queue: {raw!r}` is not a queue name (letters, digits, `-`, `_`, `.`; no commas).",
                   "name the queue the workers that can run this step listen on, e.g. `queue: heavy`")
    return raw


def _text(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_interface(data: Any, folder: Path, path: Path | None = None,
                    entry_points: dict[str, dict[str, Parameter]] | None = None) -> StepInterface:
    """Validate a step.yaml document (already parsed) against its MLproject's entry points."""
    path = path or folder / SPEC_FILE
    if not isinstance(data, Mapping):
        raise _bad(path, "must be a mapping with at least `step:`.")
    unknown = set(data) - SPEC_KEYS
    if unknown:
        hint = (" (parameters and their defaults live in the MLproject only)"
                if {"entry_points", "parameters"} & set(unknown) else "")
        raise _bad(path, f"unknown key(s) {', '.join(sorted(map(str, unknown)))}{hint}.")
    name = data.get("step")
    if not name or not isinstance(name, str):
        raise _bad(path, "lacks `step: <name>`.")
    eps = entry_points if entry_points is not None else mlproject_entry_points(folder)
    entry_point = str(data.get("entry_point", "main"))
    if entry_point not in eps:
        raise _bad(path, f"names the entry point {entry_point!r}, which the MLproject does not have "
                         f"({', '.join(eps)}).", "fix `entry_point:` or add it to the MLproject")
    pipeline = str(data.get("pipeline", "training"))
    if pipeline not in PIPELINES:
        raise _bad(path, f"`pipeline: {pipeline}` is not one of {', '.join(PIPELINES)}.")
    spec = StepInterface(
        name=name, folder=folder, inputs=_ports(path, data.get("inputs"), "inputs"),
        outputs=_ports(path, data.get("outputs"), "outputs"), entry_points=eps, entry_point=entry_point,
        pipeline="none" if data.get("driver") else pipeline, description=str(data.get("description", "")),
        driver=bool(data.get("driver", False)), metrics=tuple(map(str, data.get("metrics") or ())),
        presets=_presets(path, data.get("presets")), queue=_queue(path, data.get("queue")))
    params = spec.parameters
    for port in spec.inputs + spec.outputs:
        if port.parameter and port.parameter not in params:
            raise _bad(path, f"{port.entity!r} names the parameter {port.parameter!r}, which the {entry_point} "
                             f"entry point of the MLproject does not have ({', '.join(params) or 'none'}).",
                       f"add {port.parameter} to the MLproject's {entry_point} parameters or fix the name")
    for preset, values in spec.presets.items():
        spec.check_parameters(values, f"preset {preset!r} in {path}")
    return spec


def load_interface(folder: Path | str) -> StepInterface:
    """Read and validate `<folder>/step.yaml` with `<folder>/MLproject`."""
    folder = Path(folder)
    if not (folder / MLPROJECT_FILE).is_file():
        raise WindpipeError(f"The step folder {folder} has no {MLPROJECT_FILE}, so MLflow cannot run it.",
                            f"add {folder / MLPROJECT_FILE} (see docs/steps.md), or remove the folder")
    return parse_interface(_read_yaml(folder / SPEC_FILE), folder)


def step_folders(root: Path | str | None = None) -> list[Path]:
    """Every folder below `root` (default: projects/ of this checkout) that holds a step.yaml or an MLproject."""
    root = Path(root) if root else default_projects_dir()
    found = {p.parent for pattern in (SPEC_FILE, MLPROJECT_FILE) for p in root.glob(f"*/{pattern}")}
    return sorted(found)


def missing_interfaces(root: Path | str | None = None) -> list[Path]:
    """Step folders that have an MLproject but no step.yaml yet."""
    return [f for f in step_folders(root) if not (f / SPEC_FILE).exists()]


def load_interfaces(root: Path | str | None = None) -> list[StepInterface]:
    """The interfaces of the steps below `root` (default: projects/ of this checkout; the commands pass
    WINDPIPE_PROJECTS's), by name.

    A folder with an MLproject but no step.yaml is skipped (`windpipe steps` lists it); a step.yaml
    without an MLproject is an error, before anything runs.
    """
    specs = [load_interface(f) for f in step_folders(root) if (f / SPEC_FILE).exists()]
    seen: dict[str, Path] = {}
    for s in specs:
        if s.name in seen:
            raise WindpipeError(f"Two step folders declare the step {s.name!r}: {seen[s.name]} and {s.folder}.",
                                "give each step.yaml a unique `step:` name")
        seen[s.name] = s.folder
    return sorted(specs, key=lambda s: s.name)

"""Step interfaces (`projects/<step>/step.yaml`), the pipeline DAG they form, and where each step's code lives.

A step's interface names the entities it reads and writes and its parameters per entry point:

    step: lr
    description: fit a linear regression on the processed entity
    inputs:
      - {entity: processed, parameter: processed_uri}   # this parameter carries the entity's URI
    outputs:
      - {entity: model, tag: windpipe.model_uri}        # this run tag holds the URI written
    entry_points:
      main:
        parameters:
          processed_uri: {type: string, default: latest}

Entities known to `windpipe.entities.ENTITIES` take their schema from there; any other entity
declares `columns: {name: kind}`. The step-level `inputs`/`outputs` are what the `main` entry
point does and make the DAG; other entry points may list their own (informational). A step with
`driver: true` (the pipeline) runs the others and is not part of the entity flow.

Used by the pipeline driver (`build_graph(load_specs()).order`, `step_source`), `windpipe graph`,
`windpipe new-step` and `windpipe export-step`. Nothing here touches MLflow.
"""

from __future__ import annotations

import graphlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from windpipe.entities import ENTITIES, TIMESTAMP, Entity
from windpipe.errors import WindpipeError

SPEC_FILE = "step.yaml"
MLPROJECT_FILE = "MLproject"
COLUMN_KINDS = ("datetime", "float", "int")  # what Entity.validate checks
PARAM_TYPES = ("string", "float", "path", "uri")
ENTITY_TAG_PREFIX = "windpipe.entity."


# ---------------------------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Parameter:
    """An MLproject parameter: name, type (string, float, path, uri) and default (None: required)."""

    name: str
    type: str = "string"
    default: Any = None

    def same_as(self, other: Parameter) -> bool:
        return self.name == other.name and self.type == other.type and _same_default(self, other)


@dataclass(frozen=True)
class Port:
    """One entity a step reads (input) or writes (output)."""

    entity: str
    columns: dict[str, str]
    kind: str = "table"  # table | model | files
    parameter: str | None = None  # the parameter that carries the entity's URI (input) or path (output)
    tag: str | None = None  # output: the run tag that holds the written entity's URI
    external: bool = False  # input: may come from outside the pipeline (raw downloads, new features)
    description: str = ""

    def as_entity(self) -> Entity:
        """The `windpipe.entities.Entity` for this port (the registry's, or one built from the declared columns)."""
        if self.entity in ENTITIES:
            return ENTITIES[self.entity]
        return Entity(name=self.entity, columns=dict(self.columns), filename=f"{self.entity}.parquet",
                      index=TIMESTAMP if TIMESTAMP in self.columns else None, kind=self.kind,
                      description=self.description)


@dataclass(frozen=True)
class EntryPoint:
    name: str
    parameters: dict[str, Parameter]
    inputs: tuple[Port, ...] = ()
    outputs: tuple[Port, ...] = ()


@dataclass(frozen=True)
class StepSpec:
    """A step's interface, read from `<folder>/step.yaml`."""

    name: str
    folder: Path
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    entry_points: dict[str, EntryPoint]
    description: str = ""
    driver: bool = False
    metrics: tuple[str, ...] = ()
    runs: tuple[str, ...] = ()  # a driver: the steps it runs

    def input(self, entity: str) -> Port | None:
        return next((p for p in self.inputs if p.entity == entity), None)

    def output(self, entity: str) -> Port | None:
        return next((p for p in self.outputs if p.entity == entity), None)

    @property
    def parameters(self) -> dict[str, Parameter]:
        """The main entry point's parameters (or the first entry point's)."""
        ep = self.entry_points.get("main") or next(iter(self.entry_points.values()))
        return ep.parameters


@dataclass(frozen=True)
class StepSource:
    """Where a step's MLflow project lives: a local folder or a git URI (`#subdir` allowed), maybe pinned."""

    uri: str
    version: str | None = None

    @property
    def is_git(self) -> bool:
        return _looks_remote(self.uri) or self.version is not None


# ---------------------------------------------------------------------------------------------- loading


def projects_dir() -> Path:
    """The `projects/` folder of this checkout."""
    from windpipe.settings import repo_root

    return repo_root() / "projects"


def _read_yaml(path: Path) -> Any:  # noqa: ANN401 - any YAML document
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WindpipeError(f"{path} does not exist.",
                            "write it (see docs/steps.md) or pass the right folder") from None
    except yaml.YAMLError as exc:
        raise WindpipeError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}).",
                            "fix the YAML syntax (indentation, colons, quotes)") from None


def _bad(path: Path, what: str, fix: str = "see docs/steps.md for the step.yaml format") -> WindpipeError:
    return WindpipeError(f"{path}: {what}", fix)


def _parameter(path: Path, name: str, raw: Any) -> Parameter:  # noqa: ANN401
    if isinstance(raw, str):  # MLproject shorthand `name: type`
        raw = {"type": raw}
    if not isinstance(raw, Mapping):
        raise _bad(path, f"parameter {name!r} must be a mapping like {{type: string, default: x}}.")
    ptype = str(raw.get("type", "string"))
    if ptype not in PARAM_TYPES:
        raise _bad(path, f"parameter {name!r} has type {ptype!r}; use one of {', '.join(PARAM_TYPES)}.")
    return Parameter(name=str(name), type=ptype, default=raw.get("default"))


def _parameters(path: Path, raw: Any) -> dict[str, Parameter]:  # noqa: ANN401
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise _bad(path, "`parameters` must be a mapping of name -> {type, default}.")
    return {str(k): _parameter(path, str(k), v) for k, v in raw.items()}


def _port(path: Path, raw: Any, direction: str) -> Port:  # noqa: ANN401
    if isinstance(raw, str):
        raw = {"entity": raw}
    if not isinstance(raw, Mapping) or not raw.get("entity"):
        raise _bad(path, f"each of `{direction}` needs an `entity:` name (got {raw!r}).")
    name = str(raw["entity"])
    known = ENTITIES.get(name)
    declared = raw.get("columns")
    if declared is not None and not isinstance(declared, Mapping):
        raise _bad(path, f"`columns` of entity {name!r} must be a mapping of column -> kind.")
    if known is not None:
        if declared is not None and dict(declared) != known.columns:
            raise _bad(path, f"entity {name!r} declares columns {dict(declared)} but windpipe.entities "
                             f"defines {known.columns}.",
                       f"drop `columns:` for {name} (the schema comes from windpipe.entities) or rename the entity")
        columns, kind, external, description = dict(known.columns), known.kind, known.external, known.description
    else:
        kind = str(raw.get("kind", "table"))
        if kind not in ("table", "model", "files"):
            raise _bad(path, f"entity {name!r} has kind {kind!r}; use table, model or files.")
        columns = {str(c): str(k) for c, k in (declared or {}).items()}
        if kind == "table" and not columns:
            raise _bad(path, f"entity {name!r} is not in windpipe.entities.ENTITIES, so it must declare "
                             f"`columns: {{name: kind}}` (kinds: {', '.join(COLUMN_KINDS)}).")
        bad = {c: k for c, k in columns.items() if k not in COLUMN_KINDS}
        if bad:
            raise _bad(path, f"entity {name!r} has columns of unknown kind {bad}; use {', '.join(COLUMN_KINDS)}.")
        external, description = False, str(raw.get("description", ""))
    # an output's URI is in this run tag (default windpipe.entity.<name>; `tag: null` when none is set)
    tag = raw.get("tag", f"{ENTITY_TAG_PREFIX}{name}" if direction == "outputs" else None)
    return Port(entity=name, columns=columns, kind=kind, parameter=raw.get("parameter"), tag=tag,
                external=bool(raw.get("external", external)), description=description)


def _ports(path: Path, raw: Any, direction: str) -> tuple[Port, ...]:  # noqa: ANN401
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _bad(path, f"`{direction}` must be a list of entities.")
    ports = tuple(_port(path, r, direction) for r in raw)
    names = [p.entity for p in ports]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _bad(path, f"`{direction}` lists {', '.join(dupes)} more than once.")
    return ports


def parse_spec(data: Any, folder: Path, path: Path | None = None) -> StepSpec:  # noqa: ANN401
    """Validate a step.yaml document (already parsed) into a StepSpec."""
    path = path or folder / SPEC_FILE
    if not isinstance(data, Mapping):
        raise _bad(path, "must be a mapping with at least `step:` and `entry_points:`.")
    unknown = set(data) - {"step", "description", "driver", "inputs", "outputs", "metrics", "runs", "entry_points"}
    if unknown:
        raise _bad(path, f"unknown key(s) {', '.join(sorted(map(str, unknown)))}.")
    name = data.get("step")
    if not name or not isinstance(name, str):
        raise _bad(path, "lacks `step: <name>`.")
    eps_raw = data.get("entry_points")
    if not isinstance(eps_raw, Mapping) or not eps_raw:
        raise _bad(path, "lacks `entry_points:` (at least `main:` with its parameters, as in the MLproject).")
    eps: dict[str, EntryPoint] = {}
    for ep_name, ep in eps_raw.items():
        ep = ep or {}
        if not isinstance(ep, Mapping):
            raise _bad(path, f"entry point {ep_name!r} must be a mapping with `parameters:`.")
        eps[str(ep_name)] = EntryPoint(str(ep_name), _parameters(path, ep.get("parameters")),
                                       _ports(path, ep.get("inputs"), "inputs"),
                                       _ports(path, ep.get("outputs"), "outputs"))
    spec = StepSpec(name=name, folder=folder, inputs=_ports(path, data.get("inputs"), "inputs"),
                    outputs=_ports(path, data.get("outputs"), "outputs"), entry_points=eps,
                    description=str(data.get("description", "")), driver=bool(data.get("driver", False)),
                    metrics=tuple(map(str, data.get("metrics") or ())), runs=tuple(map(str, data.get("runs") or ())))
    all_params = {p for ep in eps.values() for p in ep.parameters}
    for port in spec.inputs + tuple(p for ep in eps.values() for p in ep.inputs):
        if port.parameter and port.parameter not in all_params:
            raise _bad(path, f"input {port.entity!r} names parameter {port.parameter!r}, which no entry point has.",
                       f"add {port.parameter} to the entry point's parameters or fix the name")
    return spec


def load_spec(folder: Path | str) -> StepSpec:
    """Read and validate `<folder>/step.yaml`."""
    folder = Path(folder)
    return parse_spec(_read_yaml(folder / SPEC_FILE), folder)


def step_folders(root: Path | str | None = None) -> list[Path]:
    """Every folder below `root` (default: projects/) that holds an MLproject."""
    root = Path(root) if root else projects_dir()
    return sorted(p.parent for p in root.glob(f"*/{MLPROJECT_FILE}"))


def missing_interfaces(root: Path | str | None = None) -> list[Path]:
    """Step folders that have an MLproject but no step.yaml yet."""
    return [f for f in step_folders(root) if not (f / SPEC_FILE).exists()]


def load_specs(root: Path | str | None = None) -> list[StepSpec]:
    """The interfaces of the steps below `root` (default: projects/), by name; folders without one are skipped."""
    specs = [load_spec(f) for f in step_folders(root) if (f / SPEC_FILE).exists()]
    seen: dict[str, Path] = {}
    for s in specs:
        if s.name in seen:
            raise WindpipeError(f"Two step folders declare the step {s.name!r}: {seen[s.name]} and {s.folder}.",
                                "give each step.yaml a unique `step:` name")
        seen[s.name] = s.folder
    return sorted(specs, key=lambda s: s.name)


# ---------------------------------------------------------------------------------------------- MLproject


def mlproject_entry_points(folder: Path | str) -> dict[str, dict[str, Parameter]]:
    """The entry points of `<folder>/MLproject` and their parameters."""
    path = Path(folder) / MLPROJECT_FILE
    data = _read_yaml(path)
    eps = (data or {}).get("entry_points") if isinstance(data, Mapping) else None
    if not isinstance(eps, Mapping):
        raise _bad(path, "has no `entry_points:` mapping.", "see https://mlflow.org/docs/latest/projects.html")
    return {str(n): _parameters(path, (ep or {}).get("parameters")) for n, ep in eps.items()}


def _same_default(a: Parameter, b: Parameter) -> bool:
    if a.default is None or b.default is None:
        return a.default is None and b.default is None
    try:
        return math.isclose(float(a.default), float(b.default))
    except (TypeError, ValueError):
        return str(a.default) == str(b.default)


def interface_disagreements(spec: StepSpec, folder: Path | str | None = None) -> list[str]:
    """How the interface's entry points and parameters differ from the MLproject's (empty: they agree)."""
    mlp = mlproject_entry_points(folder or spec.folder)
    out = []
    for ep in sorted(set(mlp) ^ set(spec.entry_points)):
        where = "MLproject" if ep in mlp else "step.yaml"
        out.append(f"entry point {ep!r} is only in {where}")
    for ep in sorted(set(mlp) & set(spec.entry_points)):
        a, b = spec.entry_points[ep].parameters, mlp[ep]
        for p in sorted(set(a) ^ set(b)):
            out.append(f"{ep}: parameter {p!r} is only in {'step.yaml' if p in a else 'MLproject'}")
        for p in sorted(set(a) & set(b)):
            if not a[p].same_as(b[p]):
                out.append(f"{ep}: parameter {p!r} is {{type: {a[p].type}, default: {a[p].default!r}}} in step.yaml "
                           f"but {{type: {b[p].type}, default: {b[p].default!r}}} in MLproject")
    return out


def check_interface(spec: StepSpec, folder: Path | str | None = None) -> None:
    """Raise WindpipeError unless the interface agrees with the MLproject."""
    diffs = interface_disagreements(spec, folder)
    if diffs:
        raise WindpipeError(f"The interface of step {spec.name!r} ({spec.folder / SPEC_FILE}) disagrees with its "
                            f"MLproject: " + "; ".join(diffs) + ".",
                            "make the entry points and parameters of step.yaml match the MLproject")


# ---------------------------------------------------------------------------------------------- the DAG


def step_node(name: str) -> str:
    return f"step:{name}"


def entity_node(name: str) -> str:
    return f"entity:{name}"


def node_label(node: str) -> str:
    return node.split(":", 1)[1]


@dataclass
class PipelineGraph:
    """Steps and entities as a DAG: step -> entity it writes -> step that reads it.

    `order` lists the (non-driver) steps so that every step comes after the producers of its
    inputs; `layers` groups all nodes by longest distance from a source (for drawing).
    """

    specs: dict[str, StepSpec]
    edges: list[tuple[str, str]]
    layers: list[list[str]]
    order: list[str]
    external: list[str] = field(default_factory=list)
    drivers: list[str] = field(default_factory=list)

    def producers(self, entity: str) -> list[str]:
        return [node_label(a) for a, b in self.edges if b == entity_node(entity)]

    def consumers(self, entity: str) -> list[str]:
        return [node_label(b) for a, b in self.edges if a == entity_node(entity)]

    def upstream(self, step: str) -> list[str]:
        """The steps that must run before `step` (transitively), in run order."""
        need: set[str] = set()
        todo = [step]
        while todo:
            for port in self.specs[todo.pop()].inputs:
                for prod in self.producers(port.entity):
                    if prod not in need:
                        need.add(prod)
                        todo.append(prod)
        return [s for s in self.order if s in need]

    @property
    def entities(self) -> list[str]:
        return [node_label(n) for layer in self.layers for n in layer if n.startswith("entity:")]


def _cycle_text(cycle: list[str]) -> str:
    return " -> ".join(node_label(n) for n in cycle)


def build_graph(specs: Iterable[StepSpec], external: Iterable[str] = ()) -> PipelineGraph:
    """The DAG of `specs`; raises WindpipeError on a cycle or an input no step produces.

    An input is satisfied when some step writes it, or it is external: marked `external: true`
    in the interface, external in windpipe.entities (raw, features), or listed in `external`.
    """
    specs = list(specs)
    by_name = {s.name: s for s in specs}
    flow = [s for s in specs if not s.driver]
    produced = {p.entity for s in flow for p in s.outputs}
    extra_external = set(external)
    for s in flow:
        for port in s.inputs:
            if port.entity not in produced and not port.external and port.entity not in extra_external:
                steps = ", ".join(x.name for x in flow) or "none"
                raise WindpipeError(
                    f"Step {s.name!r} reads the entity {port.entity!r}, which no step produces "
                    f"(steps: {steps}) and which is not external.",
                    f"add a step whose step.yaml lists {port.entity} under outputs (`windpipe new-step ... "
                    f"--outputs {port.entity}`), mark the input `external: true`, or fix the name in "
                    f"{s.folder / SPEC_FILE}")
    edges: list[tuple[str, str]] = []
    deps: dict[str, list[str]] = {}
    for s in flow:
        deps.setdefault(step_node(s.name), [])
        for port in s.inputs:
            edges.append((entity_node(port.entity), step_node(s.name)))
            deps[step_node(s.name)].append(entity_node(port.entity))
            deps.setdefault(entity_node(port.entity), [])
        for port in s.outputs:
            edges.append((step_node(s.name), entity_node(port.entity)))
            deps.setdefault(entity_node(port.entity), []).append(step_node(s.name))
    sorter = graphlib.TopologicalSorter(deps)
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        cycle = exc.args[1]
        steps = sorted({node_label(n) for n in cycle if n.startswith("step:")})
        raise WindpipeError(
            f"The step interfaces form a cycle: {_cycle_text(cycle)} (steps {', '.join(steps)}).",
            "a step must not read, directly or through other steps, an entity it writes: rename one "
            "entity or drop the input from " + ", ".join(str(by_name[s].folder / SPEC_FILE) for s in steps)) from None
    layers: list[list[str]] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        layers.append(ready)
        sorter.done(*ready)
    order = [node_label(n) for layer in layers for n in layer if n.startswith("step:")]
    ext = sorted({p.entity for s in flow for p in s.inputs if p.entity not in produced})
    return PipelineGraph(specs=by_name, edges=edges, layers=layers, order=order, external=ext,
                         drivers=[s.name for s in specs if s.driver])


def pipeline_graph(root: Path | str | None = None) -> PipelineGraph:
    """The DAG of every interface below `root` (default: projects/)."""
    return build_graph(load_specs(root))


# ---------------------------------------------------------------------------------------------- step sources


def _split_version(value: str) -> tuple[str, str | None]:
    """`uri@rev` -> (uri, rev); an `@` that belongs to the URI (git@host:...) is left alone."""
    head, sep, tail = value.rpartition("@")
    if sep and head and tail and "/" not in tail and ":" not in tail and "#" not in tail:
        return head, tail
    return value, None


def _looks_remote(uri: str) -> bool:
    return "://" in uri or uri.startswith("git@")


def step_source(step_name: str, overrides: Mapping[str, str] | None = None,
                root: Path | str | None = None) -> StepSource:
    """Where to run `step_name` from: `overrides[step_name]` if given, else the local folder `projects/<step>`.

    An override is a local folder, or a git URI (`https://...`, `git@host:org/repo.git`, `file:///path/repo`),
    optionally with `#subdir` and a pinned revision after a final `@`: `file:///tmp/lr@3f2c1ab`.
    Pass `source.uri` and `source.version` to `mlflow.projects.run(uri, version=...)`.
    """
    overrides = overrides or {}
    if step_name in overrides and overrides[step_name]:
        uri, version = _split_version(str(overrides[step_name]).strip())
        if _looks_remote(uri):
            return StepSource(uri, version)
        local = Path(uri.split("#", 1)[0]).expanduser().resolve()
        sub = uri.split("#", 1)[1] if "#" in uri else ""
        if not (local / sub / MLPROJECT_FILE).exists():
            raise WindpipeError(f"The source given for step {step_name!r} ({overrides[step_name]}) has no "
                                f"{MLPROJECT_FILE}.",
                                "pass a step folder, a git repository exported by `windpipe export-step`, or a git URI")
        return StepSource(str(local) + (f"#{sub}" if sub else ""), version)
    root = Path(root) if root else projects_dir()
    folder = root / step_name
    if not (folder / MLPROJECT_FILE).exists():
        known = ", ".join(f.name for f in step_folders(root)) or "none"
        raise WindpipeError(f"There is no step {step_name!r} in {root} (steps: {known}).",
                            f"create it (`windpipe new-step {step_name}`) or pass its git URI as an override")
    return StepSource(str(folder.resolve()), None)


def step_uri(step_name: str, overrides: Mapping[str, str] | None = None, root: Path | str | None = None) -> str:
    """The URI `mlflow run` takes for `step_name`: a local folder or a git URI (maybe with #subdir).

    A revision pinned in an override (`...@<commit>`) is left out: use `step_source(...).version`.
    """
    return step_source(step_name, overrides, root).uri

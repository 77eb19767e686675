"""The DAG the step interfaces form: step -> entity it writes -> step that reads it (pure).

    graph = build_graph(load_interfaces())                 # every step
    graph = build_graph(load_interfaces(), "training")     # the steps one pipeline runs
    graph.order, graph.upstream("rf"), graph.producers("model")

Cycles, an input no step produces, and an entity several steps write for a reader that takes
one are refused with a message naming the steps and the fix, before anything runs.
"""

from __future__ import annotations

import graphlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from windpipe.errors import WindpipeError
from windpipe.pipeline.interfaces import SPEC_FILE, StepInterface


def step_node(name: str) -> str:
    return f"step:{name}"


def entity_node(name: str) -> str:
    return f"entity:{name}"


def node_label(node: str) -> str:
    return node.split(":", 1)[1]


@dataclass
class PipelineGraph:
    """Steps and entities as a DAG.

    `order` lists the steps so that every step comes after the producers of its inputs (ties by
    name); `layers` groups all nodes by longest distance from a source (for drawing and for
    running side by side).
    """

    specs: dict[str, StepInterface]
    edges: list[tuple[str, str]]
    layers: list[list[str]]
    order: list[str]
    external: list[str] = field(default_factory=list)
    drivers: list[str] = field(default_factory=list)

    def producers(self, entity: str) -> list[str]:
        """The steps that write `entity`, in run order."""
        found = {node_label(a) for a, b in self.edges if b == entity_node(entity)}
        return [s for s in self.order if s in found]

    def consumers(self, entity: str) -> list[str]:
        found = {node_label(b) for a, b in self.edges if a == entity_node(entity)}
        return [s for s in self.order if s in found]

    def needs(self, step: str) -> list[str]:
        """The steps `step` reads from directly, in run order."""
        return [p for port in self.specs[step].inputs for p in self.producers(port.entity)]

    def upstream(self, step: str) -> list[str]:
        """The steps that must run before `step` (transitively), in run order."""
        need: set[str] = set()
        todo = [step]
        while todo:
            for prod in self.needs(todo.pop()):
                if prod not in need:
                    need.add(prod)
                    todo.append(prod)
        return [s for s in self.order if s in need]

    def downstream(self, step: str) -> list[str]:
        """The steps that depend on `step` (transitively), in run order."""
        return [s for s in self.order if step in self.upstream(s)]

    @property
    def entities(self) -> list[str]:
        return [node_label(n) for layer in self.layers for n in layer if n.startswith("entity:")]


def _cycle_text(cycle: list[str]) -> str:
    return " -> ".join(node_label(n) for n in cycle)


def build_graph(specs: Iterable[StepInterface], pipeline: str | None = None,
                external: Iterable[str] = ()) -> PipelineGraph:
    """The DAG of `specs` (only the steps of `pipeline` when given: training, prediction).

    An input is satisfied when some step of the graph writes it, or it is external: marked
    `external: true` in the interface, external in windpipe.entities.schema (raw, features), or
    listed in `external`. Raises WindpipeError on a cycle, an unproduced input, or an entity with
    several producers read by a port that takes one.
    """
    specs = list(specs)
    drivers = [s.name for s in specs if s.driver]  # (they run the others; not part of the entity flow)
    flow = [s for s in specs if not s.driver and (pipeline is None or s.pipeline == pipeline)]
    by_name = {s.name: s for s in flow}
    producers: dict[str, list[str]] = {}
    for s in flow:
        for port in s.outputs:
            producers.setdefault(port.entity, []).append(s.name)
    extra_external = set(external)
    for s in flow:
        for port in s.inputs:
            made_by = producers.get(port.entity, [])
            if not made_by and not port.external and port.entity not in extra_external:
                steps = ", ".join(x.name for x in flow) or "none"
                raise WindpipeError(
                    f"Step {s.name!r} reads the entity {port.entity!r}, which no step "
                    f"{'of the ' + pipeline + ' pipeline ' if pipeline else ''}produces (steps: {steps}) "
                    "and which is not external.",
                    f"add a step whose step.yaml lists {port.entity} under outputs (`windpipe new-step ... "
                    f"--outputs {port.entity}`), mark the input `external: true`, or fix the name in "
                    f"{s.folder / SPEC_FILE}")
            if len(made_by) > 1 and not port.collect:
                raise WindpipeError(
                    f"Step {s.name!r} reads one {port.entity!r}, but {len(made_by)} steps write it "
                    f"({', '.join(sorted(made_by))}).",
                    f"give each producer's entity its own name, or add `all: true` to the {port.entity} input in "
                    f"{s.folder / SPEC_FILE} to take every one of them")
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
    ext = sorted({p.entity for s in flow for p in s.inputs if p.entity not in producers})
    return PipelineGraph(specs={**by_name, **{s.name: s for s in specs if s.driver}}, edges=edges, layers=layers,
                         order=order, external=ext, drivers=drivers)

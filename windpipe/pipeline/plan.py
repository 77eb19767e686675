"""From the step graph and the user's flags to the runs to make: each step's entry point and parameters.

A step's parameters are, in order of precedence: the value of an input wired from its producer
(at run time), `-P step.name=value`, the preset (`quick`, `full`; declared in step.yaml), the
MLproject default. Everything a user can get wrong is refused here, before any run starts: an
unknown step or parameter in `-P`, an override of a wired input, a required parameter nothing
sets, an external input this run does not provide.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from windpipe.errors import UsageError, WindpipeError
from windpipe.pipeline.graph import PipelineGraph, build_graph
from windpipe.pipeline.interfaces import SPEC_FILE, StepInterface

PRESETS = ("full", "quick")


@dataclass(frozen=True)
class PlannedStep:
    """One step of a plan: what to run and with which parameters (inputs are wired at run time)."""

    name: str
    spec: StepInterface
    params: dict[str, str]  # MLproject defaults, then the preset, then -P overrides
    needs: tuple[str, ...]  # the steps whose outputs it reads (directly)

    @property
    def entry_point(self) -> str:
        return self.spec.entry_point


@dataclass
class Plan:
    """The steps of one pipeline run, in an order where every step follows the producers of its inputs."""

    graph: PipelineGraph
    steps: list[PlannedStep]
    external: dict[str, str] = field(default_factory=dict)  # external entity -> the value this run provides

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    def step(self, name: str) -> PlannedStep:
        return next(s for s in self.steps if s.name == name)


def parse_overrides(items: Iterable[str] | None) -> dict[str, dict[str, str]]:
    """`["rf.max_depth=8,12", "keras.epochs=5"]` -> {"rf": {"max_depth": "8,12"}, "keras": {"epochs": "5"}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        step, dot, param = name.partition(".")
        if not sep or not dot or not step.strip() or not param.strip():
            raise UsageError(f"Cannot read -P {item!r}.", "write it as STEP.NAME=VALUE, e.g. -P rf.max_depth=8,12")
        out.setdefault(step.strip(), {})[param.strip()] = value
    return out


def make_plan(specs: Iterable[StepInterface], pipeline: str = "training", preset: str = "full",
              overrides: Mapping[str, Mapping[str, str]] | None = None,
              external: Mapping[str, str] | None = None) -> Plan:
    """The plan for `pipeline` (training, prediction) from the interfaces, checked before anything runs."""
    if preset not in PRESETS:
        raise UsageError(f"Unknown preset {preset!r}.", f"use one of {', '.join(PRESETS)}")
    external = dict(external or {})
    graph = build_graph(specs, pipeline, external=external)
    overrides = {k: dict(v) for k, v in (overrides or {}).items()}
    unknown = sorted(set(overrides) - set(graph.order))
    if unknown:
        raise UsageError(f"-P names step(s) {', '.join(map(repr, unknown))}, which the {pipeline} pipeline does "
                         f"not have (steps: {', '.join(graph.order)}).",
                         "write -P STEP.NAME=VALUE with one of those steps, e.g. -P rf.max_depth=8,12")
    steps = []
    for name in graph.order:
        spec = graph.specs[name]
        own = overrides.get(name, {})
        spec.check_parameters(own, f"-P {name}.<name>=...")
        # the inputs the run wires: from a producer, or an external value this run provides
        wired = {p.parameter: p.entity for p in spec.inputs
                 if p.parameter and (p.entity not in graph.external or p.entity in external)}
        clash = sorted(set(own) & set(wired))
        if clash:
            raise UsageError(f"-P {name}.{clash[0]} sets a parameter the pipeline wires from the "
                             f"{wired[clash[0]]!r} entity.",
                             f"leave it out: the pipeline passes the {wired[clash[0]]} of this run "
                             f"(run `mlflow run {spec.folder}` yourself to pick another)")
        for port in spec.inputs:
            optional = port.parameter is not None and not spec.parameters[port.parameter].required
            if port.entity in graph.external and port.entity not in external and not optional:
                raise WindpipeError(f"Step {name!r} reads the external entity {port.entity!r}, which this "
                                    f"{pipeline} pipeline run does not provide.",
                                    f"pass it (for raw data: --raw DIR), or remove the input from "
                                    f"{spec.folder / SPEC_FILE}")
        params = {**spec.defaults(), **spec.presets.get(preset, {}), **own}
        missing = sorted(p for p, prm in spec.parameters.items() if prm.required and p not in params and p not in wired)
        if missing:
            raise UsageError(f"Step {name!r} needs the parameter(s) {', '.join(missing)}, which have no default.",
                             f"pass -P {name}.{missing[0]}=<value>, or give it a default in its MLproject")
        steps.append(PlannedStep(name, spec, params, tuple(dict.fromkeys(graph.needs(name)))))
    return Plan(graph, steps, external)

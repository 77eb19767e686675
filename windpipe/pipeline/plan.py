"""From the step graph and the user's flags to the runs to make: each step's entry point and parameters.

A step's parameters are, in order of precedence: the value of an input wired from its producer
(at run time), `-P step.name=value` (or the `params` of an Airflow DAG run's conf), the preset
(`quick`, `full`; declared in step.yaml), the MLproject default. Everything a user can get wrong is
refused here, before any run starts: an unknown step or parameter in `-P` or the conf, an override
of a wired input, a required parameter nothing sets, an external input this run does not provide.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from windpipe.errors import UsageError, WindpipeError
from windpipe.pipeline.graph import PipelineGraph, build_graph
from windpipe.pipeline.interfaces import SPEC_FILE, StepInterface, load_interfaces
from windpipe.settings import default_raw_dir, parse_bool

PRESETS = ("full", "quick")
TRAINING, PREDICTION = "training", "prediction"
# each environment manager MLflow Projects knows, and the tool it needs on PATH (local: this environment)
ENV_MANAGER_TOOLS = {"local": None, "virtualenv": "pyenv", "uv": "uv", "conda": "conda"}
ENV_MANAGERS = tuple(ENV_MANAGER_TOOLS)
CONF_SOURCE = "the DAG run's conf"


@dataclass
class PipelineConfig:
    """What a pipeline run is asked to do (from the command line, or from an Airflow DAG run's conf)."""

    external: dict[str, str] = field(default_factory=dict)  # external entity -> value (raw -> the raw folder)
    preset: str = "full"  # "quick": the small presets the step.yaml files declare
    force: bool = False
    env_manager: str = "local"
    # step name -> {param: value}: overrides of the step's parameters (-P step.name=value)
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    # run steps from a git repository (`mlflow run <git-uri>#projects/<step>`) instead of this checkout
    git_uri: str | None = None
    git_version: str | None = None
    pipeline: str = TRAINING
    projects: Path | None = None  # the folder of step folders (default: settings.projects_dir, read by the edges)
    jobs: int = 0  # steps run side by side; 0: one per core
    inbox: str | None = None  # prediction: where new feature files land (a folder or an S3 prefix)
    outputs: dict[str, str] = field(default_factory=dict)  # entity -> where a step writes it (predictions)
    source: str = "-P"  # where the overrides came from, for messages

    @property
    def quick(self) -> bool:
        return self.preset == "quick"

    @property
    def workers(self) -> int:
        return self.jobs if self.jobs > 0 else os.cpu_count() or 1


def conf_defaults(pipeline: str, inbox: str | None = None) -> dict[str, object]:
    """What an Airflow DAG run of `pipeline` takes in its conf, with the defaults (the DAG's params). `inbox`: the
    prediction DAG's (settings.inbox_uri where the DAG is built; None: the one of the machine that runs it)."""
    # from_git: run the steps from this repository (`URI#projects/<step>`) at git_version, which the DAG run's
    # first task resolves to one commit for all of its tasks (remote workers fetch it; see docs/orchestration.md)
    common: dict[str, object] = {"force": False, "params": {}, "env_manager": "local", "from_git": "",
                                 "git_version": ""}
    if pipeline == TRAINING:
        return {"raw": str(default_raw_dir()), "quick": False, **common}
    if pipeline == PREDICTION:
        return {"inbox": inbox or "", **common}
    raise UsageError(f"There is no {pipeline!r} pipeline.", f"use {TRAINING} or {PREDICTION}")


def _flag(key: str, value: object) -> bool:
    try:
        return parse_bool(value)
    except ValueError:
        pass
    raise UsageError(f"{CONF_SOURCE}: {key} must be true or false, got {value!r}.", f'pass {{"{key}": true}}')


def _text(key: str, value: object) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{CONF_SOURCE}: {key} must be a string, got {value!r}.", f'pass {{"{key}": "..."}}')
    return value.strip()


def check_env_manager(name: str, where: str = "--env-manager") -> None:
    """Refuse an environment manager MLflow does not know, or one whose tool this machine lacks, before any run."""
    import shutil

    if name not in ENV_MANAGER_TOOLS:
        raise UsageError(f"Unknown environment manager {name!r} ({where}).",
                         f"use one of {', '.join(ENV_MANAGERS)} (local: this environment)")
    tool = ENV_MANAGER_TOOLS[name]
    if tool and not shutil.which(tool):
        raise UsageError(f"The {name} environment manager needs `{tool}`, which is not on this machine's PATH "
                         f"({where}).", f"use local (this environment), or install {tool}")


def _absolute(key: str, value: object) -> Path:
    """A folder named in a DAG run's conf: its tasks run in a temporary folder, so a relative path would be
    resolved against that, on whichever machine runs the task."""
    path = Path(str(value))
    if not path.is_absolute():
        raise UsageError(f"{CONF_SOURCE}: {key} must be an absolute path, got {str(value)[:200]!r} (the DAG's tasks "
                         "run in a temporary folder, not in your checkout).", f'pass e.g. {{"{key}": "/data/{key}"}}')
    return path


def conf_overrides(params: object) -> dict[str, dict[str, str]]:
    """The conf's `params`: {"rf.max_depth": "8,12"}, {"rf": {"max_depth": "8,12"}} or ["rf.max_depth=8,12"]."""
    if isinstance(params, list | tuple):
        return parse_overrides([str(p) for p in params], CONF_SOURCE)
    if not isinstance(params, Mapping):
        raise UsageError(f"{CONF_SOURCE}: params must map STEP.NAME to a value, got {params!r}.",
                         'pass e.g. {"params": {"rf.max_depth": "8,12"}}')
    out: dict[str, dict[str, str]] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            for name, v in value.items():
                out.setdefault(str(key), {})[str(name)] = str(v)
        else:
            parsed = parse_overrides([f"{key}={value}"], CONF_SOURCE)
            out.update({k: {**out.get(k, {}), **v} for k, v in parsed.items()})
    return out


def config_from_conf(pipeline: str, conf: Mapping[str, object] | None, inbox: str | None = None) -> PipelineConfig:
    """The PipelineConfig of an Airflow DAG run's conf (the defaults filled in); unknown keys are refused. `inbox`:
    the prediction DAG's default inbox (None: config.inbox stays None, the driver reads settings.inbox_uri)."""
    defaults = conf_defaults(pipeline, inbox)
    conf = dict(conf or {})
    unknown = sorted(set(conf) - set(defaults))
    if unknown:
        raise UsageError(f"{CONF_SOURCE} has unknown key(s) {', '.join(map(repr, unknown))}; the {pipeline} "
                         f"DAG takes {', '.join(defaults)}.",
                         'trigger it with only those keys, e.g. {"params": {"rf.max_depth": "8,12"}}')
    values = {**defaults, **conf}
    env_manager = str(values["env_manager"] or "local")
    check_env_manager(env_manager, f"{CONF_SOURCE}: env_manager")
    config = PipelineConfig(force=_flag("force", values["force"]), env_manager=env_manager,
                            overrides=conf_overrides(values["params"] or {}), pipeline=pipeline, source=CONF_SOURCE,
                            git_uri=_text("from_git", values["from_git"]) or None,
                            git_version=_text("git_version", values["git_version"]) or None)
    if config.git_version and not config.git_uri:
        raise UsageError(f"{CONF_SOURCE}: git_version {config.git_version!r} needs from_git.",
                         'pass the repository too, e.g. {"from_git": "https://host/team/windpipe.git", '
                         '"git_version": "main"}')
    if pipeline == TRAINING:
        config.external = {"raw": str(_absolute("raw", values["raw"]))}
        config.preset = "quick" if _flag("quick", values["quick"]) else "full"
    else:
        inbox = str(values["inbox"] or "")
        if inbox:
            config.inbox = inbox if inbox.startswith("s3://") else str(_absolute("inbox", inbox))
    return config


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
    outputs: dict[str, str] = field(default_factory=dict)  # entity -> where this run writes it

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    def step(self, name: str) -> PlannedStep:
        return next(s for s in self.steps if s.name == name)


def parse_overrides(items: Iterable[str] | None, source: str = "-P") -> dict[str, dict[str, str]]:
    """`["rf.max_depth=8,12", "keras.epochs=5"]` -> {"rf": {"max_depth": "8,12"}, "keras": {"epochs": "5"}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        step, dot, param = name.partition(".")
        if not sep or not dot or not step.strip() or not param.strip():
            raise UsageError(f"Cannot read {'-P' if source == '-P' else source + ' params'} {item[:200]!r}: the "
                             "parameter's name is not STEP.NAME.",
                             "write it as STEP.NAME=VALUE, e.g. rf.max_depth=8,12")
        out.setdefault(step.strip(), {})[param.strip()] = value
    return out


def make_plan(specs: Iterable[StepInterface], pipeline: str = TRAINING, preset: str = "full",
              overrides: Mapping[str, Mapping[str, str]] | None = None,
              external: Mapping[str, str] | None = None, source: str = "-P",
              outputs: Mapping[str, str] | None = None) -> Plan:
    """The plan for `pipeline` (training, prediction) from the interfaces, checked before anything runs.

    `external` gives the values of external inputs (raw -> a folder); `outputs` the paths of outputs a
    step writes where its parameter says (predictions -> a file). `source` names where the overrides
    came from (`-P`, or an Airflow DAG run's conf) in messages.
    """
    outputs = dict(outputs or {})
    if preset not in PRESETS:
        raise UsageError(f"Unknown preset {preset!r}.", f"use one of {', '.join(PRESETS)}")
    external = dict(external or {})
    graph = build_graph(specs, pipeline, external=external)
    overrides = {k: dict(v) for k, v in (overrides or {}).items()}
    unknown = sorted(set(overrides) - set(graph.order))
    if unknown:
        raise UsageError(f"{source} names step(s) {', '.join(map(repr, unknown))}, which the {pipeline} pipeline "
                         f"does not have (steps: {', '.join(graph.order)}).",
                         "name one of those steps: STEP.NAME=VALUE, e.g. rf.max_depth=8,12")
    steps = []
    for name in graph.order:
        spec = graph.specs[name]
        own = overrides.get(name, {})
        try:
            spec.check_parameters(own, f"{source} {name}.<name>=...")
        except WindpipeError as exc:  # the command (or the DAG run) was called the wrong way
            raise UsageError(exc.problem, exc.fix) from None
        # the inputs the run wires: from a producer, or an external value this run provides
        wired = {p.parameter: p.entity for p in spec.inputs
                 if p.parameter and (p.entity not in graph.external or p.entity in external)}
        placed = {p.parameter: outputs[p.entity] for p in spec.outputs if p.parameter and p.entity in outputs}
        wired.update({p.parameter: p.entity for p in spec.outputs if p.parameter in placed})
        clash = sorted(set(own) & set(wired))
        if clash:
            raise UsageError(f"{source} {name}.{clash[0]} sets a parameter the pipeline wires from the "
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
        params = {**spec.defaults(), **spec.presets.get(preset, {}), **own, **placed}
        missing = sorted(p for p, prm in spec.parameters.items() if prm.required and p not in params and p not in wired)
        if missing:
            raise UsageError(f"Step {name!r} needs the parameter(s) {', '.join(missing)}, which have no default.",
                             f"pass -P {name}.{missing[0]}=<value>, or give it a default in its MLproject")
        steps.append(PlannedStep(name, spec, params, tuple(dict.fromkeys(graph.needs(name)))))
    return Plan(graph, steps, external, outputs)


def plan_for(config: PipelineConfig, projects: Path | None = None) -> Plan:
    """The plan of this config from the interfaces below `config.projects` (else `projects`, which the edges read
    from settings; else this checkout's projects/), checked before anything runs."""
    check_env_manager(config.env_manager, "--env-manager" if config.source == "-P" else config.source)
    external = {k: str(Path(v).resolve()) if ":/" not in str(v) else str(v) for k, v in config.external.items()}
    specs = load_interfaces(config.projects or projects)
    return make_plan(specs, config.pipeline, config.preset, config.overrides, external, config.source, config.outputs)

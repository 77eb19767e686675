"""Running a plan: every step an `mlflow run` of its own project, a child of one pipeline run, reused
from the cache when nothing it depends on changed.

Steps hand entities over by run id and artifact URI (`runs:/<id>/entities/processed.parquet`),
never by local paths: a step's wired input parameter gets the URI its producer's run recorded
(`windpipe.names.entity_tag`). The caller opens the pipeline run (`windpipe.steps.driver`), so
the step runs become its children.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from windpipe import names
from windpipe.errors import UsageError, WindpipeError, first_line
from windpipe.pipeline.cache import cache_key, content_hash, find_cached
from windpipe.pipeline.interfaces import load_interfaces
from windpipe.pipeline.plan import Plan, PlannedStep, make_plan
from windpipe.settings import Settings
from windpipe.tracking.client import ServerDown, diagnose
from windpipe.tracking.runs import code_version

ENV_MANAGERS = ("local", "virtualenv", "uv", "conda")


@dataclass
class PipelineConfig:
    """What a pipeline run is asked to do."""

    external: dict[str, str] = field(default_factory=dict)  # external entity -> value (raw -> the raw folder)
    preset: str = "full"  # "quick": the small presets the step.yaml files declare
    force: bool = False
    env_manager: str = "local"
    # step name -> {param: value}: overrides of the step's parameters (-P step.name=value)
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    # run steps from a git repository (`mlflow run <git-uri>#projects/<step>`) instead of this checkout
    git_uri: str | None = None
    git_version: str | None = None
    pipeline: str = "training"
    projects: Path | None = None  # the folder of step folders (default: projects/)

    @property
    def quick(self) -> bool:
        return self.preset == "quick"


@dataclass
class StepResult:
    """One step of one pipeline run."""

    name: str
    run_id: str
    reused: bool
    seconds: float
    tags: dict[str, str]
    metrics: dict[str, float]
    key_metric: str | None = None

    @property
    def metric_value(self) -> float | None:
        return self.metrics.get(self.key_metric) if self.key_metric else None


def plan_for(config: PipelineConfig) -> Plan:
    """The plan of this config from the interfaces below `config.projects`, checked before anything runs."""
    if config.env_manager not in ENV_MANAGERS:
        raise UsageError(f"Unknown environment manager {config.env_manager!r}.",
                         f"pass --env-manager {' or '.join(ENV_MANAGERS[:3])}")
    external = {k: str(Path(v).resolve()) if "://" not in str(v) else str(v) for k, v in config.external.items()}
    return make_plan(load_interfaces(config.projects), config.pipeline, config.preset, config.overrides, external)


def project_uri(config: PipelineConfig, step: PlannedStep) -> str:
    """Where `mlflow run` finds a step: its folder in this checkout, or `<git-uri>#projects/<step folder>`."""
    if config.git_uri:
        return f"{config.git_uri}#projects/{step.spec.folder.name}"
    return str(step.spec.folder.resolve())


def resolve_git_version(git_uri: str, ref: str | None) -> str:
    """A commit id for `--from-git` (a branch or tag moves, so resolve it)."""
    ref = ref or "HEAD"
    if re.fullmatch(r"[0-9a-f]{40}", ref):
        return ref
    try:
        out = subprocess.run(["git", "ls-remote", git_uri, ref], capture_output=True, text=True,
                             timeout=60, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError) as exc:
        raise WindpipeError(f"Cannot resolve {ref!r} in {git_uri} ({first_line(exc)}).",
                            "check the repository URL and --git-version") from None
    if not out:
        raise WindpipeError(f"{git_uri} has no ref {ref!r}.", "pass an existing branch, tag or commit")
    return out[0]


def input_values(plan: Plan, step: PlannedStep, results: dict[str, StepResult]) -> dict[str, str]:
    """The wired input parameters of `step`: each producer's recorded URI (comma-joined for `all: true`)."""
    out: dict[str, str] = {}
    for port in step.spec.inputs:
        if not port.parameter:
            continue
        if port.entity in plan.external:
            out[port.parameter] = plan.external[port.entity]
            continue
        if port.entity in plan.graph.external:  # external, not provided: the parameter's default
            continue
        values = []
        for producer in plan.graph.producers(port.entity):
            value = results[producer].tags.get(port.tag)
            if not value:
                raise WindpipeError(f"The {producer} run {results[producer].run_id} recorded no {port.entity} "
                                    f"(tag {port.tag}), which step {step.name!r} reads.",
                                    "rerun the pipeline with --force (or fix the step so that it sets the tag)")
            values.append(value)
        out[port.parameter] = ",".join(values)
    return out


def _raise_if_down(what: str) -> None:
    """Fail fast, naming the server, when the tracking server or its artifact store does not answer: a step
    would find out only through MLflow's retries."""
    down = diagnose()
    if down is not None:
        raise ServerDown(f"{what}: {down.problem}",
                         f"{down.fix}; then run the pipeline again: finished steps are reused") from None


class _Interrupted(KeyboardInterrupt):
    pass


def _raise_interrupt(signum: int, frame: object) -> None:
    raise _Interrupted(f"signal {signum}")


def run_pipeline(settings: Settings, config: PipelineConfig, console: Any = None) -> list[StepResult]:
    """Run (or reuse) every step inside the active pipeline run; return one result per step.

    The caller opens the pipeline run (`windpipe.steps.driver`), so the step runs become its
    children. Everything a user can get wrong is refused before the first step starts.
    """
    import mlflow
    from rich.console import Console

    console = console or Console()
    plan = plan_for(config)
    parent = mlflow.active_run()
    if parent is None:
        raise WindpipeError("run_pipeline needs an active pipeline run.", "call it inside step_run('pipeline')")
    client = mlflow.MlflowClient()
    experiment_id = parent.info.experiment_id
    experiment_name = client.get_experiment(experiment_id).name
    extra = {entity: content_hash(value) for entity, value in plan.external.items()}
    commit = resolve_git_version(config.git_uri, config.git_version) if config.git_uri else None
    results: dict[str, StepResult] = {}
    tracking_uri = mlflow.get_tracking_uri()
    old_handler = None
    try:
        old_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread
        pass
    try:
        for i, step in enumerate(plan.steps, 1):
            label = f"[{i}/{len(plan.steps)}] {step.name} ({step.spec.folder.name}:{step.entry_point})"
            params = {**step.params, **input_values(plan, step, results)}
            upstream = {u: results[u].run_id for u in step.needs}
            code = f"git:{config.git_uri}@{commit}" if commit else code_version(step.spec.folder)
            own_extra = {e: h for e, h in extra.items() if step.spec.input(e) is not None}
            key = cache_key(step.spec.folder.name, step.entry_point, params, code, upstream, own_extra)
            started = time.perf_counter()
            cached = None if config.force else find_cached(client, experiment_id, key)
            if cached is not None:
                seconds = time.perf_counter() - started
                console.print(f"{label}: [green]reused[/] run {cached.info.run_id} ({seconds:.1f} s)")
                results[step.name] = StepResult(step.name, cached.info.run_id, True, seconds, dict(cached.data.tags),
                                                dict(cached.data.metrics), step.spec.key_metric)
            else:
                if all(r.reused for r in results.values()):  # the first step that runs
                    _raise_if_down("Cannot run the pipeline's steps")
                console.rule(f"{label}: running")
                run = _launch(config, step, params, key, upstream, parent.info.run_id, experiment_name,
                              tracking_uri, label, commit)
                seconds = time.perf_counter() - started
                console.print(f"{label}: [bold green]ran[/] run {run.info.run_id} in {seconds:.1f} s")
                results[step.name] = StepResult(step.name, run.info.run_id, False, seconds, dict(run.data.tags),
                                                dict(run.data.metrics), step.spec.key_metric)
            client.set_tag(parent.info.run_id, names.pipeline_step_tag(step.name),
                           f"{results[step.name].run_id} {'reused' if results[step.name].reused else 'ran'}")
    except _Interrupted as exc:
        raise WindpipeError(f"The pipeline was stopped ({exc}).",
                            "run it again: finished steps are reused from the cache") from None
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    out = list(results.values())
    mlflow.log_metrics({"steps_reused": sum(r.reused for r in out), "steps_ran": sum(not r.reused for r in out),
                        "pipeline_seconds": sum(r.seconds for r in out)})
    return out


def _launch(config: PipelineConfig, step: PlannedStep, params: dict[str, str], key: str, upstream: dict[str, str],
            parent_id: str, experiment_name: str, tracking_uri: str, label: str, commit: str | None) -> Any:
    """Run one step as its own MLflow project run, tag it for the cache, wait, check the outcome."""
    import mlflow
    from mlflow.exceptions import ExecutionException, MlflowException

    client = mlflow.MlflowClient()
    error: str | None = None
    run_id: str | None = None
    try:
        # synchronous: the asynchronous mode starts an extra `mlflow run` process (~10 s more per step)
        submitted = mlflow.projects.run(
            uri=project_uri(config, step), entry_point=step.entry_point, version=commit,
            parameters=params, env_manager=config.env_manager, experiment_name=experiment_name,
            synchronous=True, run_name=step.name,
        )
        run_id = submitted.run_id
    except ExecutionException as exc:
        error = first_line(exc, 500)
        match = re.search(r"Run \(ID '([0-9a-f]+)'\)", error)
        run_id = match.group(1) if match else _newest_child(client, parent_id, step)
        if run_id is None:
            raise WindpipeError(f"{label} could not start: {error}",
                                "check the parameters (-P) and the step project") from None
    except MlflowException as exc:
        _raise_if_down(f"{label} stopped")  # a server that died under the step, rather than a bad project
        raise WindpipeError(f"{label} could not start: {first_line(exc, 500)}",
                            "check the parameters (-P) and the step project") from None
    except (KeyboardInterrupt, _Interrupted):
        run_id = _newest_child(client, parent_id, step)
        if run_id and client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status="KILLED")
        raise
    # tag for the cache; a FINISHED run that misses its key is only rerun, never wrongly reused
    client.set_tag(run_id, names.UPSTREAM_TAG, json.dumps(upstream, sort_keys=True))
    client.set_tag(run_id, names.PIPELINE_RUN_TAG, parent_id)
    client.set_tag(run_id, names.MLFLOW_PARENT_RUN_TAG, parent_id)
    client.set_tag(run_id, names.CACHE_KEY_TAG, key)
    run = client.get_run(run_id)
    if error is not None or run.info.status != "FINISHED":
        reason = run.data.tags.get(names.FAILURE_TAG)
        if not reason:
            _raise_if_down(f"{label} failed (run {run_id})")
        detail = reason or "see the step's output above"
        raise WindpipeError(f"{label} failed (run {run_id}): {detail}",
                            "fix the cause and run the pipeline again: finished steps are reused")
    return run


def _newest_child(client: Any, parent_id: str, step: PlannedStep) -> str | None:
    """The newest run of `step` under the pipeline run `parent_id` (when MLflow did not name it)."""
    exp = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([exp], filter_string=f"tags.`{names.MLFLOW_PARENT_RUN_TAG}` = '{parent_id}' and "
                              f"tags.`{names.MLFLOW_PROJECT_ENTRY_TAG}` = '{step.entry_point}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def summary_table(results: list[StepResult], title: str = "pipeline") -> Any:
    """A rich table: step, run id, reused/ran, seconds, key metric."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("step", "run id", "status", "seconds", "key metric"):
        table.add_column(col, justify="right" if col == "seconds" else "left")
    for r in results:
        value = r.metric_value
        metric = f"{r.key_metric}={value:.4g}" if value is not None else ""
        table.add_row(r.name, r.run_id, "reused" if r.reused else "ran", f"{r.seconds:.1f}", metric)
    return table

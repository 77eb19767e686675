"""The pipeline driver: process -> lr, rf grid, keras -> compare -> promote, with a run cache.

Each step is an `mlflow.projects.run` of its own project (`projects/<step>`), with the
environment manager passed on, as a child of one pipeline run (tag `windpipe.step=pipeline`).
Steps hand entities over by run id / artifact URI (`runs:/<id>/entities/processed.parquet`),
never by local paths.

Caching: before starting a step the driver looks, in-process, for a FINISHED run whose tag
`windpipe.cache_key` equals the hash of: project, entry point, parameters, code version (git
commit + hash of the library and the step folder) and upstream run ids (plus, for `process`,
the content hash of the raw files). Such a run is reused, not rerun. `force=True` reruns all.
The step list is data (`steps()`): add or adapt a step by editing a `StepSpec`.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from windpipe.errors import WindpipeError
from windpipe.settings import Settings, repo_root

PROJECTS_DIR = repo_root() / "projects"
CACHE_KEY_TAG = "windpipe.cache_key"
UPSTREAM_TAG = "windpipe.upstream"
PIPELINE_RUN_TAG = "windpipe.pipeline_run_id"
ENTITY_TAG = "windpipe.entity.processed"
BEST_RUN_TAG = "windpipe.best_run_id"
ENV_MANAGERS = ("local", "virtualenv", "uv", "conda")


@dataclass
class PipelineConfig:
    """What a pipeline run is asked to do."""

    raw_dir: Path
    quick: bool = False
    force: bool = False
    env_manager: str = "local"
    seed: int = 42
    metric: str = "rmse"
    margin: float = 0.0
    # step name -> {param: value}: overrides of the step's default parameters
    overrides: dict[str, dict[str, str]] = field(default_factory=dict)
    # run steps from a git repository (`mlflow run <git-uri>#projects/<step>`) instead of this checkout
    git_uri: str | None = None
    git_version: str | None = None
    only: tuple[str, ...] = ()  # run only these steps (and reuse/require their upstream)


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


Params = Callable[[PipelineConfig, dict[str, StepResult]], dict[str, object]]


@dataclass(frozen=True)
class StepSpec:
    """A pipeline step: which project and entry point to run, with what, after what."""

    name: str
    project: str
    entry_point: str
    params: Params
    upstream: tuple[str, ...] = ()
    key_metric: str | None = "rmse"
    # extra cache-key material that is not a parameter (e.g. the raw files' content)
    extra_key: Callable[[PipelineConfig], dict[str, str]] | None = None


def _entity(up: dict[str, StepResult]) -> str:
    uri = up["process"].tags.get(ENTITY_TAG)
    if not uri:
        raise WindpipeError(f"The process run {up['process'].run_id} has no {ENTITY_TAG} tag.",
                            "rerun the pipeline with --force")
    return uri


def _training_runs(up: dict[str, StepResult]) -> str:
    return ",".join(up[n].run_id for n in ("lr", "rf", "keras") if n in up)


def _interfaces():  # noqa: ANN202 - a stepspec.PipelineGraph
    """The step interfaces (step.yaml) as a DAG, each checked against its MLproject.

    A broken interface (disagreement, cycle, an input nobody produces) stops the pipeline
    before anything runs.
    """
    from windpipe.stepspec import build_graph, check_interface, load_specs

    specs = load_specs(PROJECTS_DIR)
    for spec in specs:
        check_interface(spec)
    return build_graph(specs)


def _training_step(graph, name: str, entry_point: str,  # noqa: ANN001 - a stepspec.PipelineGraph
                   extra: Callable[[PipelineConfig], dict[str, object]]) -> StepSpec:
    """A training step whose upstream steps and entity parameter come from its step.yaml."""
    port = graph.specs[name].input("processed")
    if port is None or not port.parameter:
        raise WindpipeError(f"projects/{name}/step.yaml declares no `processed` input with a parameter.",
                            "add `inputs: [{entity: processed, parameter: data}]` to it")
    param = port.parameter
    return StepSpec(name, name, entry_point, upstream=tuple(graph.upstream(name)),
                    params=lambda c, up: {param: _entity(up), "seed": c.seed, **extra(c)})


def steps() -> list[StepSpec]:
    """The pipeline, as data. Parameter names follow each project's MLproject; the training steps'
    upstream and entity parameter come from their step.yaml interfaces."""
    graph = _interfaces()
    return [
        StepSpec("process", "process", "main", key_metric="rows",
                 params=lambda c, up: {"raw_dir": str(Path(c.raw_dir).resolve())},
                 extra_key=lambda c: {"raw_sha256": raw_hash(c.raw_dir)}),
        _training_step(graph, "lr", "main", lambda c: {}),
        _training_step(graph, "rf", "grid", lambda c: {"n_estimators": "16,32" if c.quick else "32,64",
                                                "max_depth": "6,10" if c.quick else "10,14"}),
        _training_step(graph, "keras", "main", lambda c: {"epochs": 3 if c.quick else 20}),
        StepSpec("compare", "pipeline", "compare", upstream=("lr", "rf", "keras"), key_metric="best_rmse",
                 params=lambda c, up: {"runs": _training_runs(up), "metric": c.metric}),
        StepSpec("promote", "pipeline", "promote", upstream=("compare",), key_metric="promoted_version",
                 params=lambda c, up: {"run_id": up["compare"].tags.get(BEST_RUN_TAG, ""),
                                       "metric": c.metric, "margin": c.margin}),
    ]


def raw_hash(raw_dir: Path | str) -> str:
    """Content hash of the raw CSV files (raw files can change under the same path)."""
    raw_dir = Path(raw_dir)
    files = sorted(raw_dir.glob("*.csv")) if raw_dir.is_dir() else []
    if not files:
        raise WindpipeError(f"No raw CSV files in {raw_dir}.",
                            f"generate them with `windpipe data synth --out {raw_dir}` (or download OPSD files)")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def cache_key(spec: StepSpec, params: dict[str, str], code: str, upstream: dict[str, str],
              extra: dict[str, str]) -> str:
    """The hash that decides whether a finished run of this step can be reused."""
    material = {"project": spec.project, "entry_point": spec.entry_point, "params": params,
                "code_version": code, "upstream": upstream, "extra": extra}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


class _CodeVersions:
    """Code version per step folder, computed once per pipeline run."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self._cache: dict[str, str] = {}

    def __call__(self, project: str) -> str:
        if project not in self._cache:
            if self.config.git_uri:
                self._cache[project] = f"git:{self.config.git_uri}@{_resolve_git_version(self.config)}"
            else:
                from windpipe.steps.runs import code_version

                self._cache[project] = code_version(PROJECTS_DIR / project)
        return self._cache[project]


def _resolve_git_version(config: PipelineConfig) -> str:
    """A commit id for `--from-git` (a branch or tag moves, so resolve it)."""
    import re
    import subprocess

    ref = config.git_version or "HEAD"
    if re.fullmatch(r"[0-9a-f]{40}", ref):
        return ref
    try:
        out = subprocess.run(["git", "ls-remote", config.git_uri, ref], capture_output=True, text=True,
                             timeout=60, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError) as exc:
        raise WindpipeError(f"Cannot resolve {ref!r} in {config.git_uri} ({exc}).",
                            "check the repository URL and --git-version") from None
    if not out:
        raise WindpipeError(f"{config.git_uri} has no ref {ref!r}.", "pass an existing branch, tag or commit")
    return out[0]


def project_uri(config: PipelineConfig, project: str) -> str:
    """Where `mlflow run` finds a step: this checkout's folder, or `<git-uri>#projects/<step>`."""
    if config.git_uri:
        return f"{config.git_uri}#projects/{project}"
    path = PROJECTS_DIR / project
    if not (path / "MLproject").exists():
        raise WindpipeError(f"The step project {path} does not exist (no MLproject).",
                            "run from a complete windpipe checkout (or use --from-git)")
    return str(path)


def find_cached(client, experiment_id: str, key: str):  # noqa: ANN001, ANN201 - MlflowClient, Run | None
    """The newest FINISHED run with this cache key, or None."""
    runs = client.search_runs([experiment_id],
                              filter_string=f"tags.`{CACHE_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def _artifact_store_problem(tracking_uri: str) -> str | None:
    """Why artifacts cannot be stored right now (the tracking server's proxy to FTP), or None."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    url = f"{tracking_uri.rstrip('/')}/api/2.0/mlflow-artifacts/artifacts"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        return f"the tracking server cannot reach its artifact store (HTTP {exc.code})"
    except (urllib.error.URLError, OSError) as exc:
        return f"the tracking server does not answer ({getattr(exc, 'reason', exc)})"
    return None


def _check_artifact_store(tracking_uri: str) -> None:
    """Fail fast when the artifact store is down: a step would find out only after MLflow's upload
    retries (about 4 minutes of backoff per artifact)."""
    store = _artifact_store_problem(tracking_uri)
    if store:
        raise WindpipeError(f"Cannot run the pipeline's steps: {store}.",
                            "check `windpipe status` (restart with `windpipe up`), then run the pipeline again: "
                            "finished steps are reused")


class _Interrupted(KeyboardInterrupt):
    pass


def _raise_interrupt(signum: int, frame: object) -> None:  # noqa: ARG001
    raise _Interrupted(f"signal {signum}")


def run_pipeline(settings: Settings, config: PipelineConfig, console=None) -> list[StepResult]:  # noqa: ANN001
    """Run (or reuse) every step inside the active pipeline run; return one result per step.

    The caller opens the pipeline run (`windpipe.steps.runs.step_run("pipeline")`), so the
    step runs become its children (MLflow sets `mlflow.parentRunId` from the active run).
    """
    import mlflow
    from rich.console import Console

    console = console or Console()
    if config.env_manager not in ENV_MANAGERS:
        raise WindpipeError(f"Unknown environment manager {config.env_manager!r}.",
                            f"pass --env-manager {' or '.join(ENV_MANAGERS[:3])}")
    specs = steps()
    known = {s.name for s in specs}
    unknown = set(config.overrides) - known
    if unknown:
        raise WindpipeError(f"Unknown step(s) in --param: {', '.join(sorted(unknown))}.",
                            f"use one of {', '.join(s.name for s in specs)}, e.g. --param rf.max_depth=8,12")
    parent = mlflow.active_run()
    if parent is None:
        raise WindpipeError("run_pipeline needs an active pipeline run.", "call it inside step_run('pipeline')")
    client = mlflow.MlflowClient()
    experiment_id = parent.info.experiment_id
    experiment_name = client.get_experiment(experiment_id).name
    codes = _CodeVersions(config)
    results: dict[str, StepResult] = {}
    tracking_uri = mlflow.get_tracking_uri()
    old_handler = None
    try:
        old_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread
        pass
    try:
        for i, spec in enumerate(specs, 1):
            label = f"[{i}/{len(specs)}] {spec.name} ({spec.project}:{spec.entry_point})"
            params = {k: str(v) for k, v in spec.params(config, results).items()}
            params.update(config.overrides.get(spec.name, {}))
            upstream = {u: results[u].run_id for u in spec.upstream}
            extra = spec.extra_key(config) if spec.extra_key else {}
            key = cache_key(spec, params, codes(spec.project), upstream, extra)
            started = time.perf_counter()
            cached = None if config.force else find_cached(client, experiment_id, key)
            if cached is not None:
                seconds = time.perf_counter() - started
                console.print(f"{label}: [green]reused[/] run {cached.info.run_id} ({seconds:.1f} s)")
                results[spec.name] = StepResult(spec.name, cached.info.run_id, True, seconds,
                                                dict(cached.data.tags), dict(cached.data.metrics), spec.key_metric)
            else:
                if all(r.reused for r in results.values()):  # the first step that runs
                    _check_artifact_store(tracking_uri)
                console.rule(f"{label}: running")
                run = _launch(spec, config, params, key, upstream, parent.info.run_id, experiment_name,
                              tracking_uri, label)
                seconds = time.perf_counter() - started
                console.print(f"{label}: [bold green]ran[/] run {run.info.run_id} in {seconds:.1f} s")
                results[spec.name] = StepResult(spec.name, run.info.run_id, False, seconds, dict(run.data.tags),
                                                dict(run.data.metrics), spec.key_metric)
            client.set_tag(parent.info.run_id, f"windpipe.pipeline.{spec.name}",
                           f"{results[spec.name].run_id} {'reused' if results[spec.name].reused else 'ran'}")
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


def _launch(spec: StepSpec, config: PipelineConfig, params: dict[str, str], key: str, upstream: dict[str, str],
            parent_id: str, experiment_name: str, tracking_uri: str, label: str) -> object:
    """Run one step as its own MLflow project run, tag it for the cache, wait, check the outcome."""
    import mlflow
    from mlflow.exceptions import ExecutionException, MlflowException

    client = mlflow.MlflowClient()
    error: str | None = None
    run_id: str | None = None
    try:
        # synchronous: the asynchronous mode starts an extra `mlflow run` process (~10 s more per step)
        submitted = mlflow.projects.run(
            uri=project_uri(config, spec.project), entry_point=spec.entry_point, version=config.git_version,
            parameters=params, env_manager=config.env_manager, experiment_name=experiment_name,
            synchronous=True, run_name=spec.name,
        )
        run_id = submitted.run_id
    except ExecutionException as exc:
        error = str(exc).splitlines()[0][:500]
        match = re.search(r"Run \(ID '([0-9a-f]+)'\)", error)
        run_id = match.group(1) if match else _newest_child(client, parent_id, spec)
        if run_id is None:
            raise WindpipeError(f"{label} could not start: {error}",
                                "check the parameters (--param) and the step project") from None
    except MlflowException as exc:
        raise WindpipeError(f"{label} could not start: {str(exc).splitlines()[0][:500]}",
                            "check the parameters (--param) and the step project") from None
    except (KeyboardInterrupt, _Interrupted):
        run_id = _newest_child(client, parent_id, spec)
        if run_id and client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status="KILLED")
        raise
    # tag for the cache; a FINISHED run that misses its key is only rerun, never wrongly reused
    client.set_tag(run_id, UPSTREAM_TAG, json.dumps(upstream, sort_keys=True))
    client.set_tag(run_id, PIPELINE_RUN_TAG, parent_id)
    client.set_tag(run_id, "mlflow.parentRunId", parent_id)
    client.set_tag(run_id, CACHE_KEY_TAG, key)
    ok = error is None
    run = client.get_run(run_id)
    if not ok or run.info.status != "FINISHED":
        reason = run.data.tags.get("windpipe.failure_reason")
        store = _artifact_store_problem(tracking_uri)
        if store and not reason:
            raise WindpipeError(f"{label} failed (run {run_id}): {store}.",
                                "check `windpipe status` (restart with `windpipe up`), then run the pipeline "
                                "again: finished steps are reused")
        detail = reason or "see the step's output above"
        raise WindpipeError(f"{label} failed (run {run_id}): {detail}",
                            "fix the cause and run the pipeline again: finished steps are reused")
    return run


def _newest_child(client, parent_id: str, spec: StepSpec) -> str | None:  # noqa: ANN001
    """The newest run of `spec` under the pipeline run `parent_id` (when MLflow did not name it)."""
    exp = client.get_run(parent_id).info.experiment_id
    runs = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}' and "
                              f"tags.`mlflow.project.entryPoint` = '{spec.entry_point}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def summary_table(results: list[StepResult], title: str = "pipeline"):  # noqa: ANN201 - rich Table
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


def parse_overrides(items: list[str] | None) -> dict[str, dict[str, str]]:
    """`["rf.max_depth=8,12", "keras.epochs=5"]` -> {"rf": {"max_depth": "8,12"}, "keras": {"epochs": "5"}}."""
    out: dict[str, dict[str, str]] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        step, dot, param = name.partition(".")
        if not sep or not dot or not step or not param:
            raise WindpipeError(f"Cannot read --param {item!r}.", "write it as STEP.NAME=VALUE, e.g. rf.max_depth=8,12")
        out.setdefault(step, {})[param] = value
    return out

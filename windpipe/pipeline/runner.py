"""Running a plan: every step an `mlflow run` of its own project, a child of one pipeline run, reused
from the cache when nothing it depends on changed; steps whose inputs are ready run side by side.

Steps hand entities over by run id and artifact URI (`runs:/<id>/entities/processed.parquet`),
never by local paths: a step's wired input parameter gets the URI its producer's run recorded
(`windpipe.names.entity_tag`). The caller opens the pipeline run (`windpipe.steps.driver`, or an
Airflow DAG's first task), so the step runs become its children.

`Launcher.run` runs (or reuses) one step; the local driver calls it from worker threads
(`run_pipeline`, `--jobs N`), an Airflow task calls it once (`windpipe pipeline step`). Each
launch goes through MLflow Projects' local backend, the code path of `mlflow run`, which hands
back the run id and the process at once: the run is a child of the pipeline run from its first
second, its output goes to its own log file, and a stopped pipeline kills it and marks it KILLED.
The tracking server serialises the writes of steps running side by side (SQLite takes one writer).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from windpipe import names
from windpipe.errors import WindpipeError, first_line
from windpipe.pipeline.cache import cache_key, content_hash, find_cached
from windpipe.pipeline.interfaces import load_interfaces
from windpipe.pipeline.plan import PipelineConfig, Plan, PlannedStep, check_env_manager, make_plan
from windpipe.pipeline.progress import Progress, tail
from windpipe.settings import STEP_LOG_DIR_ENV, Settings, projects_dir
from windpipe.tracking.client import ServerDown, diagnose, mlflow_client
from windpipe.tracking.runs import code_version, fail_run

if TYPE_CHECKING:
    from mlflow.entities import Run

RESUME_FIX = "fix the cause and run the pipeline again: finished steps are reused"
STOP_FIX = "run it again: finished steps are reused from the cache"


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

    @classmethod
    def of_run(cls, name: str, run: Run, reused: bool, seconds: float, key_metric: str | None) -> StepResult:
        return cls(name, run.info.run_id, reused, seconds, dict(run.data.tags), dict(run.data.metrics), key_metric)


class StepFailed(WindpipeError):
    """A step that failed (or could not start): which one, its run and where its output is."""

    def __init__(self, problem: str, fix: str, step: str, run_id: str | None = None, log: Path | None = None) -> None:
        super().__init__(problem, fix)
        self.step, self.run_id, self.log = step, run_id, log


def plan_for(config: PipelineConfig) -> Plan:
    """The plan of this config from the interfaces below `config.projects`, checked before anything runs."""
    check_env_manager(config.env_manager, "--env-manager" if config.source == "-P" else config.source)
    external = {k: str(Path(v).resolve()) if ":/" not in str(v) else str(v) for k, v in config.external.items()}
    specs = load_interfaces(config.projects or projects_dir())
    return make_plan(specs, config.pipeline, config.preset, config.overrides, external, config.source, config.outputs)


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


def step_key(plan: Plan, step: PlannedStep, results: dict[str, StepResult], code: str,
             extra: dict[str, str]) -> tuple[dict[str, str], dict[str, str], str]:
    """(parameters, upstream run ids, cache key) of `step` with code version `code`, its producers' `results`
    and the content hashes `extra` of the external inputs.

    The key names the work, not the runs that did it: a producer counts by its own key, and the URIs wired
    from it (which hold its run id) not at all. So rerunning the same work (`--force`) keys every step alike,
    and the promotion knows the model it already holds (windpipe.models.registry.existing_version).
    """
    wired = input_values(plan, step, results)
    params = {**step.params, **wired}
    upstream = {u: results[u].run_id for u in step.needs}
    produced = {port.parameter for port in step.spec.inputs
                if port.parameter in wired and port.entity not in plan.external}
    keyed = {k: v for k, v in params.items() if k not in produced}
    producers = {u: results[u].tags.get(names.CACHE_KEY_TAG) or results[u].run_id for u in step.needs}
    own_extra = {e: h for e, h in extra.items() if step.spec.input(e) is not None}
    return params, upstream, cache_key(step.spec.folder.name, step.entry_point, keyed, code, producers, own_extra)


def external_hashes(plan: Plan) -> dict[str, str]:
    """Content hashes of the external inputs this run provides as files or folders (a model URI is its own key)."""
    kinds = {p.entity: p.kind for s in plan.graph.specs.values() for p in s.inputs}
    return {entity: content_hash(value) for entity, value in plan.external.items() if kinds.get(entity) != "model"}


def step_label(plan: Plan, step: PlannedStep) -> str:
    return f"{step.name} ({step.spec.folder.name}:{step.entry_point})"


def _kill_tree(proc: subprocess.Popen) -> None:
    """Stop a step's process and whatever it started (joblib workers, a marts helper)."""
    try:
        import psutil
    except ImportError:  # (a step environment without psutil: the process itself)
        proc.terminate()
        return
    try:
        root = psutil.Process(proc.pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=5)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


class Launcher:
    """What every step of one pipeline run shares: the plan, the parent run, the cache, the running processes.

    `run` is safe to call from several threads (one step each).
    """

    def __init__(self, config: PipelineConfig, plan: Plan, parent_id: str, log_dir: Path | None = None) -> None:
        import mlflow

        self.config, self.plan, self.parent_id, self.log_dir = config, plan, parent_id, log_dir
        self.client = mlflow_client()
        self.tracking_uri = mlflow.get_tracking_uri()
        self.experiment_id = self.client.get_run(parent_id).info.experiment_id
        self.experiment_name = self.client.get_experiment(self.experiment_id).name
        self.extra = external_hashes(plan)
        self.commit = resolve_git_version(config.git_uri, config.git_version) if config.git_uri else None
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._git_lock = threading.Lock()  # MLflow's git fetch (GitPython) fails when two run at once
        self._store_checked = False
        self._running: dict[str, Any] = {}  # run id -> mlflow's LocalSubmittedRun

    def log(self, step: PlannedStep) -> Path | None:
        """The file the step's output goes to (None: this process's own output, as under Airflow)."""
        return self.log_dir / f"{step.spec.folder.name}.log" if self.log_dir else None

    def key(self, step: PlannedStep, results: dict[str, StepResult]) -> tuple[dict[str, str], dict[str, str], str]:
        """(parameters, upstream run ids, cache key) of `step` once its producers have `results`."""
        code = f"git:{self.config.git_uri}@{self.commit}" if self.commit else code_version(step.spec.folder)
        return step_key(self.plan, step, results, code, self.extra)

    def run(self, step: PlannedStep, results: dict[str, StepResult], progress: Progress | None = None,
            tag_as: str | None = None) -> StepResult:
        """Reuse a finished run of `step` with the same cache key, or launch it; tag the pipeline run either way.

        Raises StepFailed (the pipeline run is tagged `<run id> failed`).
        """
        label = step_label(self.plan, step)
        tag = names.pipeline_step_tag(tag_as or step.name)
        started = time.perf_counter()
        if progress is not None:
            progress.started(step.name)
        try:
            params, upstream, key = self.key(step, results)
            cached = None if self.config.force else find_cached(self.client, self.experiment_id, key)
            if cached is not None:
                result = StepResult.of_run(step.name, cached, True, time.perf_counter() - started,
                                           step.spec.key_metric)
            else:
                self._check_store()
                run = self._launch(step, params, key, upstream, label, progress, tag_as or step.name)
                result = StepResult.of_run(step.name, run, False, time.perf_counter() - started, step.spec.key_metric)
        except WindpipeError as exc:
            failed = exc if isinstance(exc, StepFailed) else StepFailed(f"{label}: {exc.problem}",
                                                                        exc.fix or RESUME_FIX, step.name)
            # `<run id> failed <why>`: what an orchestrator's last task reports for this step
            self.client.set_tag(self.parent_id, tag, f"{failed.run_id or '-'} failed {failed.problem[:2000]}")
            raise failed from None
        self.client.set_tag(self.parent_id, tag, f"{result.run_id} {'reused' if result.reused else 'ran'}")
        return result

    def _check_store(self) -> None:
        """Once, before the first step that has to run: is the artifact store there? A step would find out
        only after MLflow's upload retries (minutes of backoff per artifact)."""
        with self._lock:
            if self._store_checked:
                return
            _raise_if_down("Cannot run the pipeline's steps")
            self._store_checked = True

    def _launch(self, step: PlannedStep, params: dict[str, str], key: str, upstream: dict[str, str], label: str,
                progress: Progress | None, task: str) -> Run:
        """Run one step as its own MLflow project run, tagged for the cache as a child of the pipeline run."""
        from mlflow.entities import RunTag
        from mlflow.exceptions import MlflowException
        from mlflow.projects import utils as project_utils
        from mlflow.projects.backend.local import LocalBackend

        backend_config = {project_utils.PROJECT_ENV_MANAGER: self.config.env_manager,
                          project_utils.PROJECT_SYNCHRONOUS: True, project_utils.PROJECT_DOCKER_ARGS: None,
                          project_utils.PROJECT_STORAGE_DIR: None, project_utils.PROJECT_BUILD_IMAGE: False,
                          project_utils.PROJECT_DOCKER_AUTH: None}
        if self.stopping.is_set():
            raise StepFailed(f"{label} was not started: the pipeline is stopping.", STOP_FIX, step.name)
        try:
            # `mlflow run`'s own code path: returns with the process started (we wait below)
            with self._git_lock if self.commit else contextlib.nullcontext():
                submitted = LocalBackend().run(project_uri(self.config, step), step.entry_point, params, self.commit,
                                               backend_config, self.tracking_uri, self.experiment_id)
        except MlflowException as exc:  # (ExecutionException too): a bad parameter value, a broken MLproject
            raise StepFailed(f"{label} could not start: {first_line(exc, 500)}",
                             "check the parameters (-P) and the step project", step.name) from None
        run_id = submitted.run_id
        with self._lock:
            self._running[run_id] = submitted
        log = self.log(step)
        try:
            # a FINISHED run that misses its key is only rerun, never wrongly reused
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in {
                names.MLFLOW_PARENT_RUN_TAG: self.parent_id, names.PIPELINE_RUN_TAG: self.parent_id,
                names.UPSTREAM_TAG: json.dumps(upstream, sort_keys=True), names.CACHE_KEY_TAG: key,
                names.MLFLOW_RUN_NAME_TAG: step.name, names.MLFLOW_PROJECT_BACKEND_TAG: "local",
                names.TASK_TAG: task}.items()])
            if progress is not None:
                progress.running(step.name, run_id)
            ok = submitted.wait()
        finally:
            with self._lock:
                self._running.pop(run_id, None)
        if self.stopping.is_set():
            raise StepFailed(f"{label} was stopped (run {run_id}).", STOP_FIX, step.name, run_id, log)
        run = self.client.get_run(run_id)
        if run.info.status == "RUNNING":  # the step's process ended without ending its run (as `mlflow run` does)
            self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")
            run = self.client.get_run(run_id)
        if ok and run.info.status == "FINISHED":
            return run
        reason = run.data.tags.get(names.FAILURE_TAG)
        if not reason:
            down = diagnose()
            if down is not None:  # a server that died under the step, rather than the step's own error
                raise StepFailed(f"{label} failed (run {run_id}): {down.problem}",
                                 f"{down.fix}; then run the pipeline again: finished steps are reused", step.name,
                                 run_id, log)
        detail = reason or (f"see its output in {log}" if log else "see the step's output above")
        raise StepFailed(f"{label} failed (run {run_id}): {detail}", RESUME_FIX, step.name, run_id, log)

    def stop(self) -> list[str]:
        """Stop every running step (its whole process tree); return their run ids."""
        self.stopping.set()
        with self._lock:
            running = list(self._running.items())
        for _, submitted in running:
            _kill_tree(submitted.command_proc)
        return [run_id for run_id, _ in running]


def run_here(step_dir: Path, entry_point: str, params: dict[str, str], experiment_id: str) -> Run:
    """One step's MLflow project run in this process: the run `mlflow run STEP_DIR -e ENTRY --env-manager local`
    makes (MLflow Projects creates it and logs its parameters), its entry point's `python step.py ...` command
    run by this interpreter instead of a second one, so Python and MLflow start once. Returns the ended run.
    """
    import runpy
    import shlex
    import sys

    from mlflow.projects import utils as project_utils

    uri = str(Path(step_dir).resolve())
    work_dir = project_utils.fetch_and_validate_project(uri, None, entry_point, params)
    project = project_utils.load_project(work_dir)
    run_id = project_utils.get_or_create_run(None, uri, experiment_id, work_dir, None, entry_point,
                                             params).info.run_id
    client = mlflow_client()
    client.set_tag(run_id, names.MLFLOW_PROJECT_BACKEND_TAG, "local")
    argv = shlex.split(" ".join(project_utils.get_entry_point_command(project, entry_point, params, None)))
    env = project_utils.get_run_env_vars(run_id, experiment_id)
    saved = (os.getcwd(), list(sys.argv), list(sys.path), {k: os.environ.get(k) for k in env})
    code: object = 0
    try:
        os.environ.update(env)
        os.chdir(work_dir)
        if len(argv) >= 2 and argv[0] == "python" and argv[1].endswith(".py"):
            sys.argv, sys.path[:0] = argv[1:], [str(work_dir)]  # as `python step.py ...` would see them
            try:
                runpy.run_path(argv[1], run_name="__main__")
            except SystemExit as exc:
                code = exc.code
        else:  # not a Python script: as MLflow's local backend runs it
            code = subprocess.run(["bash", "-c", " ".join(argv)], check=False).returncode
    finally:
        os.chdir(saved[0])
        sys.argv, sys.path[:] = saved[1], saved[2]
        for k, v in saved[3].items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    run = client.get_run(run_id)
    if run.info.status == "RUNNING":  # (the command ended without ending its run, as `mlflow run` handles it)
        client.set_terminated(run_id, "FINISHED" if code in (0, None) else "FAILED")
        run = client.get_run(run_id)
    return run


class _Interrupted(KeyboardInterrupt):
    pass


def _raise_interrupt(signum: int, frame: object) -> None:
    raise _Interrupted(f"signal {signum}")


def schedule(launcher: Launcher, progress: Progress, workers: int) -> dict[str, StepResult]:
    """Run the plan's steps, each as soon as its producers finished, at most `workers` at once.

    A failed step stops its dependants (skipped); the others finish. SIGTERM or Ctrl-C stops the
    running steps and marks their runs KILLED. Raises WindpipeError naming every failed step.
    """
    plan = launcher.plan
    results: dict[str, StepResult] = {}
    failures: dict[str, StepFailed] = {}
    blocked: set[str] = set()
    pending = list(plan.steps)  # plan order: --jobs 1 runs the steps one after another in that order
    running: dict[Future, PlannedStep] = {}
    try:
        old_handler = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread
        old_handler = None
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="step")
    try:
        while pending or running:
            for step in list(pending):
                stopped_by = next((n for n in step.needs if n in failures or n in blocked), None)
                if stopped_by is not None:
                    pending.remove(step)
                    blocked.add(step.name)
                    progress.skipped(step.name, f"{stopped_by} {'failed' if stopped_by in failures else 'skipped'}")
                elif len(running) < workers and all(n in results for n in step.needs):
                    pending.remove(step)
                    running[pool.submit(launcher.run, step, dict(results), progress)] = step
            if not running:
                continue
            done, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                step = running.pop(future)
                try:
                    results[step.name] = future.result()
                    progress.finished(step.name, results[step.name])
                except StepFailed as exc:
                    failures[step.name] = exc
                    progress.failed(step.name, exc.problem, exc.run_id)
    except KeyboardInterrupt as exc:
        killed = launcher.stop()
        pool.shutdown(wait=True, cancel_futures=True)
        why = str(exc) or "Ctrl-C"
        for run_id in killed:
            fail_run(run_id, f"stopped with the pipeline ({why})", status="KILLED")
        stopped = ", ".join(running[f].name for f in running) or "none"
        raise WindpipeError(f"The pipeline was stopped ({why}); running steps killed: {stopped}.", STOP_FIX) from None
    except BaseException:
        launcher.stop()
        raise
    finally:
        pool.shutdown(wait=True)
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
    if failures:
        for exc in failures.values():
            for line in tail(exc.log):
                progress.console.print(f"  {exc.step} | {line}", highlight=False, markup=False)
        lines = [exc.problem for exc in failures.values()]
        if blocked:
            lines.append(f"not run: {', '.join(sorted(blocked))} (they read what failed)")
        first = next(iter(failures.values()))
        raise WindpipeError("\n".join(lines), first.fix)
    return results


def run_pipeline(settings: Settings, config: PipelineConfig, console: Any = None) -> list[StepResult]:
    """Run (or reuse) every step inside the active pipeline run, side by side up to `config.workers`.

    The caller opens the pipeline run (`windpipe.steps.driver`), so the step runs become its
    children. Everything a user can get wrong is refused before the first step starts. Each
    step's output goes to `settings.paths.pipeline_log_dir(<pipeline run id>)/<step>.log`.
    """
    import mlflow
    from rich.console import Console

    console = console or Console()
    plan = plan_for(config)
    parent = mlflow.active_run()
    if parent is None:
        raise WindpipeError("run_pipeline needs an active pipeline run.", "call it inside step_run('pipeline')")
    log_dir = settings.paths.pipeline_log_dir(parent.info.run_id)
    log_dir.mkdir(parents=True, exist_ok=True)
    launcher = Launcher(config, plan, parent.info.run_id, log_dir)
    labels = {s.name: step_label(plan, s) for s in plan.steps}
    logs = {s.name: launcher.log(s) for s in plan.steps}
    # the step processes inherit this process's environment: where to write their output (telemetry is off
    # in every windpipe process: windpipe.settings.enter_process)
    saved = {STEP_LOG_DIR_ENV: os.environ.get(STEP_LOG_DIR_ENV)}
    os.environ[STEP_LOG_DIR_ENV] = str(log_dir)
    started = time.perf_counter()
    progress = Progress(labels, console, logs)
    projects_log = logging.getLogger("mlflow.projects")
    level = projects_log.level
    projects_log.setLevel(logging.WARNING)  # its "=== Running command ..." lines: the table says it
    try:
        with progress:
            results = schedule(launcher, progress, config.workers)
    finally:
        projects_log.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        console.print(progress.summary(f"pipeline run {parent.info.run_id} ({config.workers} jobs)"))
    out = [results[s.name] for s in plan.steps]
    mlflow.log_metrics({"steps_reused": sum(r.reused for r in out), "steps_ran": sum(not r.reused for r in out),
                        "pipeline_seconds": time.perf_counter() - started, "jobs": config.workers})
    return out

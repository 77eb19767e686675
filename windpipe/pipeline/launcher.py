"""Launching one step of a plan: reuse a finished run with the same cache key, or start the step's MLflow
project run as a child of the pipeline run and wait for it.

Steps hand entities over by run id and artifact URI (`runs:/<id>/entities/processed.parquet`),
never by local paths: a step's wired input parameter gets the URI its producer's run recorded
(`windpipe.names.entity_tag`, `windpipe.pipeline.cache.input_values`). The caller opens the pipeline
run (`windpipe.steps.driver`, or an Airflow DAG's first task), so the step runs become its children.

`Launcher.run` runs (or reuses) one step; the local driver calls it from worker threads
(`windpipe.pipeline.runner`, `--jobs N`), an Airflow task calls it once (`windpipe pipeline step`). Each
launch is `mlflow.projects.run(..., synchronous=False)`, MLflow Projects' public API: it creates the run
and starts `mlflow run --run-id <id>` for it, returning at once. So the run is tagged for the cache and as
a child of the pipeline run before the step does any work, its output goes to its own log file (the step
script redirects itself, `windpipe.steps.cli`), and a stopped pipeline kills its whole process tree and
marks it KILLED. The price of the public API: each launched step starts one more Python process (the
`mlflow run` command, about 4-5 s of imports here) before the step's own (docs/pipeline.md).
The tracking server serialises the writes of steps running side by side (SQLite takes one writer).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from windpipe import names
from windpipe.errors import WindpipeError, first_line
from windpipe.pipeline.cache import StepResult, external_hashes, find_cached, step_key
from windpipe.pipeline.plan import PipelineConfig, Plan, PlannedStep
from windpipe.pipeline.progress import Progress
from windpipe.settings import STEP_LOG_DIR_ENV
from windpipe.stack.procs import environment
from windpipe.tracking.client import ServerDown, diagnose
from windpipe.tracking.internals import step_process
from windpipe.tracking.runs import code_version

if TYPE_CHECKING:
    from mlflow.entities import Run

RESUME_FIX = "fix the cause and run the pipeline again: finished steps are reused"
STOP_FIX = "run it again: finished steps are reused from the cache"


class StepFailed(WindpipeError):
    """A step that failed (or could not start): which one, its run and where its output is."""

    def __init__(self, problem: str, fix: str, step: str, run_id: str | None = None, log: Path | None = None) -> None:
        super().__init__(problem, fix)
        self.step, self.run_id, self.log = step, run_id, log


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


def step_label(plan: Plan, step: PlannedStep) -> str:
    return f"{step.name} ({step.spec.folder.name}:{step.entry_point})"


@contextlib.contextmanager
def step_environment(log_dir: Path | None = None) -> Iterator[None]:
    """The environment the launched steps inherit (this process's, copied at each launch), restored on exit.

    - `WINDPIPE_STEP_LOG_DIR`: each step writes its output to `<log_dir>/<step folder>.log` (None: to this
      process's output, as under Airflow);
    - this environment's `bin/` first on PATH: the `mlflow run` command and the step's `python` are this
      environment's, whether or not it was activated;
    - no `MLFLOW_EXPERIMENT_NAME` (`windpipe env` exports it): `mlflow run` refuses it beside the experiment
      id MLflow Projects passes on;
    - MLflow telemetry off: its thread edits os.environ while the launching threads copy it
      (docs/reliability.md).
    """
    changes = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
               "MLFLOW_EXPERIMENT_NAME": None,
               "MLFLOW_DISABLE_TELEMETRY": os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true")}
    if log_dir is not None:
        changes[STEP_LOG_DIR_ENV] = str(log_dir)
    with environment(changes):
        yield


def _raise_if_down(what: str) -> None:
    """Fail fast, naming the server, when the tracking server or its artifact store does not answer: a step
    would find out only through MLflow's retries."""
    down = diagnose()
    if down is not None:
        raise ServerDown(f"{what}: {down.problem}",
                         f"{down.fix}; then run the pipeline again: finished steps are reused") from None


def _kill_tree(proc: subprocess.Popen) -> None:
    """Stop a step's process and whatever it started (the step's interpreter, joblib workers, a marts helper):
    SIGTERM (its run ends KILLED), then SIGKILL for what is left after 5 s."""
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

    `run` is safe to call from several threads (one step each), inside `step_environment`.
    """

    def __init__(self, config: PipelineConfig, plan: Plan, parent_id: str, log_dir: Path | None = None) -> None:
        import mlflow

        self.config, self.plan, self.parent_id, self.log_dir = config, plan, parent_id, log_dir
        self.client = mlflow.MlflowClient()
        self.experiment_id = self.client.get_run(parent_id).info.experiment_id
        self.extra = external_hashes(plan)
        self.commit = resolve_git_version(config.git_uri, config.git_version) if config.git_uri else None
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._git_lock = threading.Lock()  # MLflow's git fetch (GitPython) fails when two run at once
        self._store_checked = False
        self._running: dict[str, Any] = {}  # run id -> mlflow.projects.SubmittedRun

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
                run = self._launch(step, params, key, upstream, label, progress)
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
                progress: Progress | None) -> Run:
        """Run one step as its own MLflow project run, tagged for the cache as a child of the pipeline run."""
        import mlflow.projects
        from mlflow.entities import RunTag
        from mlflow.exceptions import MlflowException

        if self.stopping.is_set():
            raise StepFailed(f"{label} was not started: the pipeline is stopping.", STOP_FIX, step.name)
        try:
            # returns once the run exists and its `mlflow run` process started (we wait below)
            with self._git_lock if self.commit else contextlib.nullcontext():
                submitted = mlflow.projects.run(project_uri(self.config, step), step.entry_point, version=self.commit,
                                                parameters=params, experiment_id=self.experiment_id,
                                                env_manager=self.config.env_manager, synchronous=False)
        except MlflowException as exc:  # (ExecutionException too): a bad parameter value, a broken MLproject
            raise StepFailed(f"{label} could not start: {first_line(exc, 500)}",
                             "check the parameters (-P) and the step project", step.name) from None
        except OSError as exc:  # no `mlflow` command to start
            raise StepFailed(f"{label} could not start: {first_line(exc, 500)}",
                             "install the requirements into this environment (`make install`)", step.name) from None
        run_id = submitted.run_id
        with self._lock:
            self._running[run_id] = submitted
        log = self.log(step)
        try:
            # a FINISHED run that misses its key is only rerun, never wrongly reused
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in {
                names.MLFLOW_PARENT_RUN_TAG: self.parent_id, names.PIPELINE_RUN_TAG: self.parent_id,
                names.UPSTREAM_TAG: json.dumps(upstream, sort_keys=True), names.CACHE_KEY_TAG: key,
                names.MLFLOW_RUN_NAME_TAG: step.name}.items()])
            if progress is not None:
                progress.running(step.name, run_id)
            ok = submitted.wait()
        finally:
            with self._lock:
                self._running.pop(run_id, None)
        if self.stopping.is_set():
            raise StepFailed(f"{label} was stopped (run {run_id}).", STOP_FIX, step.name, run_id, log)
        run = self.client.get_run(run_id)
        if run.info.status == "RUNNING":  # (`mlflow run` ends the run; this covers its being killed first)
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
            proc = step_process(submitted)
            if proc is not None:
                _kill_tree(proc)
            else:  # (a backend without a local process)
                submitted.cancel()
        return [run_id for run_id, _ in running]

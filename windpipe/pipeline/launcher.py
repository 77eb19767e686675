"""Launching one step of a plan: reuse a finished run with the same cache key, or make the step's MLflow
project run as a child of the pipeline run and run the step in it.

Steps hand entities over by run id and artifact URI (`runs:/<id>/entities/processed.parquet`),
never by local paths: a step's wired input parameter gets the URI its producer's run recorded
(`windpipe.names.entity_tag`, `windpipe.pipeline.cache.input_values`). The caller opens the pipeline
run (`windpipe.steps.driver`, or an Airflow DAG's first task), so the step runs become its children.

`Launcher.run` runs (or reuses) one step; the local driver calls it from worker threads
(`windpipe.pipeline.runner`, `--jobs N`), an Airflow task calls it once (`windpipe pipeline step`). Each
launch makes the run the way MLflow Projects makes it (`windpipe.pipeline.project_run`), with the cache
key and the parent run among its first tags, then runs the project in it through MLflow Projects'
public `mlflow.projects.run` on this thread (`windpipe.tracking.internals.run_project_in`): MLflow starts
the entry point's command, whose output goes to its own log file (the step script redirects itself,
`windpipe.steps.cli`). A stopped pipeline kills each running step's whole process tree (found by the
run id MLflow gives it) and marks it KILLED. `--from-git` checks the repository out once, at the resolved
commit, for every step. The tracking server serialises the writes of steps running side by side (SQLite
takes one writer).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from windpipe import names
from windpipe.errors import WindpipeError, first_line, redact
from windpipe.pipeline.cache import StepResult, external_hashes, find_cached, step_key
from windpipe.pipeline.plan import PipelineConfig, Plan, PlannedStep
from windpipe.pipeline.progress import Progress
from windpipe.pipeline.project_run import create_project_run, logged_params, project_tags
from windpipe.settings import STEP_LOG_DIR_ENV, TELEMETRY_OFF
from windpipe.stack.procs import environment
from windpipe.tracking.client import ServerDown, diagnose, mlflow_client
from windpipe.tracking.internals import run_project_in
from windpipe.tracking.runs import code_version, fail_run

if TYPE_CHECKING:
    import psutil
    from mlflow.entities import Run

RESUME_FIX = "fix the cause and run the pipeline again: finished steps are reused"
STOP_FIX = "run it again: finished steps are reused from the cache"


class StepFailed(WindpipeError):
    """A step that failed (or could not start): which one, its run and where its output is."""

    def __init__(self, problem: str, fix: str, step: str, run_id: str | None = None, log: Path | None = None) -> None:
        super().__init__(problem, fix)
        self.step, self.run_id, self.log = step, run_id, log


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


def git_checkout(git_uri: str, commit: str) -> tempfile.TemporaryDirectory:
    """One checkout of `git_uri` at `commit` for every step of a `--from-git` run (removed with the object)."""
    tmp = tempfile.TemporaryDirectory(prefix="windpipe-git-")
    steps = (["clone", "--quiet", "--no-checkout", git_uri, tmp.name], ["-C", tmp.name, "checkout", "--quiet", commit])
    for args in steps:
        try:
            subprocess.run(["git", *args], capture_output=True, text=True, timeout=600, check=True)
        except (OSError, subprocess.SubprocessError) as exc:
            tmp.cleanup()
            why = first_line(RuntimeError(getattr(exc, "stderr", None) or exc), 300)  # (passwords masked)
            raise WindpipeError(f"Cannot check out {commit} of {redact(git_uri)} ({why}).",
                                "check the repository URL and --git-version") from None
    return tmp


@contextlib.contextmanager
def step_environment(log_dir: Path | None = None) -> Iterator[None]:
    """The environment the launched steps inherit (this process's, copied at each launch), restored on exit.

    - `WINDPIPE_STEP_LOG_DIR`: each step writes its output to `<log_dir>/<step folder>.log` (None: to this
      process's output, as under Airflow);
    - this environment's `bin/` first on PATH: the step's `python` is this environment's, whether or not it
      was activated;
    - MLflow telemetry off: its thread edits os.environ while the launching threads copy it
      (docs/reliability.md).
    """
    changes: dict[str, str | None] = {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        **TELEMETRY_OFF}
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


def step_processes(run_id: str) -> list[psutil.Process]:
    """The processes of this process's step run `run_id`: the children MLflow Projects started with
    `MLFLOW_RUN_ID=<run_id>` (the shell, the step's interpreter) and whatever they started (joblib workers,
    a marts helper)."""
    import psutil

    found: dict[int, psutil.Process] = {}
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.environ().get("MLFLOW_RUN_ID") == run_id:
                found.update({p.pid: p for p in [child, *child.children(recursive=True)]})
    return list(found.values())


def _kill(procs: list[psutil.Process], grace: float = 5.0) -> None:
    """SIGTERM (a step run ends KILLED), then SIGKILL for what is left after `grace` seconds. Nothing is reaped
    here: the thread waiting on the step's process must see how it ended (psutil's wait would reap it)."""
    import psutil

    def alive(p: psutil.Process) -> bool:
        try:
            return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    deadline = time.monotonic() + grace
    while any(alive(p) for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in procs:
        if alive(p):
            with contextlib.suppress(psutil.Error):
                p.kill()


class Launcher:
    """What every step of one pipeline run shares: the plan, the parent run, the cache, the running processes.

    `run` is safe to call from several threads (one step each), inside `step_environment`.
    """

    def __init__(self, config: PipelineConfig, plan: Plan, parent_id: str, log_dir: Path | None = None) -> None:
        self.config, self.plan, self.parent_id, self.log_dir = config, plan, parent_id, log_dir
        self.client = mlflow_client()
        self.experiment_id = self.client.get_run(parent_id).info.experiment_id
        self.extra = external_hashes(plan)
        self.commit = resolve_git_version(config.git_uri, config.git_version) if config.git_uri else None
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._git_lock = threading.Lock()  # one checkout for every step, made by the first that runs
        self._checkout: tempfile.TemporaryDirectory | None = None
        self._store_checked = False
        self._running: set[str] = set()  # the run ids of the steps running now

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

    def folder(self, step: PlannedStep) -> Path:
        """Where the step's project is: its folder in this checkout, or in the `--from-git` checkout."""
        if not self.commit:
            return step.spec.folder.resolve()
        with self._git_lock:
            if self._checkout is None:
                self._checkout = git_checkout(str(self.config.git_uri), self.commit)
        return Path(self._checkout.name) / "projects" / step.spec.folder.name

    def _launch(self, step: PlannedStep, params: dict[str, str], key: str, upstream: dict[str, str], label: str,
                progress: Progress | None, task: str) -> Run:
        """Make the step's run, tagged for the cache as a child of the pipeline run, and run its project in it."""
        from mlflow.exceptions import MlflowException

        if self.stopping.is_set():
            raise StepFailed(f"{label} was not started: the pipeline is stopping.", STOP_FIX, step.name)
        folder = self.folder(step)
        source = f"{self.config.git_uri}#projects/{step.spec.folder.name}" if self.commit else None
        # a FINISHED run that misses its key is only rerun, never wrongly reused
        tags = {**project_tags(folder, step.entry_point, source),
                names.MLFLOW_PARENT_RUN_TAG: self.parent_id, names.PIPELINE_RUN_TAG: self.parent_id,
                names.UPSTREAM_TAG: json.dumps(upstream, sort_keys=True), names.CACHE_KEY_TAG: key,
                names.MLFLOW_RUN_NAME_TAG: step.name, names.TASK_TAG: task}
        run_id = create_project_run(self.client, self.experiment_id, tags, logged_params(step.spec.parameters, params))
        with self._lock:
            self._running.add(run_id)
        log = self.log(step)
        error: Exception | None = None
        try:
            if self.stopping.is_set():  # (stop() came between the check above and now: it waits for us)
                fail_run(run_id, "not started: the pipeline is stopping", "KILLED", self.client)
                raise StepFailed(f"{label} was not started: the pipeline is stopping.", STOP_FIX, step.name, run_id)
            if progress is not None:
                progress.running(step.name, run_id)
            run_project_in(run_id, folder, step.entry_point, params, self.experiment_id, self.config.env_manager)
        except (MlflowException, OSError) as exc:  # (ExecutionException too): it failed, or could not start
            error = exc
        finally:
            with self._lock:
                self._running.discard(run_id)
        if self.stopping.is_set():
            raise StepFailed(f"{label} was stopped (run {run_id}).", STOP_FIX, step.name, run_id, log)
        run = self.client.get_run(run_id)
        if run.info.status == "RUNNING" and error is not None:
            # MLflow Projects ends a run whose command failed; this one never started (a bad parameter value,
            # a broken MLproject, an environment that could not be made)
            problem = f"{label} could not start: {first_line(error, 500)}"
            fail_run(run_id, problem, client=self.client)
            raise StepFailed(problem, "check the parameters (-P) and the step project", step.name, run_id, log)
        if run.info.status == "RUNNING":  # (the step's process ended without ending its run)
            self.client.set_terminated(run_id, "FINISHED" if error is None else "FAILED")
            run = self.client.get_run(run_id)
        if error is None and run.info.status == "FINISHED":
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
        """Stop every running step (its whole process tree) and wait for their threads; return their run ids.

        A step whose process starts after the first look (MLflow Projects was still making its environment)
        is stopped at the next look, every 0.2 s, until no step runs."""
        self.stopping.set()
        with self._lock:
            stopped = sorted(self._running)
        while True:
            with self._lock:
                running = list(self._running)
            if not running:
                return stopped
            for run_id in running:
                _kill(step_processes(run_id))
            time.sleep(0.2)

"""Running a plan on this machine: every step an `mlflow run` of its own project, a child of one pipeline run,
reused from the cache when nothing it depends on changed; steps whose inputs are ready run side by side.

`run_pipeline` (the local driver, `windpipe pipeline run`) opens nothing itself: it runs inside the pipeline
run `windpipe.steps.driver` opened, and `schedule`s the plan's steps on worker threads, each through
`windpipe.pipeline.launcher.Launcher.run` (cache lookup or launch), at most `--jobs` at once. A failed step
stops its dependants; Ctrl-C or SIGTERM kills the running steps and marks their runs KILLED.
"""

from __future__ import annotations

import logging
import signal
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from windpipe.errors import WindpipeError
from windpipe.pipeline.cache import StepResult
from windpipe.pipeline.launcher import STOP_FIX, Launcher, StepFailed, step_environment, step_label
from windpipe.pipeline.plan import PipelineConfig, PlannedStep, plan_for
from windpipe.pipeline.progress import Progress, tail
from windpipe.settings import Settings
from windpipe.tracking.runs import fail_run


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
    plan = plan_for(config, settings.projects_dir)
    parent = mlflow.active_run()
    if parent is None:
        raise WindpipeError("run_pipeline needs an active pipeline run.", "call it inside step_run('pipeline')")
    log_dir = settings.paths.pipeline_log_dir(parent.info.run_id)
    log_dir.mkdir(parents=True, exist_ok=True)
    launcher = Launcher(config, plan, parent.info.run_id, log_dir)
    labels = {s.name: step_label(plan, s) for s in plan.steps}
    logs = {s.name: launcher.log(s) for s in plan.steps}
    started = time.perf_counter()
    progress = Progress(labels, console, logs)
    projects_log = logging.getLogger("mlflow.projects")
    level = projects_log.level
    projects_log.setLevel(logging.WARNING)  # its "=== Running command ..." lines: the table says it
    try:
        with progress, step_environment(log_dir):
            results = schedule(launcher, progress, config.workers)
    finally:
        projects_log.setLevel(level)
        console.print(progress.summary(f"pipeline run {parent.info.run_id} ({config.workers} jobs)"))
    out = [results[s.name] for s in plan.steps]
    mlflow.log_metrics({"steps_reused": sum(r.reused for r in out), "steps_ran": sum(not r.reused for r in out),
                        "pipeline_seconds": time.perf_counter() - started, "jobs": config.workers})
    return out

"""The pipeline driver: open the pipeline run and run every step of the training pipeline inside it.

`windpipe pipeline run` and `mlflow run projects/pipeline` both end up here; the steps and their
wiring come from the step interfaces (windpipe.pipeline), each step an `mlflow run` of its project.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from windpipe import names
from windpipe.pipeline.runner import PipelineConfig, StepResult, run_pipeline, summary_table
from windpipe.settings import get_settings
from windpipe.steps.cli import flag
from windpipe.tracking.runs import mark_killed_runs, step_run


def driver(config: PipelineConfig, step_dir: Path | None = None) -> list[StepResult]:
    """Open the pipeline run (or join the one `mlflow run` made) and run every step inside it."""
    import mlflow
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)  # no wrapped run ids in logs
    under_mlflow_run = bool(os.environ.get("MLFLOW_RUN_ID"))  # step_run consumes the variable
    with step_run("pipeline", "main", step_dir=step_dir, run_name="pipeline") as run:
        if under_mlflow_run and not config.env_manager:
            # under `mlflow run projects/pipeline --env-manager X`: pass X on to every step
            tags = mlflow.MlflowClient().get_run(run.info.run_id).data.tags
            config.env_manager = tags.get(names.MLFLOW_PROJECT_ENV_TAG, "local")
        config.env_manager = config.env_manager or "local"
        mlflow.set_tags({names.QUICK_TAG: str(config.quick), names.FORCE_TAG: str(config.force),
                         names.ENV_MANAGER_TAG: config.env_manager})
        console.print(f"pipeline run {run.info.run_id} (env manager {config.env_manager})")
        for run_id in mark_killed_runs(mlflow.MlflowClient(), [run.info.experiment_id]):  # left by a kill
            console.print(f"run {run_id}: marked KILLED (it was RUNNING, its process is gone)")
        results = run_pipeline(get_settings(), config, console=console)
        console.print(summary_table(results, title=f"pipeline run {run.info.run_id}"))
        return results


def project_main(raw_dir: str, quick: str, force: str, env_manager: str,
                 step_dir: Path | None = None) -> list[StepResult]:
    """Run the whole training pipeline as child runs of this run (`mlflow run projects/pipeline`)."""
    config = PipelineConfig(external={"raw": raw_dir}, preset="quick" if flag(quick) else "full", force=flag(force),
                            env_manager=env_manager)
    return driver(config, step_dir=step_dir)

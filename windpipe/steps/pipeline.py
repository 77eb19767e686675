"""The pipeline project's entry points: the driver, compare and promote.

driver   reads the raw folder; runs process -> lr, rf grid, keras -> compare -> promote as
         child runs (see `windpipe.pipeline`), each reused from the cache when nothing changed.
compare  reads the training runs given by id (and their grid children); writes tag
         `windpipe.best_run_id` and metric `best_<metric>` on its run.
promote  reads the best run; registers it as a version of the model, moving `production`
         only when it beats the current one (`windpipe.registry.promote`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

from windpipe.errors import WindpipeError
from windpipe.settings import get_settings
from windpipe.steps.runs import step_run

LOWER_IS_BETTER = ("rmse", "mae", "mse", "loss")


def better(metric: str) -> str:
    """'min' or 'max': how `metric` ranks runs."""
    return "max" if metric.startswith("r2") else "min"


def driver(config, step_dir: Path | None = None):  # noqa: ANN001, ANN201 - PipelineConfig -> results
    """Open the pipeline run (or join the one `mlflow run` made) and run every step inside it."""
    import mlflow
    from rich.console import Console

    from windpipe.pipeline import run_pipeline, summary_table

    console = Console(width=None if sys.stdout.isatty() else 160)  # no wrapped run ids in logs
    under_mlflow_run = bool(os.environ.get("MLFLOW_RUN_ID"))  # step_run consumes the variable
    with step_run("pipeline", "main", step_dir=step_dir, run_name="pipeline") as run:
        if under_mlflow_run and not config.env_manager:
            # under `mlflow run projects/pipeline --env-manager X`: pass X on to every step
            tags = mlflow.MlflowClient().get_run(run.info.run_id).data.tags
            config.env_manager = tags.get("mlflow.project.env", "local")
        config.env_manager = config.env_manager or "local"
        mlflow.set_tags({"windpipe.quick": str(config.quick), "windpipe.force": str(config.force),
                         "windpipe.env_manager": config.env_manager})
        console.print(f"pipeline run {run.info.run_id} (env manager {config.env_manager})")
        results = run_pipeline(get_settings(), config, console=console)
        console.print(summary_table(results, title=f"pipeline run {run.info.run_id}"))
        return results


def candidates(client, run_ids: list[str], metric: str) -> list:  # noqa: ANN001
    """FINISHED runs among `run_ids` and their children that logged `metric` and a model."""
    from mlflow.exceptions import MlflowException

    found = []
    for run_id in run_ids:
        try:
            run = client.get_run(run_id)
        except MlflowException:
            raise WindpipeError(f"Run {run_id} does not exist.", "pass ids of training runs") from None
        children = client.search_runs([run.info.experiment_id],
                                      filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'")
        for r in [run, *children]:
            if r.info.status == "FINISHED" and metric in r.data.metrics and r.data.tags.get("windpipe.model_uri"):
                found.append(r)
    return found


def compare_main(runs: str, metric: str = "rmse", step_dir: Path | None = None) -> str:
    """Pick the best of the given training runs (and their grid children) by `metric`; return its id."""
    import mlflow

    run_ids = [r.strip() for r in runs.split(",") if r.strip()]
    with step_run("compare", "compare", step_dir=step_dir):
        if not run_ids:
            raise WindpipeError("compare got no training runs.", "pass runs=<id>,<id>,...")
        found = candidates(mlflow.MlflowClient(), run_ids, metric)
        if not found:
            raise WindpipeError(f"None of the runs {', '.join(run_ids)} (or their children) logged {metric!r} "
                                "and a model.", "check the training steps' runs, or choose another --metric")
        pick = min if better(metric) == "min" else max
        best = pick(found, key=lambda r: r.data.metrics[metric])
        lines = ["| run | family | " + metric + " |", "|---|---|---|"]
        for r in sorted(found, key=lambda r: r.data.metrics[metric], reverse=better(metric) == "max"):
            lines.append(f"| {r.info.run_id} | {r.data.tags.get('windpipe.model_family', '')} | "
                         f"{r.data.metrics[metric]:.4f} |")
        mlflow.log_text("\n".join(lines) + "\n", "compare.md")
        mlflow.log_metrics({f"best_{metric}": best.data.metrics[metric], "candidates": len(found)})
        mlflow.set_tags({"windpipe.best_run_id": best.info.run_id,
                         "windpipe.best_model_family": best.data.tags.get("windpipe.model_family", ""),
                         "windpipe.model_uri": best.data.tags["windpipe.model_uri"]})
        print("\n".join(lines))
        print(f"best by {metric}: run {best.info.run_id} ({best.data.metrics[metric]:.4f})")
        return best.info.run_id


def promote_main(run_id: str, metric: str = "rmse", margin: float = 0.0, step_dir: Path | None = None) -> object:
    """Promote the compared best run through the registry's quality gate."""
    import mlflow

    with step_run("promote", "promote", step_dir=step_dir):
        if not run_id:
            raise WindpipeError("promote got no run id.", "run the compare step first")
        try:
            from windpipe.registry import promote  # PROMOTE CALL SITE: windpipe.registry.promote
        except ImportError:
            raise WindpipeError("windpipe.registry.promote is not available in this checkout.",
                                "update windpipe (the registry module provides promote)") from None
        result = promote(get_settings(), metric=metric, run_id=run_id, margin=margin)
        fields = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else dict(vars(result))
        tags = {f"windpipe.promote.{k}": str(v)[:4000] for k, v in fields.items()
                if not isinstance(v, dict | list) and v is not None}
        mlflow.set_tags(tags)
        version = fields.get("version") or fields.get("challenger_version")
        if version is not None and str(version).isdigit():
            mlflow.log_metric("promoted_version", int(version))
        print(f"promote: {result}")
        return result

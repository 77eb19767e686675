"""Pipeline project: the driver (`main`) and its compare and promote steps.

main     reads RAW_DIR (raw OPSD-shaped CSV files); runs process -> lr, rf grid, keras ->
         compare -> promote, each as a child run of its own project, reused when cached.
compare  reads the training runs RUNS (ids); writes tag windpipe.best_run_id on its run.
promote  reads the run RUN_ID; registers its model and moves `production` through the gate.
"""

from pathlib import Path

import typer

from windpipe.steps.runs import run_step

HERE = Path(__file__).parent
app = typer.Typer(add_completion=False)


@app.command()
def main(raw_dir: str = typer.Option(..., help="Folder with the raw OPSD-shaped CSV files."),
         quick: str = typer.Option("false", help="true: small grid and few epochs."),
         force: str = typer.Option("false", help="true: rerun every step."),
         env_manager: str = typer.Option("", help="local | virtualenv | uv; empty: this run's own.")) -> None:
    """Run the whole pipeline as child runs of this run."""
    from windpipe.pipeline import PipelineConfig
    from windpipe.steps.pipeline import driver

    def yes(v: str) -> bool:
        return v.strip().lower() in ("1", "true", "yes")

    config = PipelineConfig(raw_dir=Path(raw_dir), quick=yes(quick), force=yes(force), env_manager=env_manager)
    run_step(driver, config, step_dir=HERE)


@app.command()
def compare(runs: str = typer.Option(..., help="Comma-separated training run ids."),
            metric: str = typer.Option("rmse", help="Metric that ranks the runs.")) -> None:
    """Pick the best training run by METRIC."""
    from windpipe.steps.pipeline import compare_main

    run_step(compare_main, runs, metric, step_dir=HERE)


@app.command()
def promote(run_id: str = typer.Option(..., help="The run whose model to promote."),
            metric: str = typer.Option("rmse", help="Metric of the quality gate."),
            margin: float = typer.Option(0.0, help="How much better the challenger must be.")) -> None:
    """Register the run's model; move `production` when it beats the current one."""
    from windpipe.steps.pipeline import promote_main

    run_step(promote_main, run_id, metric, margin, step_dir=HERE)


if __name__ == "__main__":
    app()

"""What the lr, rf and keras step scripts share: their typer app, common options, `evaluate`."""

from __future__ import annotations

from pathlib import Path

import typer

from windpipe.steps.runs import run_step

DATA = typer.Option("latest", help="Processed entity: path, runs:/ or mlflow-artifacts:/ URI, or `latest` "
                                   "(the newest successful process run's entity).")
TEST_SIZE = typer.Option("0.2", help="Holdout fraction.")
SPLIT_BY = typer.Option("random", help="random (seeded) or time (last part is the holdout).")


def step_app(family: str, step_dir: Path) -> typer.Typer:
    """A step script's app, with the `evaluate` entry point every family has."""
    from windpipe.steps.train import evaluate

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)

    @app.command("evaluate")
    def evaluate_cmd(model_uri: str = typer.Option(..., help="Model to score, e.g. models:/m-... ."),
                     data: str = DATA, scope: str = typer.Option("holdout", help="holdout (test split) or all rows."),
                     seed: str = "42", test_size: str = TEST_SIZE, split_by: str = SPLIT_BY) -> None:
        """Score MODEL_URI on the processed entity; log eval_ metrics."""
        run_step(evaluate, family, model_uri, data, scope, seed, test_size, split_by, step_dir=step_dir)

    return app

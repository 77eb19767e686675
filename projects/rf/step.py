"""Random forest step: the `processed` entity -> a logged RandomForestRegressor model.

Reads  the `processed` entity (--data: a path, a runs:/ or mlflow-artifacts:/ URI, or `latest` =
       the entity of the newest successful process run in the experiment).
Writes the model (models:/m-...), holdout metrics (rmse, mae, r2, per target), a
       predicted-vs-recorded figure, the entity as an MLflow dataset input, tags.
Entry point `grid`: one nested child run per (n_estimators, max_depth); the parent logs the best model.
Entry point `evaluate` reads a model URI and the entity and writes eval_ metrics only.
"""

from pathlib import Path

import typer

from windpipe.steps.runs import run_step
from windpipe.steps.train import evaluate, grid, train

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True)
STEP_DIR = Path(__file__).parent
DATA = typer.Option("latest", help="Processed entity: path, runs:/ or mlflow-artifacts:/ URI, or `latest` "
                                   "(the newest successful process run's entity).")


@app.command()
def main(data: str = DATA, n_estimators: str = typer.Option("64", help="Number of trees."),
         max_depth: str = typer.Option("14", help="Tree depth (none = unlimited)."),
         min_samples_leaf: str = typer.Option("3", help="Minimum rows per leaf."),
         seed: str = typer.Option("42", help="Split and forest seed."),
         test_size: str = typer.Option("0.2", help="Holdout fraction."),
         split_by: str = typer.Option("random", help="random (seeded) or time (last part is the holdout).")) -> None:
    """Train a RandomForestRegressor and log it."""
    run_step(train, "rf", data, seed, test_size, split_by, step_dir=STEP_DIR, n_estimators=n_estimators,
             max_depth=max_depth, min_samples_leaf=min_samples_leaf)


@app.command("grid")
def grid_cmd(data: str = DATA, n_estimators: str = typer.Option("8,16,32,64", help="Comma list of tree counts."),
             max_depth: str = typer.Option("6,10,14", help="Comma list of depths."),
             min_samples_leaf: str = "3", seed: str = "42", test_size: str = "0.2", split_by: str = "random") -> None:
    """Grid search: one child run per combination, best model logged on the parent run."""
    run_step(grid, data, n_estimators, max_depth, min_samples_leaf, seed, test_size, split_by,
             step_dir=STEP_DIR)


@app.command("evaluate")
def evaluate_cmd(model_uri: str = typer.Option(..., help="Model to score, e.g. models:/m-... ."),
                 data: str = DATA, scope: str = typer.Option("holdout", help="holdout (test split) or all rows."),
                 seed: str = "42", test_size: str = "0.2", split_by: str = "random") -> None:
    """Score MODEL_URI on the processed entity; log eval_ metrics."""
    run_step(evaluate, "rf", model_uri, data, scope, seed, test_size, split_by, step_dir=STEP_DIR)


if __name__ == "__main__":
    app()

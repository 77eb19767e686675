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
from windpipe.steps.train import grid, train
from windpipe.steps.train_cli import DATA, SPLIT_BY, TEST_SIZE, step_app

STEP_DIR = Path(__file__).parent
app = step_app("rf", STEP_DIR)


@app.command()
def main(data: str = DATA, n_estimators: str = typer.Option("64", help="Number of trees."),
         max_depth: str = typer.Option("14", help="Tree depth (none = unlimited)."),
         min_samples_leaf: str = typer.Option("3", help="Minimum rows per leaf."),
         seed: str = typer.Option("42", help="Split and forest seed."),
         test_size: str = TEST_SIZE,
         split_by: str = SPLIT_BY) -> None:
    """Train one RandomForestRegressor per target and log them as one model."""
    run_step(train, "rf", data, seed, test_size, split_by, step_dir=STEP_DIR, n_estimators=n_estimators,
             max_depth=max_depth, min_samples_leaf=min_samples_leaf)


@app.command("grid")
def grid_cmd(data: str = DATA, n_estimators: str = typer.Option("8,16,32,64", help="Comma list of tree counts."),
             max_depth: str = typer.Option("6,10,14", help="Comma list of depths."),
             min_samples_leaf: str = "3", seed: str = "42", test_size: str = TEST_SIZE,
             split_by: str = SPLIT_BY) -> None:
    """Grid search: one child run per combination, best model logged on the parent run."""
    run_step(grid, data, n_estimators, max_depth, min_samples_leaf, seed, test_size, split_by,
             step_dir=STEP_DIR)


if __name__ == "__main__":
    app()

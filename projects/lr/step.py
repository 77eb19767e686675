"""Linear regression step: the `processed` entity -> a logged LinearRegression model.

Reads  the `processed` entity (--data: a path, a runs:/ or mlflow-artifacts:/ URI, or `latest` =
       the entity of the newest successful process run in the experiment).
Writes the model (models:/m-...), holdout metrics (rmse, mae, r2, per target), a
       predicted-vs-recorded figure, the entity as an MLflow dataset input, tags.
Entry point `evaluate` reads a model URI and the entity and writes eval_ metrics only.
"""

from pathlib import Path

import typer

from windpipe.steps.runs import run_step
from windpipe.steps.train import train
from windpipe.steps.train_cli import DATA, SPLIT_BY, TEST_SIZE, step_app

STEP_DIR = Path(__file__).parent
app = step_app("lr", STEP_DIR)


@app.command()
def main(data: str = DATA, seed: str = typer.Option("42", help="Split seed."),
         test_size: str = TEST_SIZE,
         split_by: str = SPLIT_BY) -> None:
    """Train LinearRegression (with windspeed^2, ^3 and radiation x temperature terms) and log it."""
    run_step(train, "lr", data, seed, test_size, split_by, step_dir=STEP_DIR)


if __name__ == "__main__":
    app()

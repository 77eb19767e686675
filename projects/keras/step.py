"""Keras step: the `processed` entity -> a logged Keras 3 MLP (per-target towers, early stopping).

Reads  the `processed` entity (--data: a path, a runs:/ or mlflow-artifacts:/ URI, or `latest` =
       the entity of the newest successful process run in the experiment).
Writes the model (models:/m-...), per-epoch metrics (mlflow.keras.autolog), holdout metrics
       (rmse, mae, r2, per target), a predicted-vs-recorded figure, the entity as an MLflow
       dataset input, tags.
Entry point `evaluate` reads a model URI and the entity and writes eval_ metrics only.
"""

from pathlib import Path

import typer

from windpipe.steps.runs import run_step
from windpipe.steps.train import train
from windpipe.steps.train_cli import DATA, SPLIT_BY, TEST_SIZE, step_app

STEP_DIR = Path(__file__).parent
app = step_app("keras", STEP_DIR)


@app.command()
def main(data: str = DATA, epochs: str = typer.Option("150", help="Maximum epochs."),
         batch_size: str = typer.Option("512", help="Batch size."),
         learning_rate: str = typer.Option("0.005", help="Adam learning rate."),
         hidden_units: str = typer.Option("96,96,96", help="Comma list: units per hidden layer of each tower."),
         patience: str = typer.Option("10", help="Early-stopping patience (epochs)."),
         ensemble: str = typer.Option("2", help="Towers per target, averaged (different initialisations)."),
         bins: str = typer.Option("8", help="Quantile bins per feature for the piecewise-linear encoding; 0 = off."),
         seed: str = typer.Option("42", help="Split and weight-initialisation seed."),
         test_size: str = TEST_SIZE,
         split_by: str = SPLIT_BY) -> None:
    """Train the Keras MLP with early stopping and log it."""
    run_step(train, "keras", data, seed, test_size, split_by, step_dir=STEP_DIR, epochs=epochs,
             batch_size=batch_size, learning_rate=learning_rate, hidden_units=hidden_units, patience=patience,
             ensemble=ensemble, bins=bins)


if __name__ == "__main__":
    app()

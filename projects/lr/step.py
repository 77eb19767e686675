"""Linear step: the `processed` entity -> a logged linear model (Ridge on weather splines x calendar x trend).

Reads  the `processed` entity (--data: a path, a runs:/ or mlflow-artifacts:/ URI, or `latest` =
       the entity of the newest successful process run in the experiment).
Writes the model (models:/m-...), holdout metrics (rmse, mae, r2, per target), a
       predicted-vs-recorded figure, the entity as an MLflow dataset input, tags.
Entry point `backtest` refits on everything before each of the last windows and logs per-fold metrics
(no model); `evaluate` reads a model URI and the entity and writes eval_ metrics only.
Options and their defaults: MLproject (`python step.py main --help`).
"""

from pathlib import Path

from windpipe.steps.cli import run_entry_points
from windpipe.steps.train import entry_points

if __name__ == "__main__":
    run_entry_points(Path(__file__).parent, **entry_points("lr"))

"""Predict step: a parquet of features -> a parquet of predictions, the data marts and drift.

Reads  INPUT (parquet: windspeed, temperature, rad_horizontal, rad_diffuse; utc_timestamp optional)
       and models:/wind_solar@production (or MODEL_URI).
Writes OUTPUT (parquet: row_no, utc_timestamp, solar_GW_pred, wind_GW_pred, model_name,
       model_version, batch_id), one batch in the data marts, drift metrics on the run.
"""

from pathlib import Path

import typer

from windpipe.steps.predict import main
from windpipe.steps.runs import run_step


def _flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes")


def cli(input: str = typer.Option(..., help="Parquet of features to score."),
        output: str = typer.Option(..., help="Parquet of predictions to write."),
        model_uri: str = typer.Option("", help="Model URI; empty = models:/wind_solar@production."),
        overwrite: str = typer.Option("false", help="true: replace OUTPUT if it exists."),
        drop_invalid: str = typer.Option("false", help="true: skip rows with missing values.")) -> None:
    """Score INPUT with the production model and log the batch."""
    run_step(main, input, output, model_uri or None, _flag(overwrite), _flag(drop_invalid), source="project",
             step_dir=Path(__file__).parent)


if __name__ == "__main__":
    typer.run(cli)

"""Process step: raw OPSD-shaped CSV files -> the `processed` entity (parquet).

Reads  RAW_DIR/time_series_60min_singleindex.csv and RAW_DIR/weather_data.csv.
Writes the `processed` entity: entities/processed.parquet on the run, also an MLflow dataset.
"""

from pathlib import Path

import typer

from windpipe.steps.process import main
from windpipe.steps.runs import run_step


def cli(raw_dir: str = typer.Option(..., help="Folder with the two raw OPSD-shaped CSV files.")) -> None:
    """Turn raw files into the processed entity and log it."""
    run_step(main, raw_dir, step_dir=Path(__file__).parent)


if __name__ == "__main__":
    typer.run(cli)

"""Process step: raw OPSD-shaped CSV files -> the `processed` entity (parquet).

Reads  RAW_DIR/time_series_60min_singleindex.csv and RAW_DIR/weather_data.csv.
Writes the `processed` entity: entities/processed.parquet on the run, also an MLflow dataset.
"""

from pathlib import Path

from windpipe.steps.cli import run_entry_points
from windpipe.steps.process import main

if __name__ == "__main__":
    run_entry_points(Path(__file__).parent, main=main)

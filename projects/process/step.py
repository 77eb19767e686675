"""Process step: raw OPSD-shaped CSV files (or a processed file) -> the `processed` entity (parquet).

Reads  RAW_DIR/time_series_60min_singleindex.csv and RAW_DIR/weather_data.csv; or, with --processed,
       a CSV or parquet file shaped like germany.csv, checked (no gaps, one row per hour, sorted).
Writes the `processed` entity: entities/processed.parquet on the run, also an MLflow dataset.
"""

from pathlib import Path

from windpipe.steps.cli import run_entry_points
from windpipe.steps.process import main

if __name__ == "__main__":
    run_entry_points(Path(__file__).parent, main=main)

"""Predict step: a parquet of features -> a parquet of predictions, the data marts and drift.

Reads  INPUT (parquet: windspeed, temperature, rad_horizontal, rad_diffuse; utc_timestamp optional)
       and models:/wind_solar@production (or MODEL_URI).
Writes OUTPUT (parquet: row_no, utc_timestamp, solar_GW_pred, wind_GW_pred, model_name,
       model_version, batch_id), one batch in the data marts, drift metrics on the run.
"""

from pathlib import Path

from windpipe.steps.cli import run_entry_points
from windpipe.steps.predict import project_main

if __name__ == "__main__":
    run_entry_points(Path(__file__).parent, main=project_main)

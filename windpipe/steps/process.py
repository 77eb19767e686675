"""The process step: raw OPSD-shaped files, or a processed file the user brings -> the `processed` entity.

Reads:  RAW_DIR/time_series_60min_singleindex.csv, RAW_DIR/weather_data.csv; or, with PROCESSED,
        that CSV or parquet file (shaped like the workshop's germany.csv) instead, checked.
Writes: the `processed` entity (entities/processed.parquet on the run), logged as a
        run artifact and as an MLflow dataset.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from windpipe import names
from windpipe.data.process import check_processed, process, read_processed, read_raw
from windpipe.entities.schema import PROCESSED, data_date
from windpipe.entities.store import log_entity, write_entity
from windpipe.tracking.runs import step_run


def main(raw_dir: str, processed: str = "", duplicates: str = "error", step_dir: Path | None = None) -> str:
    """Turn the raw files in RAW_DIR (or the file PROCESSED) into the processed entity and log it;
    return the entity's artifact URI."""
    import mlflow

    with step_run("process", step_dir=step_dir):
        started = time.perf_counter()
        if str(processed).strip():
            source = Path(processed).resolve()
            given = read_processed(source)
            df = check_processed(given, f"The processed file {source}", duplicates)
            params, rows_in = {"processed_file": str(source), "duplicates": duplicates}, len(given)
        else:
            power, weather = read_raw(raw_dir)
            df = process(power, weather)
            params, rows_in = {"raw_dir": str(Path(raw_dir).resolve())}, len(power)
        work_s = time.perf_counter() - started
        mlflow.log_params(params)
        with tempfile.TemporaryDirectory() as tmp:
            path = write_entity(PROCESSED, df, Path(tmp) / PROCESSED.filename)
            uri = log_entity(PROCESSED, df, path, context="output")
        mlflow.log_metrics({"rows": len(df), "process_seconds": work_s, "rows_dropped": rows_in - len(df)})
        mlflow.set_tags({names.DATA_DATE_TAG: data_date(df), names.PROCESSED_TAG: uri})
        print(f"processed {len(df)} rows in {work_s:.2f} s -> {uri}")
        return uri

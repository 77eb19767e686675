"""Batch prediction: a parquet of features in, a parquet of predictions out, recorded in the marts.

Reads:  IN.parquet with the model signature's columns (windspeed, temperature, rad_horizontal,
        rad_diffuse; numbers) and utc_timestamp (optional for models of the weather only; required for
        models that follow the trend, which read columns derived from it); other columns are ignored
        and reported.
Writes: OUT.parquet with row_no, utc_timestamp (when the input has it), solar_GW_pred,
        wind_GW_pred, model_name, model_version, batch_id; and one batch in the data marts
        (windpipe.marts), with its drift against the same season of the model's training entity
        (windpipe.scoring.drift).

IN and OUT are local paths or S3 objects (s3://<bucket>/<key>, windpipe.stack.objects): an S3 input is
read through a temporary copy, an S3 output written locally and uploaded in one PUT where a local one is
renamed into place. `run_batch` strings validation, the model (windpipe.models.loading), drift and the
marts together; the MLflow run lives in windpipe.steps.predict.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from windpipe import names
from windpipe.errors import WindpipeError
from windpipe.faults import fault_point
from windpipe.fileio import staged_path
from windpipe.models import loading
from windpipe.models.loading import ModelRef
from windpipe.names import PRED_COLUMNS, TIMESTAMP
from windpipe.scoring import drift
from windpipe.scoring.validate import ValidInput, read_input, row_list, validate_input
from windpipe.settings import Settings, get_settings
from windpipe.stack import objects
from windpipe.tracking.runs import termination_deferred

OUTPUT_COLUMNS = ["row_no", TIMESTAMP, *PRED_COLUMNS, "model_name", "model_version", "batch_id"]


@dataclass
class BatchResult:
    """What `run_batch` did."""

    output: Path | str  # (an S3 output: its URI)
    batch_id: int | None
    rows: int
    rows_dropped: int
    extra_columns: list[str]
    model: ModelRef
    drift: pd.DataFrame | None
    seconds: dict[str, float]

    @property
    def drift_status(self) -> str:
        return drift.batch_status(self.drift)


def output_frame(valid: ValidInput, pred: np.ndarray, ref: ModelRef, batch_id: int | None = None) -> pd.DataFrame:
    """The output table: row_no, utc_timestamp (if known), predictions, model name/version, batch_id."""
    n = len(pred)
    out = {"row_no": valid.row_numbers.astype("int64")}
    if valid.timestamps is not None:  # (not .to_numpy(): that makes a Timestamp object per row)
        out[TIMESTAMP] = pd.to_datetime(valid.timestamps, utc=True).array
    for i, col in enumerate(PRED_COLUMNS):
        out[col] = pred[:, i]
    out["model_name"] = pd.Categorical.from_codes(np.zeros(n, dtype="int8"), [ref.name or ""])
    out["model_version"] = pd.Categorical.from_codes(np.zeros(n, dtype="int8"), [ref.version or ""])
    out["batch_id"] = pd.arrays.IntegerArray(np.full(n, batch_id or 0, dtype="int64"), np.full(n, batch_id is None))
    return pd.DataFrame(out)


def batch_drift(valid: ValidInput, ref: ModelRef, settings: Settings | None = None) -> pd.DataFrame | None:
    """Drift of the scored features against the same season of the model's training entity (None when the
    entity is unknown; the whole entity when the batch has no timestamps)."""
    if not ref.training_entity_uri:
        return None
    reference = loading.training_entity(ref, settings)
    return drift.feature_drift(valid.features, reference, ref.training_entity_uri, batch_times=valid.timestamps,
                               reference_times=reference[TIMESTAMP])


def _read(uri: str, settings: Settings) -> pd.DataFrame:
    """The input as a frame: a local file, or an S3 object read through a temporary copy."""
    if not objects.is_s3(uri):
        return read_input(uri)
    with objects.local_copy(uri, settings) as local:
        if local is None:
            raise WindpipeError(f"Input {uri} does not exist.", "pass an existing parquet object with --input")
        return read_input(local)


@dataclass
class _Upload:
    """An S3 output staged in a local temporary file; `publish()` uploads it (one PUT: readers never see half)."""

    tmp: Path
    target: str
    settings: Settings

    def publish(self) -> str:
        objects.publish(self.tmp, self.target, self.settings)
        return self.target


@contextlib.contextmanager
def _staged(output: str, settings: Settings) -> Iterator[Any]:
    """Where the output is written before `publish()` puts it in place: beside a local target, or a temporary file
    uploaded to S3."""
    if not objects.is_s3(output):
        with staged_path(output) as staged:
            yield staged
        return
    objects.split(output)
    with tempfile.TemporaryDirectory(prefix="windpipe-output-") as tmp:
        yield _Upload(Path(tmp) / objects.name_of(output), output, settings)


def run_batch(input_path: Path | str, output_path: Path | str, model_uri: str | None = None,
              overwrite: bool = False, drop_invalid: bool = False, source: str = "cli",
              run_id: str | None = None, settings: Settings | None = None,
              say: Callable[[str], None] = print,
              before_commit: Callable[[BatchResult], None] | None = None) -> BatchResult:
    """Validate, then score and check drift while the marts take the input rows; commit, then put the output
    file in place.

    The output file and the marts always agree, also when the process is killed at any moment: the
    batch is committed `pending` (readers skip it), then the output file is renamed into place, then
    the batch is marked complete. SIGTERM inside those three steps waits until they are done; a kill
    -9 between them leaves a pending batch that the next `windpipe predict` (or `windpipe status`)
    completes (the file is there) or removes (it is not). Anything failing earlier leaves no file
    and no rows. `before_commit` (the predict step's MLflow logging) runs with the result before
    anything is committed, so a tracking server or artifact store that is down commits nothing.
    """
    from windpipe.marts.tables import get_engine
    from windpipe.marts.writers import BatchWriter, settle_pending

    settings = settings or get_settings()
    input_path, output_path = str(input_path), str(output_path)  # a path, or s3://<bucket>/<key>
    local_out = not objects.is_s3(output_path)
    if objects.exists(output_path, settings) and not (local_out and Path(output_path).is_dir()) and not overwrite:
        raise WindpipeError(f"Output {output_path} exists already.",
                            "pass --overwrite to replace it, or choose another --output")
    if objects.absolute(output_path) == objects.absolute(input_path):
        raise WindpipeError("--output is the same file as --input.", "write the predictions to another file")
    t: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(name: str) -> None:
        t[name] = time.perf_counter() - t0 - sum(t.values())

    df = _read(input_path, settings)
    for line in settle_pending(get_engine(settings=settings), lambda uri: objects.local_copy(uri, settings)):
        say(line)  # (what a killed predict left)
    lap("read")
    # the output folder is checked (a folder, read-only, missing) before any work; the marts take the input
    # rows (a helper process for big batches) while the model loads and scores
    with _staged(output_path, settings) as staged, BatchWriter(rows=len(df), settings=settings) as batch:
        ref = loading.resolve(model_uri, settings)
        files = loading.model_files(ref, settings)
        model = None if files else loading.load(ref, settings)  # no local files: the signature needs the model
        lap("resolve")
        columns = (loading.signature_columns(model) if model is not None
                   else loading.file_signature_columns(files, ref))
        valid = validate_input(df, columns, drop_invalid, where=f"Input {input_path}")
        del df
        lap("validate")
        batch.start(valid.features, model_name=ref.name, model_version=ref.version, model_uri=ref.load_uri,
                    source=source, timestamps=valid.timestamps, row_numbers=valid.row_numbers, run_id=run_id,
                    input_path=objects.absolute(input_path), rows_dropped=len(valid.dropped_rows),
                    output_path=objects.absolute(output_path))
        lap("marts_start")
        model = model or loading.load(ref, settings)
        lap("load_model")
        pred = loading.predict(model, valid.features, valid.timestamps)
        lap("score")
        fault_point("predict:scored")  # (the drift reference, the model's training entity, is fetched next)
        drift_rows = batch_drift(valid, ref, settings)
        lap("drift")
        fault_point("predict:marts_open")  # (the input rows are in, the transaction is open)
        batch.add_predictions(pred, drift_rows, drift.batch_status(drift_rows))
        # (while the marts insert the predictions)
        output_frame(valid, pred, ref, batch.batch_id).to_parquet(staged.tmp, index=False)
        if objects.exists(output_path, settings) and not overwrite:  # appeared while we worked
            raise WindpipeError(f"Output {output_path} appeared while predicting.", "choose another --output")
        lap("write")
        result = BatchResult(Path(output_path) if local_out else output_path, batch.batch_id, len(pred),
                             len(valid.dropped_rows), valid.extra_columns, ref, drift_rows, t)
        fault_point("predict:before_commit")
        if before_commit is not None:
            before_commit(result)
        with termination_deferred():  # commit -> rename -> complete: SIGTERM waits for all three
            batch.commit()
            fault_point("predict:after_commit")
            try:
                staged.publish()
            except BaseException:
                batch.discard()
                raise
            fault_point("predict:after_rename")
            batch.complete()
    lap("commit")
    if valid.extra_columns:
        say(f"ignored column(s) not in the model's signature: {', '.join(valid.extra_columns)}")
    if valid.dropped_rows:
        say(f"dropped {len(valid.dropped_rows)} row(s) with missing or impossible values "
            f"(rows, counted from 0: {row_list(np.asarray(valid.dropped_rows))})")
    if drift_rows is None:
        say(f"drift: unchecked (the model's run has no {names.TRAINING_DATA_TAG} tag)")
    t["total"] = time.perf_counter() - t0
    return result

"""Batch prediction: a parquet of features in, a parquet of predictions out, recorded in the marts.

Reads:  IN.parquet with the model signature's columns (windspeed, temperature, rad_horizontal,
        rad_diffuse; numbers) and utc_timestamp (optional for models of the weather only; required for
        models that follow the trend, which read columns derived from it); other columns are ignored
        and reported.
Writes: OUT.parquet with row_no, utc_timestamp (when the input has it), solar_GW_pred,
        wind_GW_pred, model_name, model_version, batch_id; and one batch in the data marts
        (windpipe.marts), with its drift against the same season of the model's training entity
        (windpipe.scoring.drift).

The input streams: it is read in record batches of `settings.predict_batch_rows` rows (pyarrow), and
each part is validated, scored, appended to the output file and written into the marts (the helper
process of big batches takes it while the next part is scored), all in the batch's one marts
transaction; drift comes from mergeable summaries of every part. Memory stays flat whatever the
file's size, and a bad row in the last part still leaves no file and no rows.

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
from windpipe.names import PRED_COLUMNS, QUANTILE_COLUMNS, TIMESTAMP
from windpipe.scoring import drift
from windpipe.scoring.validate import InputCheck, InputFile, ValidInput, row_list
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


def output_frame(valid: ValidInput, pred: np.ndarray, ref: ModelRef, batch_id: int | None = None,
                 quantiles: np.ndarray | None = None) -> pd.DataFrame:
    """The output table: row_no, utc_timestamp (if known), predictions, their quantiles (solar_GW_p10, ...: a
    model that gives them), model name/version, batch_id."""
    n = len(pred)
    out = {"row_no": valid.row_numbers.astype("int64")}
    if valid.timestamps is not None:  # (not .to_numpy(): that makes a Timestamp object per row)
        out[TIMESTAMP] = pd.to_datetime(valid.timestamps, utc=True).array
    for i, col in enumerate(PRED_COLUMNS):
        out[col] = pred[:, i]
    if quantiles is not None:
        flat = quantiles.reshape(n, -1)
        out.update({col: flat[:, i] for i, col in enumerate(QUANTILE_COLUMNS)})
    out["model_name"] = pd.Categorical.from_codes(np.zeros(n, dtype="int8"), [ref.name or ""])
    out["model_version"] = pd.Categorical.from_codes(np.zeros(n, dtype="int8"), [ref.version or ""])
    out["batch_id"] = pd.arrays.IntegerArray(np.full(n, batch_id or 0, dtype="int64"), np.full(n, batch_id is None))
    return pd.DataFrame(out)


def drift_summary(source: InputFile, ref: ModelRef, settings: Settings | None = None,
                  window: tuple[pd.Timestamp, pd.Timestamp] | None = None) -> drift.Summary | None:
    """A drift summary of `source`'s rows against the season of the model's training entity that `window` (default:
    the file's first and last time) spans; None when the model's training entity is unknown."""
    if not ref.training_entity_uri:
        return None
    reference = loading.training_entity(ref, settings)
    window = window if window is not None else source.time_window()
    chosen = drift.season_of(len(reference), reference[TIMESTAMP], window)
    return drift.Summary(reference, chosen, source.rows)


def _summary_of_scored_rows(summary: drift.Summary, check: InputCheck, source: InputFile, ref: ModelRef,
                            settings: Settings, batch_rows: int) -> drift.Summary:
    """`summary` when its season is the scored rows' own; else (rows dropped or refused at the file's first or last
    time moved the window) a new one of the scored rows, reading the file again."""
    reference = loading.training_entity(ref, settings)
    if np.array_equal(drift.season_of(len(reference), reference[TIMESTAMP], check.window).rows, summary.chosen.rows):
        return summary
    again = drift_summary(source, ref, settings, window=check.window)
    recheck = InputCheck(check.columns, check.drop_invalid, check.where, check.rows)
    for first, frame in source.parts(batch_rows):
        again.add(recheck.part(frame, first).features)
    return again


@contextlib.contextmanager
def _opened(uri: str, settings: Settings) -> Iterator[InputFile]:
    """The input, open for reading in parts: a local file, or an S3 object read through a temporary copy."""
    with objects.local_copy(uri, settings) as local:
        if local is None:
            raise WindpipeError(f"Input {uri} does not exist.", "pass an existing parquet object with --input")
        with InputFile(local) as source:
            yield source


class _Clock:
    """Seconds per phase, summed over the parts (read, validate, score, ... come back for each)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = self._start = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self._last
        self._last = now

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total": time.perf_counter() - self._start}


class _OutputWriter:
    """The output parquet written part by part (pyarrow's ParquetWriter: one row group a part)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: Any = None

    def write(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


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
    """Read the input in parts; validate, score, write each part to the output file and the marts; commit, then
    put the output file in place.

    The output file and the marts always agree, also when the process is killed at any moment: the
    batch is committed `pending` (readers skip it), then the output file is renamed into place, then
    the batch is marked complete. SIGTERM inside those three steps waits until they are done; a kill
    -9 between them leaves a pending batch that the next `windpipe predict` (or `windpipe status`)
    completes (the file is there) or removes (it is not). Anything failing earlier (a bad row in the
    last part too) leaves no file and no rows: the parts went into a temporary file and an open
    transaction. `before_commit` (the predict step's MLflow logging) runs with the result before
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
    clock = _Clock()
    part_rows = settings.predict_batch_rows
    with _opened(input_path, settings) as inp:
        for line in settle_pending(get_engine(settings=settings), lambda uri: objects.local_copy(uri, settings)):
            say(line)  # (what a killed predict left)
        clock.lap("read")
        # the output folder is checked (a folder, read-only, missing) before any work
        with _staged(output_path, settings) as staged, BatchWriter(rows=inp.rows, settings=settings) as batch:
            ref = loading.resolve(model_uri, settings)
            files = loading.model_files(ref, settings)
            model = None if files else loading.load(ref, settings)  # no local files: the signature needs the model
            columns = (loading.signature_columns(model) if model is not None
                       else loading.file_signature_columns(files, ref))
            check = InputCheck(columns, drop_invalid, where=f"Input {input_path}", rows=inp.rows)
            batch.begin(model_name=ref.name, model_version=ref.version, model_uri=ref.load_uri, source=source,
                        run_id=run_id, input_path=objects.absolute(input_path),
                        output_path=objects.absolute(output_path))
            clock.lap("resolve")
            fault_point("predict:drift_reference")  # (the model's training entity is fetched next)
            summary = drift_summary(inp, ref, settings)
            clock.lap("drift")
            out = _OutputWriter(staged.tmp)
            try:
                for first, frame in inp.parts(part_rows):
                    clock.lap("read")
                    valid = check.part(frame, first)
                    del frame
                    clock.lap("validate")
                    if not len(valid.features):
                        continue  # (every row of the part dropped)
                    model = model or loading.load(ref, settings)  # (after the first part passed its checks)
                    clock.lap("load_model")
                    pred, quantiles = loading.predict_quantiles(model, valid.features, valid.timestamps)
                    clock.lap("score")
                    batch.add(valid.features, pred, valid.timestamps, valid.row_numbers, quantiles)
                    fault_point("predict:marts_open")  # (rows are in, the transaction is open)
                    clock.lap("marts")
                    if summary is not None:
                        summary.add(valid.features)
                    clock.lap("drift")
                    out.write(output_frame(valid, pred, ref, batch.batch_id, quantiles))
                    clock.lap("write")
                    fault_point("predict:part")  # (a part is in the temporary file and the open transaction)
                check.finish()
                if summary is not None:
                    summary = _summary_of_scored_rows(summary, check, inp, ref, settings, part_rows)
                drift_rows = None if summary is None else summary.result(ref.training_entity_uri)
                clock.lap("drift")
                batch.finish(check.dropped, drift_rows, drift.batch_status(drift_rows))
            finally:
                out.close()
            if objects.exists(output_path, settings) and not overwrite:  # appeared while we worked
                raise WindpipeError(f"Output {output_path} appeared while predicting.", "choose another --output")
            clock.lap("write")
            result = BatchResult(Path(output_path) if local_out else output_path, batch.batch_id, check.scored,
                                 check.dropped, check.extra_columns, ref, drift_rows, clock.seconds)
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
    clock.lap("commit")
    if check.extra_columns:
        say(f"ignored column(s) not in the model's signature: {', '.join(check.extra_columns)}")
    if check.dropped:
        say(f"dropped {check.dropped} row(s) with missing or impossible values "
            f"(rows, counted from 0: {row_list(np.asarray(check.dropped_head))})")
    if drift_rows is None:
        say(f"drift: unchecked (the model's run has no {names.TRAINING_DATA_TAG} tag)")
    result.seconds = clock.total()
    return result

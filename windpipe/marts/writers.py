"""Writing one scored batch to the data marts in one transaction, while the caller still works on it.

A batch is there completely or not at all (BatchWriter, part by part, or record_batch in one call).
Big batches are written by a helper process (windpipe.marts.helper) while the caller reads and scores
the next part. On SQLite the row inserts are multi-row INSERT statements through the DBAPI cursor
(same connection, same transaction), six times faster than SQLAlchemy's parameter processing for
1M rows; other databases get SQLAlchemy's executemany in chunks ("insertmanyvalues" batching).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy import Connection, Engine

from windpipe import identity
from windpipe.marts import dialects
from windpipe.marts.helper import ProcessBatch
from windpipe.marts.local import LocalBatch
from windpipe.marts.tables import (
    COMPLETE,
    PENDING,
    SOURCES,
    batches,
    dashboard_hours,
    database_error,
    drift,
    get_engine,
    performance,
)
from windpipe.names import FEATURES, PRED_COLUMNS, QUANTILE_COLUMNS, TARGETS, TIMESTAMP

if TYPE_CHECKING:  # (pandas is imported where it is used: the marts writer process starts without it)
    import subprocess

    import pandas as pd

    from windpipe.settings import Settings

@contextlib.contextmanager
def _database_errors(engine: Engine) -> Iterator[None]:
    """A database error (a lock held too long, a full disk) as a WindpipeError saying which and what to do."""
    from sqlalchemy.exc import DBAPIError

    driver_error = engine.dialect.loaded_dbapi.Error  # what the fast writers' driver cursors raise
    try:
        yield
    except (DBAPIError, driver_error) as exc:
        raise database_error(getattr(exc, "orig", None) or exc, engine.url) from None


def remove_batch(engine: Engine, batch_id: int) -> None:
    """Delete a batch and its rows (input, output, drift) in one transaction."""
    from sqlalchemy import delete

    from windpipe.marts.tables import input_mart, output_mart

    with _database_errors(engine), engine.begin() as conn:
        for table in (drift, dashboard_hours, output_mart, input_mart):
            conn.execute(delete(table).where(table.c.batch_id == batch_id))
        conn.execute(delete(batches).where(batches.c.id == batch_id))


def settle_pending(engine: Engine | None = None,
                   local_copy: Callable[[str], contextlib.AbstractContextManager[Path | None]] | None = None
                   ) -> list[str]:
    """Finish or remove the pending batches of processes that are gone (killed between the marts' commit
    and the output file's rename, or just after it); return what was done, one line per batch.

    A batch whose output file is in place with its batch id becomes complete; any other is removed with
    its rows. Batches of processes that still run, or run on another host, are left alone. `local_copy`
    gives a readable local file for an output path or URI (an S3 object: a downloaded copy; None when
    there is none); by default the path itself.
    """
    from sqlalchemy import select

    engine = engine or get_engine()
    with engine.connect() as conn:
        pending = conn.execute(select(batches.c.id, batches.c.output_path, batches.c.owner)
                               .where(batches.c.status == PENDING)).all()
    done = []
    for batch_id, output_path, owner in pending:
        proc = identity.ProcessId.parse(owner)
        if proc is None or proc.running() is not False:
            continue
        with (local_copy or _as_path)(output_path or "") as local:
            in_place = local is not None and _file_batch_id(local) == batch_id
        if in_place:
            with _database_errors(engine), engine.begin() as conn:
                conn.execute(batches.update().where(batches.c.id == batch_id).values(status=COMPLETE))
            done.append(f"batch {batch_id}: completed (its process was killed after writing {output_path})")
        else:
            remove_batch(engine, batch_id)
            done.append(f"batch {batch_id}: removed (its process was killed before {output_path} was written)")
    return done


@contextlib.contextmanager
def _as_path(path: str) -> Iterator[Path | None]:
    yield Path(path) if path else None


def _file_batch_id(path: Path) -> int | None:
    """The batch id an output file carries (its first row's), None when there is no such file."""
    import pyarrow.parquet as pq

    try:
        column = pq.read_table(path, columns=["batch_id"]).column(0)
        return int(column[0].as_py()) if len(column) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


class InputHash:
    """sha256 of the scored rows, row by row: the four features (float64, FEATURES order) and, when the batch has
    times, the time (int64 microseconds since 1970). Row by row, so a batch hashed in parts of any size gets the
    hash of the whole."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()

    def update(self, features: pd.DataFrame, timestamps: pd.Series | None = None) -> None:
        fields = [(f, "<f8") for f in FEATURES] + ([(TIMESTAMP, "<i8")] if timestamps is not None else [])
        rows = np.empty(len(features), dtype=fields)
        for f in FEATURES:
            rows[f] = features[f].to_numpy(dtype="float64")
        if timestamps is not None:
            rows[TIMESTAMP] = _ts_ns(timestamps).astype("int64")
        self._digest.update(rows.tobytes())

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def input_hash(features: pd.DataFrame, timestamps: pd.Series | None = None) -> str:
    """`InputHash` of one frame of scored rows."""
    digest = InputHash()
    digest.update(features, timestamps)
    return digest.hexdigest()


def _ts_ns(ts: pd.Series) -> np.ndarray:
    import pandas as pd

    ts = pd.to_datetime(ts, utc=True)
    return ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[us]")


class BatchWriter:
    """One scored batch in the marts, written in one transaction, part by part, while the caller still works on it.

        with BatchWriter(engine, rows=n) as batch:     # big batches: a helper process starts
            batch.begin(model_name=..., ...)            # the header (its batch id for the output file)
            for part in parts:                          # the input and output rows of each part go in ...
                batch.add(features, pred, timestamps=..., row_numbers=...)   # ... while the next is scored
            batch.finish(rows_dropped, drift_rows, drift_status)             # the header's counts, drift
            batch.commit()                              # returns the batch id

    Leaving the block without commit() (an exception) rolls everything back. Batches of at least
    `settings.marts_helper_rows` rows (100,000) on a database file or server are written by a helper
    process (windpipe.marts.helper), so that inserting rows overlaps reading and scoring the next part.
    `engine` is an Engine, a URL, or None for the settings' marts URL.
    """

    def __init__(self, engine: Engine | str | None = None, rows: int = 0, settings: Settings | None = None) -> None:
        from sqlalchemy.engine import make_url

        from windpipe.settings import get_settings

        settings = settings or get_settings()
        if not isinstance(engine, Engine):
            engine = engine or settings.effective_marts_url
        url = engine.url if isinstance(engine, Engine) else make_url(engine)
        self._engine = engine if isinstance(engine, Engine) else get_engine(engine, settings)
        helper = settings.marts_helper_rows
        with _database_errors(self._engine):
            if helper and rows >= helper and url.database not in (None, "", ":memory:"):
                self._batch: LocalBatch | ProcessBatch = ProcessBatch(url)
            else:
                self._batch = LocalBatch(self._engine)
        self.rows = 0
        self._hash = InputHash()

    def begin(
        self,
        *,
        model_name: str | None,
        model_version: str | int | None,
        model_uri: str | None,
        source: str = "cli",
        run_id: str | None = None,
        input_path: str | None = None,
        output_path: str | None = None,
    ) -> None:
        """Write the batch's header (see record_batch for the arguments; its counts come with finish()).

        With `output_path` the batch is `pending` until `complete()`: commit() first, then the caller puts
        the file in place, then complete(). Readers skip pending batches; `settle_pending` finishes or
        removes those a killed process left.
        """
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
        header = {
            "created_at": datetime.now(UTC).replace(tzinfo=None),
            "model_name": model_name, "model_version": None if model_version is None else str(model_version),
            "model_uri": model_uri, "run_id": run_id, "row_count": 0, "rows_dropped": 0, "input_hash": "",
            "input_path": input_path, "source": source, "status": COMPLETE if output_path is None else PENDING,
            "drift_status": None, "output_path": output_path, "owner": str(identity.current()),
        }
        with _database_errors(self._engine):
            self._batch.start(header)

    def add(self, features: pd.DataFrame, predictions: np.ndarray | pd.DataFrame,
            timestamps: pd.Series | None = None, row_numbers: Sequence[int] | np.ndarray | None = None,
            quantiles: np.ndarray | None = None) -> None:
        """One part of the batch's rows: the features the model scored, its (n, 2) predictions in TARGETS order,
        the rows' times and input row numbers (default: counting on from the previous part), and the quantiles
        (n, targets, QUANTILES) of a model that gives them (QUANTILE_COLUMNS; NULL without)."""
        n = len(features)
        if timestamps is None and TIMESTAMP in features.columns:
            timestamps = features[TIMESTAMP]
        row_no = (np.arange(self.rows, self.rows + n) if row_numbers is None else np.asarray(row_numbers)
                  ).astype("int64")
        if len(row_no) != n:
            raise ValueError("row_numbers must have one entry per scored row")
        preds = np.asarray(predictions, dtype="float64")
        if preds.shape != (n, len(TARGETS)):
            raise ValueError(f"predictions have shape {preds.shape}, expected ({n}, {len(TARGETS)})")
        ts = _ts_ns(timestamps) if timestamps is not None else np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
        self._hash.update(features, timestamps)
        self.rows += n
        with _database_errors(self._engine):
            self._batch.add_inputs({"row_no": row_no, TIMESTAMP: ts,
                                    **{f: features[f].to_numpy(dtype="float64") for f in FEATURES}})
            outputs = {"row_no": row_no, **{p: preds[:, i] for i, p in enumerate(PRED_COLUMNS)}}
            if quantiles is not None:
                flat = np.asarray(quantiles, dtype="float64").reshape(n, -1)
                outputs.update({q: flat[:, i] for i, q in enumerate(QUANTILE_COLUMNS)})
            self._batch.add_outputs(outputs)

    def finish(self, rows_dropped: int = 0, drift_rows: pd.DataFrame | None = None,
               drift_status: str = "unchecked") -> None:
        """After the last part: the header's row count, rows dropped, input hash and drift status, and the drift
        rows of windpipe.scoring.drift (or None)."""
        drift_columns = None
        if drift_rows is not None and len(drift_rows):
            drift_columns = {c.name: drift_rows[c.name].to_numpy() for c in drift.columns if c.name in drift_rows}
        header = {"row_count": self.rows, "rows_dropped": int(rows_dropped), "input_hash": self._hash.hexdigest(),
                  "drift_status": drift_status}
        with _database_errors(self._engine):
            self._batch.finish(header, drift_columns)

    @property
    def connection(self) -> Connection | None:
        """The connection the batch is written on, in its open transaction (None: a helper process writes it)."""
        return self._batch.connection if isinstance(self._batch, LocalBatch) else None

    @property
    def helper_process(self) -> subprocess.Popen | None:
        """The helper process writing this batch, or None when it is written in this process."""
        return self._batch.process if isinstance(self._batch, ProcessBatch) else None

    @property
    def batch_id(self) -> int:
        """The new batch's id (the batches table's primary key)."""
        with _database_errors(self._engine):
            return int(self._batch.batch_id)

    def commit(self) -> int:
        """Commit the batch (waiting for the helper process, if any); return its id."""
        with _database_errors(self._engine):
            self._batch.commit()
        return self.batch_id

    def complete(self) -> None:
        """Mark the committed, pending batch complete: its output file is in place."""
        with _database_errors(self._engine), self._engine.begin() as conn:
            conn.execute(batches.update().where(batches.c.id == self.batch_id).values(status=COMPLETE))

    def discard(self) -> None:
        """Remove the committed, pending batch (its output file could not be put in place)."""
        remove_batch(self._engine, self.batch_id)

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._batch.close()  # rolls back unless committed


def record_batch(
    engine: Engine | None,
    features: pd.DataFrame,
    predictions: np.ndarray | pd.DataFrame,
    *,
    model_name: str | None,
    model_version: str | int | None,
    model_uri: str | None,
    source: str = "cli",
    timestamps: pd.Series | None = None,
    row_numbers: Sequence[int] | np.ndarray | None = None,
    drift_rows: pd.DataFrame | None = None,
    drift_status: str = "unchecked",
    run_id: str | None = None,
    input_path: str | None = None,
    rows_dropped: int = 0,
    settings: Settings | None = None,
) -> int | None:
    """Write one scored batch to the marts in one transaction; return its batch id.

    features     the frame the model scored (FEATURES columns, float)
    predictions  (n, 2) array or frame in TARGETS order (solar_GW, wind_GW)
    timestamps   optional utc_timestamp per row (else taken from features[utc_timestamp] if present)
    row_numbers  the input row number of each scored row (default 0..n-1; differs after --drop-invalid)
    drift_rows   optional frame from windpipe.scoring.drift.feature_drift (feature, psi, ks, ks_pvalue, status, ...)
    drift_status the batch's drift status (ok, warn, drift; unchecked without drift rows)
    source       cli | project | dashboard. For "dashboard" nothing is written (returns None)
                 when settings.log_dashboard_predictions is off.
    engine       None -> get_engine(settings=settings)
    (BatchWriter does this in parts, so that the inserts can overlap the reading and scoring.)
    """
    from windpipe.settings import get_settings

    if source == "dashboard" and not (settings or get_settings()).log_dashboard_predictions:
        return None
    with BatchWriter(engine or get_engine(settings=settings), rows=len(features), settings=settings) as batch:
        batch.begin(model_name=model_name, model_version=model_version, model_uri=model_uri, source=source,
                    run_id=run_id, input_path=input_path)
        batch.add(features, predictions, timestamps, row_numbers)
        batch.finish(rows_dropped, drift_rows, drift_status)
        return batch.commit()



def record_dashboard(engine: Engine | None, features: pd.DataFrame, predictions: np.ndarray | pd.DataFrame,
                     timestamps: pd.Series, *, model_name: str, model_version: str | int, model_uri: str | None,
                     settings: Settings | None = None, tries: int = 3,
                     quantiles: np.ndarray | None = None) -> int | None:
    """Record the dashboard's predictions of the hours this version has none of yet, as one batch; return its
    id, or None when every hour was recorded already (nothing is written).

    The hours go into `dashboard_hours` in the batch's transaction: its key (model, version, hour) makes a
    second writer that recorded some of the same hours meanwhile (another dashboard worker) fail at commit,
    and the next try leaves those hours out. However many pages show a version, the marts hold one row per
    hour of it. Arguments as record_batch; `timestamps` is required (the hours are the key); `quantiles` as
    BatchWriter.add.
    """
    from sqlalchemy.exc import IntegrityError

    engine = engine or get_engine(settings=settings)
    with _database_errors(engine):
        for attempt in range(tries):
            try:
                return _record_new_hours(engine, features, np.asarray(predictions, dtype="float64"), timestamps,
                                         model_name, str(model_version), model_uri, settings, quantiles)
            except IntegrityError:  # another writer recorded some of these hours since we looked
                if attempt == tries - 1:
                    raise
    return None


def _record_new_hours(engine: Engine, features: pd.DataFrame, predictions: np.ndarray, timestamps: pd.Series,
                      model_name: str, model_version: str, model_uri: str | None, settings: Settings | None,
                      quantiles: np.ndarray | None = None) -> int | None:
    import pandas as pd
    from sqlalchemy import select

    hours = _ts_ns(timestamps)
    key = dashboard_hours.c
    with BatchWriter(engine, rows=0, settings=settings) as batch:  # (rows=0: on this connection)
        conn = batch.connection
        assert conn is not None
        known = conn.execute(select(key[TIMESTAMP]).where(
            (key.model_name == model_name) & (key.model_version == model_version)
            & (key[TIMESTAMP] >= hours.min().item()) & (key[TIMESTAMP] <= hours.max().item()))).scalars().all()
        # (an hour twice in the data, as the real OPSD series has a few: its first row)
        new = ~np.isin(hours, np.array(known, dtype="datetime64[us]")) & ~pd.Series(hours).duplicated().to_numpy()
        if not new.any():
            return None
        batch.begin(model_name=model_name, model_version=model_version, model_uri=model_uri, source="dashboard")
        batch.add(features[new].reset_index(drop=True), predictions[new],
                  timestamps=timestamps[new].reset_index(drop=True),
                  quantiles=None if quantiles is None else np.asarray(quantiles)[new])
        batch.finish()
        dialects.writer(conn).insert_columns(dashboard_hours, {
            "model_name": np.full(int(new.sum()), model_name, dtype=object),
            "model_version": np.full(int(new.sum()), model_version, dtype=object),
            TIMESTAMP: hours[new], "batch_id": batch.batch_id})
        return batch.commit()




def record_performance(engine: Engine | None, rows: pd.DataFrame, settings: Settings | None = None) -> int:
    """Write the performance rows (windpipe.scoring.monitor.batch_errors) in one transaction, replacing the
    rows of the same batches (more actuals arrived); return how many were written."""
    import pandas as pd

    engine = engine or get_engine(settings=settings)
    names = [c.name for c in performance.columns]
    records = []
    for rec in rows.to_dict("records"):
        out = {k: rec.get(k) for k in names}
        for k, v in out.items():
            if v is pd.NaT or v is None:
                out[k] = None
            elif isinstance(v, pd.Timestamp):
                out[k] = v.tz_convert("UTC").tz_localize(None).to_pydatetime() if v.tzinfo else v.to_pydatetime()
            elif isinstance(v, float) and not np.isfinite(v):
                out[k] = None
            elif isinstance(v, np.generic):
                out[k] = v.item()
        records.append(out)
    if not records:
        return 0
    with engine.begin() as conn:
        conn.execute(performance.delete().where(performance.c.batch_id.in_([r["batch_id"] for r in records])))
        conn.execute(performance.insert(), records)
    return len(records)

"""Data marts: what went into the model, what came out, and the link between them.

SQLAlchemy 2 Core on any URL (`settings.effective_marts_url`; default SQLite in the state folder).

Tables
  batches      one row per scored batch: when, which model, how many rows, input hash, source
  input_mart   (batch_id, row_no) -> utc_timestamp and the four features the model saw
  output_mart  (batch_id, row_no) -> the predictions; (batch_id, row_no) is a foreign key
               to input_mart, so every output row is linked to the input row it came from
  drift        (batch_id, feature) -> psi, ks, status (see windpipe.drift)

A batch is written in one transaction: it is there completely or not at all (BatchWriter, or
record_batch in one call). Big batches are written by a helper process (windpipe.marts_process)
while the caller loads and runs its model. On SQLite the row inserts are multi-row INSERT
statements through the DBAPI cursor (same connection, same transaction), six times faster than
SQLAlchemy's parameter processing for 1M rows; other databases get SQLAlchemy's executemany in
chunks ("insertmanyvalues" batching).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    func,
    select,
)

from windpipe.columns import FEATURES, TARGETS, TIMESTAMP
from windpipe.errors import WindpipeError

if TYPE_CHECKING:  # (pandas is imported where it is used: the marts writer process starts without it)
    import pandas as pd

    from windpipe.settings import Settings

SOURCES = ("cli", "project", "dashboard")
PRED_COLUMNS = [f"{t}_pred" for t in TARGETS]  # solar_GW_pred, wind_GW_pred
CHUNK = 50_000  # rows per executemany on the generic path
SQLITE_ROWS = 2_000  # rows per INSERT statement on SQLite (within its parameter limit)
SQLITE_FAST_PATH = True  # benchmarks switch it off to measure the generic SQLAlchemy path

metadata = MetaData()

batches = Table(
    "batches", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("created_at", DateTime, nullable=False),  # UTC, naive
    Column("model_name", String(200)),
    Column("model_version", String(50)),
    Column("model_uri", String(500)),
    Column("run_id", String(64)),  # the MLflow run of the predict step (None for the dashboard)
    Column("row_count", Integer, nullable=False),
    Column("rows_dropped", Integer, nullable=False, default=0),
    Column("input_hash", String(64), nullable=False),
    Column("input_path", String(1000)),
    Column("source", String(20), nullable=False),  # cli | project | dashboard
    Column("status", String(20), nullable=False),  # complete (failed batches leave no row)
    Column("drift_status", String(20)),  # ok | warn | drift | unchecked
)

input_mart = Table(
    "input_mart", metadata,
    Column("batch_id", Integer, ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
    Column("row_no", Integer, primary_key=True),
    Column(TIMESTAMP, DateTime),
    *[Column(f, Float) for f in FEATURES],
    sqlite_with_rowid=False,
)

output_mart = Table(
    "output_mart", metadata,
    Column("batch_id", Integer, primary_key=True),
    Column("row_no", Integer, primary_key=True),
    *[Column(p, Float) for p in PRED_COLUMNS],
    ForeignKeyConstraint(["batch_id", "row_no"], ["input_mart.batch_id", "input_mart.row_no"], ondelete="CASCADE"),
    sqlite_with_rowid=False,
)

drift = Table(
    "drift", metadata,
    Column("batch_id", Integer, ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
    Column("feature", String(50), primary_key=True),
    Column("psi", Float),
    Column("ks", Float),
    Column("ks_pvalue", Float),
    Column("status", String(20)),
    Column("batch_rows", Integer),
    Column("training_rows", Integer),
    Column("reference_uri", String(1000)),
)

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def get_engine(url: str | None = None, settings: Settings | None = None) -> Engine:
    """An engine for the marts (cached per URL), with the tables created.

    `url` defaults to `settings.effective_marts_url` (`WINDPIPE_MARTS_URL`, else
    `sqlite:///<home>/marts.db`).
    """
    from windpipe.settings import get_settings

    url = url or (settings or get_settings()).effective_marts_url
    with _lock:
        if url in _engines:
            return _engines[url]
        if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        try:
            engine = create_engine(url)
            if engine.dialect.name == "sqlite":
                event.listen(engine, "connect", _sqlite_pragmas)
            metadata.create_all(engine)
        except Exception as exc:  # driver missing, server down, bad URL
            raise WindpipeError(f"Cannot open the data marts at {_safe(url)} ({str(exc).splitlines()[0][:200]}).",
                                "check WINDPIPE_MARTS_URL (any SQLAlchemy URL; unset = SQLite in the state folder)"
                                ) from None
        _engines[url] = engine
        return engine


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for a message
        return "<marts url>"


# foreign_keys: output rows need their input row; WAL: readers (dashboard) don't block the writer
_SQLITE_PRAGMAS = ("foreign_keys=ON", "journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:  # noqa: ANN401 - DBAPI objects
    cur = dbapi_conn.cursor()
    for pragma in _SQLITE_PRAGMAS:
        cur.execute(f"PRAGMA {pragma}")
    cur.close()


def dispose_engines() -> None:
    """Close every cached engine (tests, or after changing WINDPIPE_MARTS_URL)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def input_hash(features: pd.DataFrame, timestamps: pd.Series | None = None) -> str:
    """sha256 of the scored feature matrix (float64, C order, FEATURES order) and the timestamps."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(features[FEATURES].to_numpy(dtype="float64")).tobytes())
    if timestamps is not None:
        digest.update(np.ascontiguousarray(_ts_ns(timestamps)).tobytes())
    return digest.hexdigest()


def _ts_ns(ts: pd.Series) -> np.ndarray:
    import pandas as pd

    ts = pd.to_datetime(ts, utc=True)
    return ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[us]")


# column name -> one value per row, or an int that every row has (the batch id)
Columns = dict[str, "np.ndarray | int"]


class _CoreWriter:
    """Any database: SQLAlchemy Core executemany in CHUNK-row chunks ("insertmanyvalues" batching)."""

    def __init__(self, conn: Any) -> None:  # noqa: ANN401 - a SQLAlchemy Connection
        self.conn = conn

    def insert_one(self, table: Table, values: dict[str, Any]) -> int:
        return int(self.conn.execute(table.insert().values(**values)).inserted_primary_key[0])

    def insert_columns(self, table: Table, columns: Columns) -> None:
        n = max((len(v) for v in columns.values() if not isinstance(v, int)), default=0)
        names = list(columns)
        lists = [[v] * n if isinstance(v, int) else _python_values(v) for v in columns.values()]
        for start in range(0, n, CHUNK):
            self.conn.execute(table.insert(), [dict(zip(names, row, strict=True))
                                               for row in zip(*(v[start:start + CHUNK] for v in lists), strict=True)])


class _SqliteWriter(_CoreWriter):
    """SQLite: multi-row INSERT statements of plain floats through the DBAPI cursor, same transaction.

    Python's sqlite3 pays about 1 µs per executed row, however few its columns; one statement per
    SQLITE_ROWS rows ("VALUES (..),(..),...") pays it once per statement, and a float64 matrix turns
    into parameters in one C call (`tolist`). For 1M rows into both tables: 4.6 s instead of 5.7 s
    with executemany row by row, and 29 s with SQLAlchemy's per-row parameter processing.
    Integers go in as floats (exact below 2**53; INTEGER affinity stores them as integers again, and
    NaN as NULL); datetimes as epoch seconds that SQLite's datetime() turns into the text
    SQLAlchemy's SQLite DateTime reads back; the batch id as a literal. Tables with text columns
    (drift: a few rows) take the Core path. (The ADBC SQLite driver binds Arrow columns faster still,
    but it carries its own copy of SQLite: two copies in one process break each other's POSIX locks
    on a WAL database, and tests saw the file corrupted.)
    """

    def insert_columns(self, table: Table, columns: Columns) -> None:
        arrays = {k: v for k, v in columns.items() if not isinstance(v, int)}
        if not all(v.dtype.kind in "iufM" for v in arrays.values()):
            super().insert_columns(table, columns)
            return
        exprs = [str(int(v)) if isinstance(v, int) else "datetime(?, 'unixepoch')" if v.dtype.kind == "M" else "?"
                 for v in columns.values()]
        matrix = np.column_stack([_sqlite_floats(v) for v in arrays.values()])
        width = len(arrays)
        db = self.conn.connection.driver_connection
        per_statement = max(1, min(SQLITE_ROWS, db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // max(width, 1)))
        head = f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES "
        row = f"({', '.join(exprs)})"
        full = len(matrix) // per_statement * per_statement
        cur = db.cursor()
        try:
            if full:
                cur.executemany(head + ", ".join([row] * per_statement),
                                matrix[:full].reshape(-1, per_statement * width).tolist())
            if full < len(matrix):
                cur.execute(head + ", ".join([row] * (len(matrix) - full)), matrix[full:].ravel().tolist())
        finally:
            cur.close()


def _sqlite_floats(values: np.ndarray) -> np.ndarray:
    """float64 for a SQLite parameter: datetime64 -> epoch seconds (floored; NaT -> NaN, stored as NULL)."""
    if values.dtype.kind != "M":
        return values.astype("float64", copy=False)
    secs = values.astype("datetime64[s]")
    return np.where(np.isnat(secs), np.nan, secs.astype("int64").astype("float64"))


def _python_values(values: np.ndarray) -> list:
    """Plain Python values for a DBAPI driver: NaN/NaT -> None, datetime64 -> datetime."""
    import pandas as pd

    if np.issubdtype(values.dtype, np.datetime64):
        return [None if pd.isna(t) else t for t in pd.Series(values).dt.to_pydatetime().tolist()]
    out = values.tolist()
    if values.dtype.kind == "f" and np.isnan(values).any():
        out = [None if v != v else v for v in out]  # v != v: NaN
    return out


class LocalBatch:
    """One batch written in one transaction on a connection of this process.

    start(header) -> batch id, add_inputs(columns), add_outputs(columns, drift, status), commit();
    close() rolls back whatever was not committed. windpipe.marts_process makes the same calls in a
    helper process, with `bulk=True`: on SQLite that connection skips the per-row foreign-key
    lookups (40 % of the insert time for 1M rows; the input and output rows are written from one
    row_no array, in one transaction, so each output row has its input row by construction) and
    leaves the WAL checkpoint to checkpoint(), after the commit.
    """

    def __init__(self, engine: Engine, bulk: bool = False) -> None:
        self._conn = engine.connect()
        self._conn.begin()
        sqlite = engine.dialect.name == "sqlite"
        if sqlite and bulk:  # (before the first insert: SQLite ignores these inside a transaction)
            self._conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            self._conn.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
        self._bulk = sqlite and bulk
        self._writer = _SqliteWriter(self._conn) if sqlite and SQLITE_FAST_PATH else _CoreWriter(self._conn)
        self.batch_id: int | None = None

    def start(self, header: dict[str, Any]) -> int:
        self.batch_id = self._writer.insert_one(batches, header)
        return self.batch_id

    def add_inputs(self, columns: Columns) -> None:
        self._writer.insert_columns(input_mart, {"batch_id": self.batch_id, **columns})

    def add_outputs(self, columns: Columns, drift_columns: Columns | None, drift_status: str) -> None:
        self._writer.insert_columns(output_mart, {"batch_id": self.batch_id, **columns})
        if drift_columns:
            self._writer.insert_columns(drift, {"batch_id": self.batch_id, **drift_columns})
        self._conn.execute(batches.update().where(batches.c.id == self.batch_id).values(drift_status=drift_status))

    def commit(self) -> None:
        self._conn.commit()

    def checkpoint(self) -> None:
        """Copy the committed pages from the WAL into the database file (bulk mode on SQLite)."""
        if self._bulk:
            self._conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        if self._bulk:  # not back into the pool with its pragmas changed
            self._conn.invalidate()
        self._conn.close()  # rolls back a transaction that was not committed


class BatchWriter:
    """One scored batch in the marts, written in one transaction while the caller still works on it.

        with BatchWriter(engine, rows=len(df)) as batch:  # big batches: a helper process starts
            batch.start(features, model_name=..., ...)    # the header and the input rows go in ...
            pred = model.predict(...)                     # ... while this runs
            batch.add_predictions(pred, drift_rows)
            write_output_file(batch.batch_id)
            batch.commit()                                # returns the batch id

    Leaving the block without commit() (an exception) rolls everything back. Batches of at least
    `settings.marts_helper_rows` rows (100,000) on a database file or server are written by a helper
    process (windpipe.marts_process), so that inserting 1M input rows overlaps loading and running the
    model. `engine` is an Engine, a URL, or None for the settings' marts URL.
    """

    def __init__(self, engine: Engine | str | None = None, rows: int = 0, settings: Settings | None = None) -> None:
        from sqlalchemy.engine import make_url

        from windpipe.settings import get_settings

        settings = settings or get_settings()
        if not isinstance(engine, Engine):
            engine = engine or settings.effective_marts_url
        url = engine.url if isinstance(engine, Engine) else make_url(engine)
        helper = settings.marts_helper_rows
        if helper and rows >= helper and url.database not in (None, "", ":memory:"):
            from windpipe.marts_process import ProcessBatch

            self._batch: LocalBatch | ProcessBatch = ProcessBatch(url)
        else:
            self._batch = LocalBatch(engine if isinstance(engine, Engine) else get_engine(engine))
        self.row_no = np.zeros(0, dtype="int64")

    def start(
        self,
        features: pd.DataFrame,
        *,
        model_name: str | None,
        model_version: str | int | None,
        model_uri: str | None,
        source: str = "cli",
        timestamps: pd.Series | None = None,
        row_numbers: Sequence[int] | np.ndarray | None = None,
        run_id: str | None = None,
        input_path: str | None = None,
        rows_dropped: int = 0,
    ) -> None:
        """Write the batch's header and its input rows (see record_batch for the arguments)."""
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
        n = len(features)
        if timestamps is None and TIMESTAMP in features.columns:
            timestamps = features[TIMESTAMP]
        self.row_no = (np.arange(n) if row_numbers is None else np.asarray(row_numbers)).astype("int64")
        if len(self.row_no) != n:
            raise ValueError("row_numbers must have one entry per scored row")
        self._batch.start({
            "created_at": datetime.now(UTC).replace(tzinfo=None),
            "model_name": model_name, "model_version": None if model_version is None else str(model_version),
            "model_uri": model_uri, "run_id": run_id, "row_count": n, "rows_dropped": int(rows_dropped),
            "input_hash": input_hash(features, timestamps), "input_path": input_path, "source": source,
            "status": "complete", "drift_status": None,  # set with the predictions
        })
        ts = _ts_ns(timestamps) if timestamps is not None else np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
        self._batch.add_inputs({"row_no": self.row_no, TIMESTAMP: ts,
                                **{f: features[f].to_numpy(dtype="float64") for f in FEATURES}})

    @property
    def batch_id(self) -> int:
        """The new batch's id (the batches table's primary key)."""
        return int(self._batch.batch_id)

    def add_predictions(self, predictions: np.ndarray | pd.DataFrame, drift_rows: pd.DataFrame | None = None) -> None:
        """The (n, 2) predictions in TARGETS order, and the drift rows of windpipe.drift.compare (or None)."""
        preds = np.asarray(predictions, dtype="float64")
        if preds.shape != (len(self.row_no), len(TARGETS)):
            raise ValueError(f"predictions have shape {preds.shape}, expected ({len(self.row_no)}, {len(TARGETS)})")
        drift_columns = None
        if drift_rows is not None and len(drift_rows):
            drift_columns = {c.name: drift_rows[c.name].to_numpy() for c in drift.columns if c.name in drift_rows}
        self._batch.add_outputs({"row_no": self.row_no, **{p: preds[:, i] for i, p in enumerate(PRED_COLUMNS)}},
                                drift_columns, _overall(drift_rows))

    def commit(self) -> int:
        """Commit the batch (waiting for the helper process, if any); return its id."""
        self._batch.commit()
        return self.batch_id

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
    drift_rows   optional frame from windpipe.drift.compare (feature, psi, ks, ks_pvalue, status, ...)
    source       cli | project | dashboard. For "dashboard" nothing is written (returns None)
                 when settings.log_dashboard_predictions is off.
    engine       None -> get_engine(settings=settings)
    (BatchWriter does this in steps, so that the inserts can overlap the scoring.)
    """
    from windpipe.settings import get_settings

    if source == "dashboard" and not (settings or get_settings()).log_dashboard_predictions:
        return None
    with BatchWriter(engine or get_engine(settings=settings), rows=len(features), settings=settings) as batch:
        batch.start(features, model_name=model_name, model_version=model_version, model_uri=model_uri,
                    source=source, timestamps=timestamps, row_numbers=row_numbers, run_id=run_id,
                    input_path=input_path, rows_dropped=rows_dropped)
        batch.add_predictions(predictions, drift_rows)
        return batch.commit()


def _overall(drift_rows: pd.DataFrame | None) -> str:
    from windpipe.drift import overall_status

    return "unchecked" if drift_rows is None else overall_status(drift_rows)


# ---------------------------------------------------------------- reading (dashboard, report)

def latest_batches(engine: Engine | None = None, limit: int = 20, source: str | None = None) -> pd.DataFrame:
    """The newest batches first: id, created_at, model_*, row_count, input_hash, source, status, drift_status."""
    import pandas as pd

    engine = engine or get_engine()
    stmt = select(batches).order_by(batches.c.id.desc()).limit(limit)
    if source:
        stmt = stmt.where(batches.c.source == source)
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(stmt).mappings().all(), columns=[c.name for c in batches.columns])


def batch_rows(engine: Engine | None, batch_id: int) -> pd.DataFrame:
    """One batch's input rows joined to their output rows (row_no, utc_timestamp, features, predictions)."""
    import pandas as pd

    engine = engine or get_engine()
    stmt = (select(input_mart.c.row_no, input_mart.c[TIMESTAMP], *[input_mart.c[f] for f in FEATURES],
                   *[output_mart.c[p] for p in PRED_COLUMNS])
            .join_from(input_mart, output_mart, (input_mart.c.batch_id == output_mart.c.batch_id)
                       & (input_mart.c.row_no == output_mart.c.row_no))
            .where(input_mart.c.batch_id == batch_id).order_by(input_mart.c.row_no))
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(stmt).mappings().all(),
                            columns=["row_no", TIMESTAMP, *FEATURES, *PRED_COLUMNS])


def count_rows(engine: Engine | None = None) -> dict[str, int]:
    """Row counts of every mart table (tests, status displays)."""
    engine = engine or get_engine()
    with engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (batches, input_mart, output_mart, drift)}

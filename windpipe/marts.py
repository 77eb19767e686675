"""Data marts: what went into the model, what came out, and the link between them.

SQLAlchemy 2 Core on any URL (`settings.effective_marts_url`; default SQLite in the state folder).

Tables
  batches      one row per scored batch: when, which model, how many rows, input hash, source
  input_mart   (batch_id, row_no) -> utc_timestamp and the four features the model saw
  output_mart  (batch_id, row_no) -> the predictions; (batch_id, row_no) is a foreign key
               to input_mart, so every output row is linked to the input row it came from
  drift        (batch_id, feature) -> psi, ks, status (see windpipe.drift)

A batch is written in one transaction: it is there completely or not at all.
On SQLite the row inserts go through the DBAPI cursor's executemany (same connection, same
transaction), which is about four times faster than SQLAlchemy's parameter processing for 1M rows;
other databases get SQLAlchemy's executemany in chunks ("insertmanyvalues" batching).
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
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

from windpipe.entities import FEATURES, TARGETS, TIMESTAMP
from windpipe.errors import WindpipeError
from windpipe.settings import Settings, get_settings

SOURCES = ("cli", "project", "dashboard")
PRED_COLUMNS = [f"{t}_pred" for t in TARGETS]  # solar_GW_pred, wind_GW_pred
CHUNK = 50_000
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
    ts = pd.to_datetime(ts, utc=True)
    return ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy(dtype="datetime64[us]")


Columns = dict[str, np.ndarray]  # column name -> one value per row


class _CoreWriter:
    """Any database: SQLAlchemy Core executemany in CHUNK-row chunks ("insertmanyvalues" batching)."""

    def __init__(self, conn: Any) -> None:  # noqa: ANN401 - a SQLAlchemy Connection
        self.conn = conn

    def insert_one(self, table: Table, values: dict[str, Any]) -> int:
        return int(self.conn.execute(table.insert().values(**values)).inserted_primary_key[0])

    def insert_columns(self, table: Table, columns: Columns) -> None:
        names = list(columns)
        lists = [_python_values(v) for v in columns.values()]
        for start in range(0, len(lists[0]) if lists else 0, CHUNK):
            self.conn.execute(table.insert(), [dict(zip(names, row, strict=True))
                                               for row in zip(*(v[start:start + CHUNK] for v in lists), strict=True)])


class _SqliteWriter(_CoreWriter):
    """SQLite: the DBAPI cursor's executemany of plain tuples, in the same connection and transaction.

    About four times faster than SQLAlchemy's per-row parameter processing for 1M rows. (The ADBC
    SQLite driver binds Arrow columns faster still, but it carries its own copy of SQLite: two copies
    in one process break each other's POSIX locks on a WAL database, and tests saw the file corrupted.)
    Timestamps go in as the text SQLAlchemy's SQLite DateTime writes, so Core reads them back as datetimes.
    """

    def insert_columns(self, table: Table, columns: Columns) -> None:
        lists = [_sqlite_text(v) if np.issubdtype(v.dtype, np.datetime64) else _python_values(v)
                 for v in columns.values()]
        cur = self.conn.connection.driver_connection.cursor()
        try:
            cur.executemany(f"INSERT INTO {table.name} ({', '.join(columns)}) "
                            f"VALUES ({', '.join('?' * len(columns))})", zip(*lists, strict=True))
        finally:
            cur.close()


def _sqlite_text(values: np.ndarray) -> list[str | None]:
    """Naive UTC datetime64 -> "YYYY-MM-DD HH:MM:SS" (seconds), NaT -> None; Arrow's cast is ~10x numpy's."""
    import pyarrow as pa

    return pa.array(values).cast(pa.timestamp("s"), safe=False).cast(pa.string()).to_pylist()


def _python_values(values: np.ndarray) -> list:
    """Plain Python values for a DBAPI driver: NaN/NaT -> None, datetime64 -> datetime."""
    if np.issubdtype(values.dtype, np.datetime64):
        return [None if pd.isna(t) else t for t in pd.Series(values).dt.to_pydatetime().tolist()]
    out = values.tolist()
    if values.dtype.kind == "f" and np.isnan(values).any():
        out = [None if v != v else v for v in out]  # v != v: NaN
    return out


@contextlib.contextmanager
def _transaction(engine: Engine) -> Iterator[_CoreWriter | _SqliteWriter]:
    """One transaction on the marts: committed if the block ends normally, rolled back otherwise."""
    with engine.begin() as conn:
        yield _SqliteWriter(conn) if engine.dialect.name == "sqlite" and SQLITE_FAST_PATH else _CoreWriter(conn)


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
    before_commit: Callable[[int], None] | None = None,
) -> int | None:
    """Write one scored batch to the marts in one transaction; return its batch id.

    features     the frame the model scored (FEATURES columns, float)
    predictions  (n, 2) array or frame in TARGETS order (solar_GW, wind_GW)
    timestamps   optional utc_timestamp per row (else taken from features[utc_timestamp] if present)
    row_numbers  the input row number of each scored row (default 0..n-1; differs after --drop-invalid)
    drift_rows   optional frame from windpipe.drift.compare (feature, psi, ks, ks_pvalue, status, ...)
    source       cli | project | dashboard. For "dashboard" nothing is written (returns None)
                 when settings.log_dashboard_predictions is off.
    before_commit  called with the batch id inside the transaction, in a worker thread while the rows
                 are inserted (the predict step writes its output file there); if it raises, nothing
                 is committed.
    engine       None -> get_engine(settings=settings)
    """
    settings = settings or get_settings()
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
    if source == "dashboard" and not settings.log_dashboard_predictions:
        return None
    engine = engine or get_engine(settings=settings)
    n = len(features)
    preds = np.asarray(predictions, dtype="float64")
    if preds.shape != (n, len(TARGETS)):
        raise ValueError(f"predictions have shape {preds.shape}, expected ({n}, {len(TARGETS)})")
    if timestamps is None and TIMESTAMP in features.columns:
        timestamps = features[TIMESTAMP]
    rows_no = np.arange(n) if row_numbers is None else np.asarray(row_numbers)
    if len(rows_no) != n:
        raise ValueError("row_numbers must have one entry per scored row")
    drift_status = _overall(drift_rows)
    header = {
        "created_at": datetime.now(UTC).replace(tzinfo=None),
        "model_name": model_name, "model_version": None if model_version is None else str(model_version),
        "model_uri": model_uri, "run_id": run_id, "row_count": n, "rows_dropped": int(rows_dropped),
        "input_hash": input_hash(features, timestamps), "input_path": input_path, "source": source,
        "status": "complete", "drift_status": drift_status,
    }
    ts = _ts_ns(timestamps) if timestamps is not None else np.full(n, np.datetime64("NaT"), dtype="datetime64[us]")
    row_no = rows_no.astype("int64")
    with _transaction(engine) as writer, ThreadPoolExecutor(1) as pool:
        batch_id = writer.insert_one(batches, header)
        ids = np.full(n, batch_id, dtype="int64")
        # the caller's work (the predict step writes its output file) overlaps the row inserts:
        # pyarrow and sqlite release the GIL. Leaving the pool's block waits for it, even on error.
        pending = pool.submit(before_commit, batch_id) if before_commit is not None else None
        writer.insert_columns(input_mart, {"batch_id": ids, "row_no": row_no, TIMESTAMP: ts,
                                           **{f: features[f].to_numpy(dtype="float64") for f in FEATURES}})
        writer.insert_columns(output_mart, {"batch_id": ids, "row_no": row_no,
                                            **{p: preds[:, i] for i, p in enumerate(PRED_COLUMNS)}})
        if drift_rows is not None and len(drift_rows):
            records = drift_rows.assign(batch_id=batch_id)
            writer.insert_columns(drift, {c.name: records[c.name].to_numpy() for c in drift.columns
                                          if c.name in records.columns})
        if pending is not None:
            pending.result()  # its exception rolls the batch back
    return batch_id


def _overall(drift_rows: pd.DataFrame | None) -> str:
    from windpipe.drift import overall_status

    return "unchecked" if drift_rows is None else overall_status(drift_rows)


# ---------------------------------------------------------------- reading (dashboard, report)

def latest_batches(engine: Engine | None = None, limit: int = 20, source: str | None = None) -> pd.DataFrame:
    """The newest batches first: id, created_at, model_*, row_count, input_hash, source, status, drift_status."""
    engine = engine or get_engine()
    stmt = select(batches).order_by(batches.c.id.desc()).limit(limit)
    if source:
        stmt = stmt.where(batches.c.source == source)
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(stmt).mappings().all(), columns=[c.name for c in batches.columns])


def batch_rows(engine: Engine | None, batch_id: int) -> pd.DataFrame:
    """One batch's input rows joined to their output rows (row_no, utc_timestamp, features, predictions)."""
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

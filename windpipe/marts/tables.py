"""The data marts' tables, and engines on any SQLAlchemy URL (`settings.effective_marts_url`).

Tables
  batches      one row per scored batch: when, which model, how many rows, input hash, source
  input_mart   (batch_id, row_no) -> utc_timestamp and the four features the model saw
  output_mart  (batch_id, row_no) -> the predictions; (batch_id, row_no) is a foreign key
               to input_mart, so every output row is linked to the input row it came from
  drift        (batch_id, feature) -> psi, ks, status (see windpipe.scoring.drift)
  performance  batch_id -> the model's error on the batch's hours once their recorded power arrived
               (`windpipe monitor --actuals FILE`, windpipe.scoring.monitor): one row per scored batch
               with actuals, replaced when more actuals arrive
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
)

from windpipe.errors import WindpipeError, first_line
from windpipe.names import FEATURES, PRED_COLUMNS, TARGETS, TIMESTAMP

if TYPE_CHECKING:
    from windpipe.settings import Settings

SOURCES = ("cli", "project", "dashboard")

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

performance = Table(
    "performance", metadata,
    Column("batch_id", Integer, ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
    Column("computed_at", DateTime, nullable=False),  # UTC, naive
    Column("model_name", String(200)),
    Column("model_version", String(50)),
    Column("rows_scored", Integer, nullable=False),  # the batch's rows
    Column("rows_with_actuals", Integer, nullable=False),  # ... whose hour has recorded power
    Column("first_time", DateTime),  # the hours with actuals (UTC, naive)
    Column("last_time", DateTime),
    Column("rmse", Float), Column("mae", Float), Column("r2", Float),
    *[Column(f"{m}_{t}", Float) for m in ("rmse", "bias") for t in TARGETS],
    Column("promotion_rmse", Float),  # the version's holdout rmse when it was promoted (holdout_rmse tag)
    Column("ratio", Float),  # rmse / promotion_rmse
    Column("status", String(20), nullable=False),  # ok | degraded | unknown (no error at promotion on record)
    Column("actuals_path", String(1000)),
    Column("run_id", String(64)),  # the monitor run that computed it
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
            raise WindpipeError(f"Cannot open the data marts at {_safe(url)} ({first_line(exc)}).",
                                "check WINDPIPE_MARTS_URL (any SQLAlchemy URL; unset = SQLite in the state folder)"
                                ) from None
        _engines[url] = engine
        return engine


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<marts url>"


# foreign_keys: output rows need their input row; WAL: readers (dashboard) don't block the writer
_SQLITE_PRAGMAS = ("foreign_keys=ON", "journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
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



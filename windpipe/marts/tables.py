"""The data marts' tables, and engines on any SQLAlchemy URL (`settings.effective_marts_url`: SQLite on the
local stack, PostgreSQL on the team stack; windpipe.marts.dialects holds what differs between them).

Tables
  batches      one row per scored batch: when, which model, how many rows, input hash, source
  input_mart   (batch_id, row_no) -> utc_timestamp and the four features the model saw
  output_mart  (batch_id, row_no) -> the predictions; (batch_id, row_no) is a foreign key
               to input_mart, so every output row is linked to the input row it came from
               (on PostgreSQL these two hold the same by construction, indexed by batch: dialects.row_keys)
  drift        (batch_id, feature) -> psi, ks, status (see windpipe.scoring.drift)
  performance  batch_id -> the model's error on the batch's hours once their recorded power arrived
               (`windpipe monitor --actuals FILE`, windpipe.scoring.monitor): one row per scored batch
               with actuals, replaced when more actuals arrive
  inbox_claims (inbox, sha256) -> who scores that content of the prediction inbox, and how it ended
               (windpipe.marts.claims; the protocol: windpipe.pipeline.inbox)
  dashboard_hours (model_name, model_version, utc_timestamp) -> the batch that holds the dashboard's
               prediction for that hour: the key makes the dashboard record each hour of each version once,
               however many pages show it (windpipe.marts.writers.record_dashboard)
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import (
    Column,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    create_engine,
)

from windpipe.errors import WindpipeError, first_line
from windpipe.marts import dialects
from windpipe.names import FEATURES, PRED_COLUMNS, QUANTILE_COLUMNS, TARGETS, TIMESTAMP

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

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
    # pending: committed, its output file not yet in place (readers skip it); complete: file and rows agree
    Column("status", String(20), nullable=False),
    Column("drift_status", String(20)),  # ok | warn | drift | unchecked
    Column("output_path", String(1000)),  # the file the batch's predictions went to (None: no file)
    Column("owner", String(200)),  # the process writing it: "<host> <pid> <start time>" (windpipe.identity)
    sqlite_autoincrement=True,  # a batch id is never handed out twice, even after a batch is removed
)
PENDING, COMPLETE = "pending", "complete"

input_mart = Table(
    "input_mart", metadata,
    Column("batch_id", Integer, nullable=False),
    Column("row_no", Integer, nullable=False),
    Column(TIMESTAMP, DateTime),
    *[Column(f, Float) for f in FEATURES],
    # the row tables' keys: everywhere but on PostgreSQL (windpipe.marts.dialects.row_keys says why)
    PrimaryKeyConstraint("batch_id", "row_no").ddl_if(callable_=dialects.row_keys),
    ForeignKeyConstraint(["batch_id"], ["batches.id"], ondelete="CASCADE").ddl_if(callable_=dialects.row_keys),
    Index("input_mart_batch_brin", "batch_id", **dialects.BATCH_INDEX).ddl_if(dialect="postgresql"),
    sqlite_with_rowid=False,
)

output_mart = Table(
    "output_mart", metadata,
    Column("batch_id", Integer, nullable=False),
    Column("row_no", Integer, nullable=False),
    *[Column(p, Float) for p in PRED_COLUMNS],
    *[Column(q, Float) for q in QUANTILE_COLUMNS],  # NULL for a model without quantiles
    PrimaryKeyConstraint("batch_id", "row_no").ddl_if(callable_=dialects.row_keys),
    ForeignKeyConstraint(["batch_id", "row_no"], ["input_mart.batch_id", "input_mart.row_no"], ondelete="CASCADE"
                         ).ddl_if(callable_=dialects.row_keys),
    Index("output_mart_batch_brin", "batch_id", **dialects.BATCH_INDEX).ddl_if(dialect="postgresql"),
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

# one row per content (sha256 of the bytes) of an inbox: the primary key makes the claim (one insert wins)
inbox_claims = Table(
    "inbox_claims", metadata,
    Column("inbox", String(1000), primary_key=True),  # the inbox's URI (a folder or s3://bucket/prefix/)
    Column("sha256", String(64), primary_key=True),
    Column("name", String(1000), nullable=False),  # the object's name when it was claimed
    Column("uri", String(2000), nullable=False),  # where its bytes are while it is claimed (<inbox>/claimed/...)
    Column("holder", String(64), nullable=False),  # the pipeline run that scores it ("": released for the next)
    Column("claimed_at", DateTime, nullable=False),  # UTC, naive
    Column("state", String(20), nullable=False),  # claimed | done | failed
    Column("reason", Text),  # failed: why
    Column("settled_at", DateTime),
    Column("filed_as", String(2000)),  # where the object went (done/ or failed/), once it is there
)

# one row per (model version, hour) the dashboard recorded; the primary key keeps two dashboards (or two
# workers) from recording the same hour twice
dashboard_hours = Table(
    "dashboard_hours", metadata,
    Column("model_name", String(200), primary_key=True),
    Column("model_version", String(50), primary_key=True),
    Column(TIMESTAMP, DateTime, primary_key=True),  # UTC, naive
    Column("batch_id", Integer, ForeignKey("batches.id", ondelete="CASCADE"), nullable=False),
)

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def get_engine(url: str | None = None, settings: Settings | None = None) -> Engine:
    """An engine for the marts (cached per URL), with the tables created.

    `url` defaults to `settings.effective_marts_url` (`WINDPIPE_MARTS_URL`; else on the team stack its
    PostgreSQL, schema `marts`; else `sqlite:///<home>/marts.db`).
    """
    from windpipe.settings import get_settings

    url = url or (settings or get_settings()).effective_marts_url
    with _lock:
        if url in _engines:
            return _engines[url]
        sqlite = url.startswith("sqlite")
        db_file = Path(url[len("sqlite:///"):]) if sqlite and url != "sqlite:///:memory:" else None
        lock_timeout = (settings or get_settings()).marts_lock_timeout
        try:
            if db_file is not None:
                db_file.parent.mkdir(parents=True, exist_ok=True)
                _private_file(db_file)
            engine = create_engine(url, **dialects.engine_options(url, lock_timeout))
            dialects.configure(engine)
            _create_tables(engine)
            _add_new_columns(engine)
        except Exception as exc:  # driver missing, server down, bad URL; or a lock, a full disk, a read-only file
            reason = getattr(exc, "orig", None) or exc
            known = database_error(reason, url)
            if known.problem.startswith(_SERVER_GONE):  # (said of a write there; here nothing was written yet)
                raise WindpipeError(f"The PostgreSQL server of the data marts ({display_url(url)}) does not answer "
                                    f"({first_line(reason, 200)}).", _SERVER_FIX) from None
            if not known.problem.startswith(_GENERIC):
                raise known from None
            raise WindpipeError(f"Cannot open the data marts at {display_url(url)} ({first_line(exc)}).",
                                "check WINDPIPE_MARTS_URL (any SQLAlchemy URL; unset = SQLite in the state folder, "
                                "or PostgreSQL on the team stack)") from None
        _engines[url] = engine
        return engine


def _create_tables(engine: Engine, tries: int = 3) -> None:
    """The tables that are missing. Two processes opening a new database at once both find a table missing and
    one of them fails to create it: that one looks again (then it is there)."""
    for attempt in range(tries):
        try:
            metadata.create_all(engine)
            return
        except Exception as exc:
            text = str(exc).lower()
            if attempt == tries - 1 or not ("already exists" in text or "duplicate key" in text):
                raise


def display_url(url: str | URL) -> str:
    """The URL for messages and `windpipe status`: no password, no query (a password file's path, options)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).set(query={}).render_as_string(hide_password=True)
    except Exception:
        return "<marts url>"


def _private_file(path: Path) -> None:
    """Create the SQLite file readable by its owner only (SQLite gives its WAL files the same mode)."""
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))


def _add_new_columns(engine: Engine) -> None:
    """Columns newer windpipes added to an existing marts database (create_all adds tables only)."""
    from sqlalchemy import inspect

    inspector = inspect(engine)
    with engine.begin() as conn:
        for table in (batches, output_mart):  # (output_mart: the quantile columns)
            have = {c["name"] for c in inspector.get_columns(table.name)}
            for col in [c for c in table.columns if c.name not in have]:
                conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {col.name} "
                                     f"{col.type.compile(dialect=engine.dialect)}")


def database_error(exc: BaseException | str, url: str | URL | None = None) -> WindpipeError:
    """A database error of a marts write as a message: a lock held too long, a full disk, a read-only file."""
    text = str(exc)
    where = f" ({display_url(url)})" if url else ""
    lowered = text.lower()
    if "locked" in lowered or "lock timeout" in lowered:
        return WindpipeError(f"The data marts database{where} stayed locked by another writer longer than "
                             "WINDPIPE_MARTS_LOCK_TIMEOUT allows; nothing of the batch was written.",
                             "wait until the other writer is done (or stop it), then retry; or raise "
                             "WINDPIPE_MARTS_LOCK_TIMEOUT (seconds, default 30)")
    if "full" in lowered or "no space" in lowered or "disk i/o error" in lowered:
        return WindpipeError(f"The disk holding the data marts database{where} is full or failing "
                             f"({first_line(text)}); nothing of the batch was written.",
                             "free space there, then retry")
    if dialects.server_gone(lowered):
        return WindpipeError(f"{_SERVER_GONE}{where} stopped answering while the batch was written "
                             f"({first_line(text, 200)}); nothing of the batch was written.", _SERVER_FIX)
    if "readonly" in lowered or "read-only" in lowered:
        return WindpipeError(f"The data marts database{where} is read-only; nothing of the batch was written.",
                             "make the database file and its folder writable, or set WINDPIPE_MARTS_URL")
    return WindpipeError(f"{_GENERIC}{where} failed ({first_line(text, 300)}); nothing of the batch was written.",
                         "check WINDPIPE_MARTS_URL and that the database is writable")


_GENERIC = "Writing the batch to the data marts"
_SERVER_GONE = "The PostgreSQL server of the data marts"
_SERVER_FIX = "check that it runs (`windpipe status`; `windpipe up` starts the team stack's), then retry"


def dispose_engines() -> None:
    """Close every cached engine (tests, or after changing WINDPIPE_MARTS_URL)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()



"""What differs between the databases the data marts live in: SQLite (the local stack) and PostgreSQL
(the team stack, or any server WINDPIPE_MARTS_URL names). Everything else (tables, queries, the batch
protocol) is SQLAlchemy Core and the same on both.

- connecting: SQLite gets its pragmas and busy timeout; PostgreSQL gets the marts' own schema
  (`marts`, made on first use) as its search path, and a dead pooled connection is replaced;
- the row writers: SQLite takes multi-row INSERT statements through the DBAPI cursor, PostgreSQL a
  binary COPY of one numpy-built buffer, both on the batch's connection, inside its one transaction;
  any other database takes SQLAlchemy's executemany (CoreWriter);
- bulk mode (the helper process): SQLite skips the per-row foreign-key lookups and the WAL checkpoint;
- messages: which driver errors mean that the PostgreSQL server went away.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import DateTime, Engine, Float, Integer, Table, event, text

if TYPE_CHECKING:
    from sqlalchemy import Connection

SCHEMA = "marts"  # PostgreSQL: the marts' tables live in a schema of their own
CHUNK = 50_000  # rows per executemany on the generic path
SQLITE_ROWS = 2_000  # rows per INSERT statement on SQLite (within its parameter limit)
COPY_ROWS = 200_000  # rows per COPY buffer on PostgreSQL (memory stays ~12 MB, whatever the batch)
FAST_PATH = True  # benchmarks and tests switch it off to measure or check the generic SQLAlchemy path

# column name -> one value per row, or an int that every row has (the batch id)
Columns = dict[str, "np.ndarray | int"]


# ------------------------------------------------------------------ the row tables' keys

def row_keys(_ddl: object, _target: object, _bind: object, **kw: Any) -> bool:
    """Whether input_mart and output_mart declare their primary and foreign keys: everywhere but PostgreSQL.

    PostgreSQL checks a foreign key row by row (a lookup and a row lock per inserted row) and keeps a
    primary key's B-tree row by row: for 1M rows into both tables one transaction took 44 s with
    both, 9.2 s with the primary keys only and 3.9 s with neither (median of 4, binary COPY,
    2026-12-02). The keys hold by construction, as the SQLite bulk path (foreign keys off) already
    relies on: one writer per batch, a new batch id from the sequence, the input and the output rows
    from one row_no array in one transaction. A BRIN index on batch_id (BATCH_INDEX) finds a batch's
    rows at almost no cost to the load: rows arrive in batch order.
    """
    return kw["dialect"].name != "postgresql"


BATCH_INDEX = {"postgresql_using": "brin", "postgresql_with": {"autosummarize": "on"}}


# ------------------------------------------------------------------ connecting

def engine_options(url: str, lock_timeout: float) -> dict[str, Any]:
    """create_engine's keyword arguments for a marts URL."""
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": lock_timeout}}
    if url.startswith("postgresql"):
        return {"pool_pre_ping": True}  # a restarted server: the next query reconnects
    return {}


def configure(engine: Engine) -> None:
    """Per-connection set-up of the marts engine; on PostgreSQL the marts' schema, made when missing."""
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    elif engine.dialect.name == "postgresql":
        event.listen(engine, "connect", _search_path, insert=True)  # (before SQLAlchemy's first look)
        with engine.begin() as conn:
            # (asked first: CREATE SCHEMA IF NOT EXISTS needs the right to create even when it exists)
            if conn.execute(text("SELECT 1 FROM pg_namespace WHERE nspname = :s"), {"s": SCHEMA}).first() is None:
                conn.exec_driver_sql(f"CREATE SCHEMA {SCHEMA}")


def _search_path(dbapi_conn: Any, _record: Any) -> None:
    autocommit = dbapi_conn.autocommit
    dbapi_conn.autocommit = True  # a SET inside a transaction that is rolled back would be undone
    try:
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET search_path TO {SCHEMA}")
    finally:
        dbapi_conn.autocommit = autocommit


# foreign_keys: output rows need their input row; WAL: readers (dashboard) don't block the writer;
# the lock timeout (busy timeout) comes from the settings, as the driver's `timeout`
_SQLITE_PRAGMAS = ("foreign_keys=ON", "journal_mode=WAL", "synchronous=NORMAL")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    for pragma in _SQLITE_PRAGMAS:
        cur.execute(f"PRAGMA {pragma}")
    cur.close()


def begin_bulk(conn: Connection) -> bool:
    """Bulk mode for the helper's connection, before its first insert; True when it changed anything.

    SQLite: the per-row foreign-key lookups are skipped (40 % of the insert time for 1M rows; the input
    and output rows are written from one row_no array, in one transaction, so each output row has its
    input row by construction) and the WAL checkpoint waits for checkpoint(), after the commit.
    """
    if conn.dialect.name != "sqlite":
        return False
    conn.exec_driver_sql("PRAGMA foreign_keys=OFF")  # (SQLite ignores these inside a transaction)
    conn.exec_driver_sql("PRAGMA wal_autocheckpoint=0")
    return True


def checkpoint(conn: Connection) -> None:
    """Copy the committed pages from the WAL into the database file (after a bulk-mode commit on SQLite)."""
    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")


# what psycopg says when the server is gone
_PG_GONE = ("server closed the connection", "terminating connection", "connection refused", "the connection is lost",
         "connection is closed", "consuming input failed", "sending query failed", "the database system is",
         "connection failed", "could not receive data", "connection to server")


def server_gone(text: str) -> bool:
    """Whether a driver's message says the PostgreSQL server went away (killed, stopped, restarting, not there)."""
    lowered = text.lower()
    refused = "authentication" in lowered or "password" in lowered or "does not exist" in lowered  # a bad login
    return not refused and any(phrase in lowered for phrase in _PG_GONE)


# ------------------------------------------------------------------ the row writers

def writer(conn: Connection) -> CoreWriter:
    """The fastest row writer for the connection's database (CoreWriter when FAST_PATH is off)."""
    fast = {"sqlite": SqliteWriter, "postgresql": PostgresWriter if conn.dialect.driver == "psycopg" else CoreWriter}
    return fast.get(conn.dialect.name, CoreWriter)(conn) if FAST_PATH else CoreWriter(conn)


class CoreWriter:
    """Any database: SQLAlchemy Core executemany in CHUNK-row chunks ("insertmanyvalues" batching)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def insert_one(self, table: Table, values: dict[str, Any]) -> int:
        return int(self.conn.execute(table.insert().values(**values)).inserted_primary_key[0])

    def insert_columns(self, table: Table, columns: Columns) -> None:
        n = _length(columns)
        names = list(columns)
        lists = [[v] * n if isinstance(v, int) else _python_values(v) for v in columns.values()]
        for start in range(0, n, CHUNK):
            self.conn.execute(table.insert(), [dict(zip(names, row, strict=True))
                                               for row in zip(*(v[start:start + CHUNK] for v in lists), strict=True)])


def _length(columns: Columns) -> int:
    return max((len(v) for v in columns.values() if not isinstance(v, int)), default=0)


def _numeric(columns: Columns) -> bool:
    return all(isinstance(v, int) or v.dtype.kind in "iufM" for v in columns.values())


class SqliteWriter(CoreWriter):
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
        if not _numeric(columns):
            super().insert_columns(table, columns)
            return
        arrays = {k: v for k, v in columns.items() if not isinstance(v, int)}
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


_PG_EPOCH_US = np.datetime64("2000-01-01T00:00:00", "us").astype(np.int64)
_PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
_PGCOPY_TRAILER = b"\xff\xff"


class PostgresWriter(CoreWriter):
    """PostgreSQL: `COPY ... FROM STDIN (FORMAT BINARY)` on the batch's connection, same transaction.

    The rows are one numpy structured array per COPY_ROWS rows, in PostgreSQL's binary copy format
    (per row: the field count, then each field's length and its big-endian value; timestamps as
    microseconds since 2000-01-01), sent with psycopg 3's `cursor.copy()`. Text or CSV COPY spends its
    time formatting and parsing floats and timestamps (measured 2-4x slower, docs/team.md). Rows with
    a missing value (NaN, NaT: NULL in the marts, as on SQLite) take the Core path; tables with text
    columns (drift: a few rows) too.
    """

    def insert_columns(self, table: Table, columns: Columns) -> None:
        if not _numeric(columns):
            super().insert_columns(table, columns)
            return
        n = _length(columns)
        missing = np.zeros(n, dtype=bool)
        for v in columns.values():
            if not isinstance(v, int) and v.dtype.kind in "fM":
                missing |= np.isnat(v) if v.dtype.kind == "M" else np.isnan(v)
        if missing.any():
            super().insert_columns(table, {k: v if isinstance(v, int) else v[missing] for k, v in columns.items()})
            columns = {k: v if isinstance(v, int) else v[~missing] for k, v in columns.items()}
            n = _length(columns)
        if n == 0:
            return
        fields = [("count", ">i2")]
        for name in columns:
            kind = _pg_type(table, name)
            fields += [(f"{name}.len", ">i4"), (name, kind)]
        layout = np.dtype(fields)  # packed: numpy adds no padding between named fields
        quote = self.conn.dialect.identifier_preparer  # (mixed-case names: "solar_GW_pred")
        statement = (f"COPY {quote.format_table(table)} ({', '.join(quote.quote(c) for c in columns)}) "
                     "FROM STDIN (FORMAT BINARY)")
        cur = self.conn.connection.driver_connection.cursor()
        try:
            with cur.copy(statement) as copy:
                copy.write(_PGCOPY_HEADER)
                for start in range(0, n, COPY_ROWS):
                    stop = min(start + COPY_ROWS, n)
                    rec = np.empty(stop - start, dtype=layout)
                    rec["count"] = len(columns)
                    for name, v in columns.items():
                        rec[f"{name}.len"] = layout[name].itemsize
                        rec[name] = v if isinstance(v, int) else _pg_values(v[start:stop])
                    copy.write(rec.tobytes())
                copy.write(_PGCOPY_TRAILER)
        finally:
            cur.close()


def _pg_type(table: Table, name: str) -> str:
    kind = table.c[name].type
    if isinstance(kind, DateTime):
        return ">i8"
    if isinstance(kind, Integer):
        return ">i4"
    if isinstance(kind, Float):
        return ">f8"
    raise TypeError(f"no binary COPY layout for {table.name}.{name} ({kind})")


def _pg_values(values: np.ndarray) -> np.ndarray:
    """A column for the binary COPY: datetime64 -> microseconds since PostgreSQL's epoch, else as it is."""
    if values.dtype.kind == "M":
        return values.astype("datetime64[us]").astype(np.int64) - _PG_EPOCH_US
    return values


def _python_values(values: np.ndarray) -> list:
    """Plain Python values for a DBAPI driver: NaN/NaT -> None, datetime64 -> datetime."""
    import pandas as pd

    if np.issubdtype(values.dtype, np.datetime64):
        return [None if pd.isna(t) else t for t in pd.Series(values).dt.to_pydatetime().tolist()]
    out = values.tolist()
    if values.dtype.kind == "f" and np.isnan(values).any():
        out = [None if v != v else v for v in out]  # v != v: NaN
    return out

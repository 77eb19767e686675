"""One batch of the data marts written on a connection of this process (LocalBatch), and the fast
row writers behind it. windpipe.marts.helper makes the same calls in a second process.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, Table

from windpipe.marts.tables import batches, drift, input_mart, output_mart

CHUNK = 50_000  # rows per executemany on the generic path
SQLITE_ROWS = 2_000  # rows per INSERT statement on SQLite (within its parameter limit)
SQLITE_FAST_PATH = True  # benchmarks switch it off to measure the generic SQLAlchemy path


# column name -> one value per row, or an int that every row has (the batch id)
Columns = dict[str, "np.ndarray | int"]


class CoreWriter:
    """Any database: SQLAlchemy Core executemany in CHUNK-row chunks ("insertmanyvalues" batching)."""

    def __init__(self, conn: Any) -> None:
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
        self._writer = SqliteWriter(self._conn) if sqlite and SQLITE_FAST_PATH else CoreWriter(self._conn)
        self.batch_id: int | None = None

    @property
    def connection(self) -> Connection:
        """The connection the batch is written on (in its open transaction)."""
        return self._conn

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

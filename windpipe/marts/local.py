"""One batch of the data marts written on a connection of this process (LocalBatch), with the fastest
row writer for its database (windpipe.marts.dialects). windpipe.marts.helper makes the same calls in a
second process.
"""

from __future__ import annotations

import contextlib
from typing import Any

from sqlalchemy import Connection, Engine

from windpipe.marts import dialects
from windpipe.marts.dialects import Columns
from windpipe.marts.tables import batches, drift, input_mart, output_mart


class LocalBatch:
    """One batch written in one transaction on a connection of this process.

    start(header) -> batch id, then add_inputs(columns) and add_outputs(columns) for each part of the rows
    (inputs first), finish(header values, drift), commit(); close() rolls back whatever was not committed.
    windpipe.marts.helper makes the same calls in a helper process, with `bulk=True`
    (windpipe.marts.dialects.begin_bulk: on SQLite no per-row foreign-key lookups, and the WAL checkpoint
    after the commit).
    """

    def __init__(self, engine: Engine, bulk: bool = False) -> None:
        self._conn = engine.connect()
        self._conn.begin()
        self._bulk = bulk and dialects.begin_bulk(self._conn)  # (before the first insert)
        self._writer = dialects.writer(self._conn)
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

    def add_outputs(self, columns: Columns) -> None:
        self._writer.insert_columns(output_mart, {"batch_id": self.batch_id, **columns})

    def finish(self, header: dict[str, Any], drift_columns: Columns | None) -> None:
        """What is known once every row is in: the header's counts, hash and drift status, and the drift rows."""
        if drift_columns:
            self._writer.insert_columns(drift, {"batch_id": self.batch_id, **drift_columns})
        self._conn.execute(batches.update().where(batches.c.id == self.batch_id).values(**header))

    def commit(self) -> None:
        self._conn.commit()

    def checkpoint(self) -> None:
        """After a bulk-mode commit on SQLite: the committed pages from the WAL into the database file."""
        if self._bulk:
            dialects.checkpoint(self._conn)

    def close(self) -> None:
        if self._bulk:  # not back into the pool with its pragmas changed
            self._conn.invalidate()
        # rolls back a transaction that was not committed; a server that went away took it with it already
        # (and then the rollback's own error would hide the one that says so)
        with contextlib.suppress(Exception):
            self._conn.close()

"""A helper process that writes one batch of the data marts while the caller reads and scores the next rows.

A thread cannot do this: Python's sqlite3 (like any DBAPI driver) holds the GIL while it binds
parameters, so inserting rows and scoring them in one process mostly take turns. The helper runs
`windpipe.marts.local.LocalBatch`'s calls on its own connection, in its own transaction; the caller's
calls are pickled to its stdin by a sender thread, so they return at once while fewer than SENDING are
on their way (the batch id and commit() wait for the helper's reply). If the caller stops before
commit() (an error, Ctrl-C, kill -9), the helper reads the end of its input and rolls back: nothing of
the batch is written. After the commit the helper checkpoints the WAL while the caller goes on; the
caller's exit waits for it.

    python -m windpipe.marts.helper      (started by ProcessBatch; the URL comes over stdin, not argv)
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import pickle
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from windpipe.errors import WindpipeError, first_line
from windpipe.marts.tables import database_error, display_url

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

_REPLIES = {"start", "commit"}  # the calls the helper answers; the others only report failure
SENDING = 2  # calls on their way to the helper at most (each part of a streamed batch is one or two calls)
_END = object()
_finishing: list[subprocess.Popen] = []  # helpers that committed and are checkpointing


@functools.cache
def _register_exit_wait() -> None:
    atexit.register(_wait_for_helpers)


def _wait_for_helpers() -> None:
    for proc in _finishing:
        _wait_or_kill(proc)


def _wait_or_kill(proc: subprocess.Popen) -> None:
    """Wait for a helper to end (a rollback or a checkpoint), killing it after two minutes."""
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class ProcessBatch:
    """LocalBatch's interface, carried out by a `python -m windpipe.marts.helper` child."""

    def __init__(self, url: URL | str) -> None:  # (with its password: sent by pipe, not argv)
        package_root = str(Path(__file__).resolve().parents[2])  # the same windpipe, wherever it came from
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH"))
                                                           if p)}
        self._proc = subprocess.Popen([sys.executable, "-m", "windpipe.marts.helper"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, env=env)
        # calls wait here while SENDING parts are on their way: a caller that scores faster than the database
        # takes the rows stays a few parts ahead (its memory flat), not a whole file
        self._outbox: queue.Queue[object] = queue.Queue(maxsize=SENDING)
        self._sender = threading.Thread(target=self._send_all, name="marts-sender", daemon=True)
        self._sender.start()
        self._batch_id: int | None = None
        self._committed = False
        self._where = display_url(url)
        self._send(url if isinstance(url, str) else url.render_as_string(hide_password=False))

    @property
    def process(self) -> subprocess.Popen:
        """The helper process (its pid, its command line, whether it has ended)."""
        return self._proc

    def _send(self, message: object) -> None:
        self._outbox.put(message)

    def _send_all(self) -> None:
        broken = False
        while (message := self._outbox.get()) is not _END:
            if broken:
                continue  # (drained, so that callers never wait on a helper that is gone)
            try:
                pickle.dump(message, self._proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                broken = True  # the helper stopped: its reply (or its exit code) says why

    def _reply(self) -> Any:
        try:
            kind, value = pickle.load(self._proc.stdout)
        except (EOFError, pickle.UnpicklingError):
            code = self._proc.wait()
            raise WindpipeError(f"The data marts writer process stopped (exit code {code}) before the batch was "
                                "committed; nothing of the batch was written.",
                                "see the messages above; if memory ran out, score the input in smaller files"
                                ) from None
        if kind == "error":
            raise database_error(value, self._where)
        if kind == "windpipe":  # a message already (the server is gone, the database refused the login)
            raise WindpipeError(*value)
        return value

    def start(self, header: dict[str, Any]) -> None:
        self._send(("start", (header,)))

    @property
    def batch_id(self) -> int:
        if self._batch_id is None:
            self._batch_id = int(self._reply())
        return self._batch_id

    def add_inputs(self, columns: dict[str, Any]) -> None:
        self._send(("add_inputs", (columns,)))

    def add_outputs(self, columns: dict[str, Any]) -> None:
        self._send(("add_outputs", (columns,)))

    def finish(self, header: dict[str, Any], drift_columns: dict[str, Any] | None) -> None:
        self._send(("finish", (header, drift_columns)))

    def commit(self) -> None:
        _ = self.batch_id  # (the replies come in order)
        self._send(("commit", ()))
        self._reply()
        self._committed = True

    def close(self) -> None:
        """Before commit(): the end of its input makes the helper roll back; wait for it. After: let it finish."""
        self._outbox.put(_END)
        self._sender.join()
        try:
            self._proc.stdin.close()
        except OSError:
            pass
        self._proc.stdout.close()
        if self._committed:
            _register_exit_wait()
            _finishing[:] = [p for p in _finishing if p.poll() is None] + [self._proc]
            return
        _wait_or_kill(self._proc)


def _answer(out: BinaryIO, kind: str, value: object) -> None:
    pickle.dump((kind, value), out, protocol=pickle.HIGHEST_PROTOCOL)
    out.flush()


def main() -> int:
    """The helper's loop: one batch, one transaction; exit 0 after the commit."""
    from windpipe.marts.local import LocalBatch
    from windpipe.marts.tables import get_engine

    inbox, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # anything printed must not mix with the replies
    batch = None
    try:
        batch = LocalBatch(get_engine(pickle.load(inbox)), bulk=True)
        while True:
            method, args = pickle.load(inbox)
            result = getattr(batch, method)(*args)
            if method in _REPLIES:
                _answer(out, "ok", result)
            if method == "commit":
                with contextlib.suppress(Exception):  # (committed: the caller goes on meanwhile)
                    batch.checkpoint()
                return 0
    except (EOFError, BrokenPipeError):  # the caller gave up before commit() (and stopped reading): roll back
        return 1
    except WindpipeError as exc:
        with contextlib.suppress(BrokenPipeError):
            _answer(out, "windpipe", (exc.problem, exc.fix))
        return 1
    except Exception as exc:
        with contextlib.suppress(BrokenPipeError):
            _answer(out, "error", f"{type(exc).__name__}: {first_line(exc, 300)}")
        return 1
    finally:
        if batch is not None:
            batch.close()


if __name__ == "__main__":
    sys.exit(main())

"""A lock every machine sees: a PostgreSQL advisory lock with a lease (the registry's lock on the team stack).

The lock is a session-level advisory lock (`pg_try_advisory_lock`) on a key made from its name. PostgreSQL
gives it to one session at a time and frees it when that session ends: when its process exits or is
killed (the connection closes), or when its machine vanishes (this session's server-side TCP keepalives
notice a silent peer within about 30 s). Beside it a row of `lock_holders` says who holds it, since when,
and until when (the lease). A holder that is alive but stuck past its lease (a stopped process, a session
a partition keeps open) is ended by the next one (`pg_terminate_backend`: the lock's role can end its own
sessions only), which says so; so does the one that finds the row of a holder that died. A holder checks,
and renews, its lease before each change it makes (`Held.check`): a holder whose session was ended stops
there. Clock times are the database server's, one clock for every machine.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from windpipe.errors import WindpipeError, first_line

TABLE = "lock_holders"
_CREATE = (f"CREATE TABLE IF NOT EXISTS {TABLE} (name text PRIMARY KEY, owner text NOT NULL, "
           "backend_pid integer NOT NULL, acquired_at timestamptz NOT NULL, expires_at timestamptz NOT NULL)")
# a peer that stops answering: its session ends after idle + count * interval seconds
_KEEPALIVE = {"tcp_keepalives_idle": 10, "tcp_keepalives_interval": 5, "tcp_keepalives_count": 3}
_POLL = 0.2


def key_of(name: str) -> int:
    """The advisory lock's 64-bit key for `name` (the same on every machine)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def owner() -> str:
    """Who takes the lock, as a waiter is told: user@host pid N."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


@dataclass
class Held:
    """The lock while its block runs."""

    conn: Any
    name: str
    lease: float

    def check(self) -> None:
        """Raise WindpipeError unless this session still holds the lock; renew the lease (call before a change)."""
        import psycopg

        try:
            row = self.conn.execute(f"UPDATE {TABLE} SET expires_at = now() + make_interval(secs => %s) "
                                    "WHERE name = %s AND backend_pid = pg_backend_pid() RETURNING 1",
                                    (self.lease, self.name)).fetchone()
        except psycopg.Error:
            row = None
        if row is None:
            raise WindpipeError(f"This process lost the lock {self.name!r}: it held it past its lease of "
                                f"{self.lease:g} s and another process took it over (or the database went away); "
                                "it changed nothing after that.",
                                "run it again (WINDPIPE_REGISTRY_LEASE sets the lease, in seconds)")


def conninfo(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as libpq takes it (the driver name dropped; password and passfile kept)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def display(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).set(query={}).render_as_string(hide_password=True)
    except Exception:
        return "<lock url>"


def _connect(url: str) -> Any:
    import psycopg

    try:
        conn = psycopg.connect(conninfo(url), autocommit=True, connect_timeout=5, application_name="windpipe lock",
                               keepalives=1, keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
    except psycopg.Error as exc:
        raise WindpipeError(f"The lock database at {display(url)} does not answer ({first_line(exc, 200)}).",
                            "run `windpipe up` (the team stack's PostgreSQL), or check WINDPIPE_LOCK_URL") from None
    for setting, value in _KEEPALIVE.items():
        conn.execute(f"SET {setting} = {int(value)}")
    with contextlib.suppress(psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
        conn.execute(_CREATE)  # (two first users at once: one of them makes it)
    return conn


def _holder(conn: Any, name: str) -> tuple[str, int, Any, Any, bool] | None:
    """(owner, backend pid, since, lease end, lease over) of the row of `name`, or None."""
    return conn.execute(f"SELECT owner, backend_pid, acquired_at, expires_at, now() > expires_at FROM {TABLE} "
                        "WHERE name = %s", (name,)).fetchone()


def _at(t: Any) -> str:
    return f"{t:%Y-%m-%d %H:%M:%S} UTC" if t is not None else "?"


@contextlib.contextmanager
def advisory_lock(url: str, name: str, lease: float, timeout: float,
                  say: Callable[[str], None] = lambda _m: None) -> Iterator[Held]:
    """Hold the lock `name` in the database at `url` while the block runs.

    Waits while another session holds it; ends a holder whose lease is over and takes it. Raises
    WindpipeError after `timeout` seconds of waiting, or when the database does not answer.
    """
    import psycopg

    conn = _connect(url)
    key = key_of(name)
    deadline = time.monotonic() + timeout
    told = ended = False
    try:
        while not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
            holder = _holder(conn, name)
            if holder is not None and holder[4]:
                conn.execute("SELECT pg_terminate_backend(%s, 5000)", (holder[1],))
                say(f"the lock {name!r} was held by {holder[0]} since {_at(holder[2])}, past the end of its lease "
                    f"({_at(holder[3])}): its session was ended, this process takes the lock")
                ended = True
                continue
            if not told and holder is not None:
                say(f"waiting for the lock {name!r}: held by {holder[0]} since {_at(holder[2])} "
                    f"(its lease ends {_at(holder[3])} at the latest)")
                told = True
            if time.monotonic() > deadline:
                who = f" by {holder[0]} since {_at(holder[2])}" if holder is not None else ""
                raise WindpipeError(f"The lock {name!r} has been held{who} for over {timeout:.0f} s.",
                                    "wait for that process to finish, then retry")
            time.sleep(_POLL)
        left = _holder(conn, name)
        if left is not None and not ended:  # its session ended without releasing: the process died
            say(f"the previous holder of the lock {name!r} ({left[0]}, since {_at(left[2])}) ended without "
                "releasing it (killed?); the lock was freed when its session closed, this process takes it")
        conn.execute(f"INSERT INTO {TABLE} (name, owner, backend_pid, acquired_at, expires_at) "
                     "VALUES (%s, %s, pg_backend_pid(), now(), now() + make_interval(secs => %s)) "
                     "ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, backend_pid = EXCLUDED.backend_pid, "
                     "acquired_at = EXCLUDED.acquired_at, expires_at = EXCLUDED.expires_at",
                     (name, owner(), lease))
        yield Held(conn, name, lease)
    except psycopg.Error as exc:
        raise WindpipeError(f"The lock database at {display(url)} stopped answering ({first_line(exc, 200)}).",
                            "run `windpipe up` (the team stack's PostgreSQL), or check WINDPIPE_LOCK_URL") from None
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.execute(f"DELETE FROM {TABLE} WHERE name = %s AND backend_pid = pg_backend_pid()", (name,))
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        with contextlib.suppress(psycopg.Error):
            conn.close()

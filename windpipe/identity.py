"""Which process is which: a process's identity (host, pid, start time) and whether a recorded one still runs.

A pid alone proves nothing: after its process ends the number is handed to another one. Pid files,
runs and prediction batches record `ProcessId` (host, pid and the start time psutil reports), and
`running()` says whether exactly that process is still there. Light: psutil and the standard library.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass


def start_time(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch, as psutil reports it), None if there is none.

    A zombie (ended, not yet reaped by its parent) counts as gone.
    """
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return round(proc.create_time(), 2)
    except (psutil.NoSuchProcess, psutil.ZombieProcess, ValueError):
        return None
    except psutil.AccessDenied:  # another user's process: it exists, its start time is not ours to read
        return None


def pid_alive(pid: int) -> bool:
    """True while process `pid` exists and has not exited (a zombie has)."""
    return start_time(pid) is not None


@dataclass(frozen=True)
class ProcessId:
    """One process on one host: pid plus start time, so that a reused pid is not mistaken for it."""

    host: str
    pid: int
    started: float

    def __str__(self) -> str:
        return f"{self.host} {self.pid} {self.started:.2f}"

    @classmethod
    def parse(cls, text: str | None) -> ProcessId | None:
        """The inverse of str(); None for anything else (an old record, a value edited by hand)."""
        try:
            host, pid, started = str(text).split()
            return cls(host, int(pid), float(started))
        except (TypeError, ValueError):
            return None

    @property
    def local(self) -> bool:
        return self.host == socket.gethostname()

    def running(self) -> bool | None:
        """True while this very process runs, False when it is gone, None when it runs on another host."""
        if not self.local:
            return None
        now = start_time(self.pid)
        return now is not None and abs(now - self.started) < 0.05


def current() -> ProcessId:
    """This process."""
    return of(os.getpid()) or ProcessId(socket.gethostname(), os.getpid(), 0.0)


def of(pid: int) -> ProcessId | None:
    """Process `pid` of this host, None when it does not exist."""
    started = start_time(pid)
    return None if started is None else ProcessId(socket.gethostname(), pid, started)

"""Detached server processes tracked by pid files, ports, and the one wait-until-ready loop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from windpipe.errors import WindpipeError
from windpipe.fileio import atomic_write_text

T = TypeVar("T")


@dataclass(frozen=True)
class ServiceState:
    """One server's health, as `windpipe status` shows it."""

    name: str
    url: str
    healthy: bool
    pid: int | None
    detail: str


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port and we may bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free right now (tests and `--port 0`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie has exited; only its parent has not reaped it yet
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def read_pid(pid_file: Path, markers: tuple[str, ...]) -> int | None:
    """The pid in `pid_file` if that process is alive and is ours (its command line has a marker)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid_alive(pid) and any(m in _cmdline(pid) for m in markers):
        return pid
    return None


def start_detached(argv: list[str], env: dict[str, str], log_file: Path, pid_file: Path,
                   cwd: Path | None = None) -> int:
    """Start `argv` in its own session (it outlives this process) and record its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=cwd, close_fds=True,
        )
    atomic_write_text(pid_file, f"{proc.pid}\n")
    return proc.pid


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process group `pid` leads, then SIGKILL what is left after `timeout`."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not pid_alive(pid):
                return
            time.sleep(0.1)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def wait_until(check: Callable[[], T], timeout: float, what: str, alive: Callable[[], bool] | None = None,
               exited: Callable[[], WindpipeError] | None = None, fix: str = "",
               interval: float = 0.2) -> T:
    """Call `check` until it returns without raising WindpipeError; return its value.

    `alive` (optional) says whether the process being waited for still runs: when it stops,
    `exited()` is raised at once (or a generic error). After `timeout` seconds the last error
    is raised, naming `what`.
    """
    deadline = time.monotonic() + timeout
    last: WindpipeError | None = None
    while True:
        if alive is not None and not alive():
            raise exited() if exited else WindpipeError(f"{what} exited while starting.", fix or None)
        try:
            return check()
        except WindpipeError as exc:
            last = exc
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    reason = f" ({last.problem})" if last is not None else ""
    raise WindpipeError(f"{what} did not become ready in {timeout:.0f} s{reason}.",
                        fix or "the machine may be busy: try again, or raise WINDPIPE_STARTUP_TIMEOUT")


def log_tail(log: Path | None, n: int = 8) -> str:
    """The last `n` lines of a log file, as a message suffix ('' when there is none)."""
    if not log or not log.exists():
        return ""
    return "\nLast log lines:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-n:])


def skip_final_gc() -> None:
    """Let this process exit without the interpreter's final garbage collections.

    They walk every object MLflow, scikit-learn and pandas created: about 0.7 s of a command that
    takes a few seconds. For process entry points only: no object made before this call is ever
    collected as cyclic garbage afterwards (files and connections still close).
    """
    import gc

    gc.freeze()

"""Detached server processes tracked by pid files that prove identity, ports, and the one wait-until-ready loop."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from windpipe.errors import WindpipeError
from windpipe.fileio import atomic_write_text
from windpipe.identity import pid_alive, start_time

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


@dataclass(frozen=True)
class PidRecord:
    """What a pid file proves: which process (pid and start time), started by which state folder, for which port."""

    pid: int
    started: float | None
    home: str
    port: int | None = None


def _home_key(home: Path | str) -> str:
    return str(Path(home).resolve())


def write_pid_file(pid_file: Path, pid: int, home: Path, port: int | None = None) -> None:
    """Record `pid` (with its start time, the state folder and the port) in `pid_file` (mode 0600)."""
    started = start_time(pid)
    record = {"pid": pid, "started": started, "home": _home_key(home), "port": port}
    atomic_write_text(pid_file, json.dumps(record) + "\n", mode=0o600)


def _read_record(pid_file: Path) -> PidRecord | None:
    try:
        text = pid_file.read_text().strip()
    except OSError:
        return None
    try:
        data = json.loads(text)
        if isinstance(data, int):  # a pid file of an older windpipe: a bare pid
            return PidRecord(data, None, "")
        return PidRecord(int(data["pid"]), data.get("started"), str(data.get("home", "")), data.get("port"))
    except (ValueError, TypeError, KeyError):
        return None


def _process_home(pid: int) -> str | None:
    """The WINDPIPE_HOME a process was started with (we start every detached server with it set)."""
    import psutil

    try:
        home = psutil.Process(pid).environ().get("WINDPIPE_HOME")
    except (psutil.Error, OSError):
        return None
    return _home_key(home) if home else None


def owned_pid(pid_file: Path, home: Path, say: Callable[[str], None] | None = None) -> int | None:
    """The pid in `pid_file` if it is the very process this state folder started, else None.

    Proof: the file names this state folder, the process is alive with the recorded start time (a
    reused pid has another), and the process itself was started with WINDPIPE_HOME set to this
    folder. A pid file that fails the proof (stale, copied from another state folder, unreadable)
    is never acted on; with `say` it is also removed, with a message.
    """
    if not pid_file.exists():
        return None
    record = _read_record(pid_file)
    here = _home_key(home)
    why = None
    if record is None:
        why = "unreadable"
    elif record.home and record.home != here:
        why = f"it was written for the state folder {record.home}, not this one; nothing was signalled"
    elif not pid_alive(record.pid):
        why = f"process {record.pid} is gone"
    elif record.started is not None and abs((start_time(record.pid) or 0.0) - record.started) >= 0.05:
        why = f"pid {record.pid} now belongs to another process (started at another time); nothing was signalled"
    elif (home := _process_home(record.pid)) != here and (home is not None or record.started is None):
        # (a process that renamed itself, as Airflow's API server does, may have overwritten its environment:
        # then the start time alone proves it)
        why = f"process {record.pid} was not started by this state folder; nothing was signalled"
    if why is None:
        return record.pid
    if say is not None:
        pid_file.unlink(missing_ok=True)
        say(f"{pid_file.stem}: removed {'a foreign' if 'nothing was signalled' in why else 'a stale'} pid file "
            f"{pid_file} ({why})")
    return None


def session_leftovers(pid_file: Path, home: Path) -> list[int]:
    """Processes still in the session of the service `pid_file` recorded, now that its leader is gone.

    `start_detached` makes each service lead its own session; what it forks (an executor's workers, their
    tasks, even those that moved to a process group of their own) stays in that session and outlives a
    kill -9 of the leader, reparented to init. Proof they are the service's: the session id is the recorded
    pid, they started after the recorded leader, and they do not name another state folder. [] when the
    leader still runs or nothing was recorded.
    """
    import psutil

    record = _read_record(pid_file)
    if record is None or record.started is None or pid_alive(record.pid) or (
            record.home and record.home != _home_key(home)):
        return []
    found = []
    for proc in psutil.process_iter(["pid", "create_time"]):
        try:
            if os.getsid(proc.pid) != record.pid or proc.info["create_time"] + 0.05 < record.started:
                continue
        except (OSError, TypeError):
            continue
        if proc.pid == record.pid or not pid_alive(proc.pid):  # (the leader itself, a zombie not yet reaped)
            continue
        if _process_home(proc.pid) in (None, _home_key(home)):  # (None: unreadable, or renamed over)
            found.append(proc.pid)
    return found


def start_detached(argv: list[str], env: dict[str, str], log_file: Path, pid_file: Path, home: Path,
                   port: int | None = None, cwd: Path | None = None) -> int:
    """Start `argv` in its own session (it outlives this process) and record it in `pid_file`.

    The process gets WINDPIPE_HOME=`home` (the proof `owned_pid` checks), umask 077 (its databases and
    logs are the owner's only) and the log file (0600) as stdout and stderr. If the pid file cannot be
    written (a full disk), the process is stopped again: nothing runs without a pid file.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "ab") as log:
        proc = subprocess.Popen(
            argv, env={**env, "WINDPIPE_HOME": _home_key(home)}, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True, cwd=cwd, close_fds=True, umask=0o077,
        )
    try:
        write_pid_file(pid_file, proc.pid, home, port)
    except (OSError, WindpipeError) as exc:
        stop_pid(proc.pid)
        raise WindpipeError(f"Cannot write the pid file {pid_file} ({getattr(exc, 'problem', exc)}), so "
                            f"{argv[-1]} was stopped again.",
                            f"free space in {pid_file.parent.parent} (or make it writable), then try again") from None
    return proc.pid


def stop_service(name: str, pid: int | None, pid_file: Path, say: Callable[[str], None]) -> None:
    """Stop the server `name` (its pid proven by `pid_file`; None: not running), say so, remove the pid file."""
    if pid is None:
        say(f"{name}: not running")
    else:
        stop_pid(pid)
        say(f"{name}: stopped (pid {pid})")
    pid_file.unlink(missing_ok=True)


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM the process `pid` (and its process group when it leads one), then SIGKILL what is left.

    Call it only with a pid proven ours (`owned_pid`, or a child of this process).
    """
    try:
        group = os.getpgid(pid) == pid  # start_detached makes each server lead its own group
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)
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


@contextlib.contextmanager
def environment(changes: Mapping[str, str | None]) -> Iterator[None]:
    """This process's environment (what the processes it starts inherit) with `changes` (None: unset), those
    variables restored on exit. Only they are touched: other threads may read the environment meanwhile."""
    def apply(values: Mapping[str, str | None]) -> None:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    saved = {k: os.environ.get(k) for k in changes}
    try:
        apply(changes)
        yield
    finally:
        apply(saved)

"""Server processes: the one `Service` model behind every server windpipe starts, pid files that prove identity,
ports, and the one wait-until-ready loop.

Every server (the FTP and tracking servers of both stacks, rclone, PostgreSQL, Airflow's services, the dashboard,
JupyterLab, `mlflow models serve`) is a `Service`: a definition of what it is (name, URL, port), how it starts
(command, environment, working folder, log) and how to know it answers (`check`). Starting it in its own session
with a pid file, refusing a taken port, waiting until it answers, stopping its process group, and its state for
`windpipe status` are the same for all of them and live here. `bring_up` / `bring_down` / `states` run a list of
them (a stack) in order.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from windpipe.errors import WindpipeError
from windpipe.fileio import atomic_write_text
from windpipe.identity import pid_alive, start_time
from windpipe.settings import StatePaths

T = TypeVar("T")
Say = Callable[[str], None]


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
    url: str | None = None


def _home_key(home: Path | str) -> str:
    return str(Path(home).resolve())


def write_pid_file(pid_file: Path, pid: int, home: Path, port: int | None = None, url: str | None = None) -> None:
    """Record `pid` (with its start time, the state folder, the port and URL) in `pid_file` (mode 0600)."""
    started = start_time(pid)
    record = {"pid": pid, "started": started, "home": _home_key(home), "port": port, "url": url}
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
        return PidRecord(int(data["pid"]), data.get("started"), str(data.get("home", "")), data.get("port"),
                         data.get("url"))
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
                   port: int | None = None, cwd: Path | None = None, url: str | None = None) -> int:
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
        write_pid_file(pid_file, proc.pid, home, port, url)
    except (OSError, WindpipeError) as exc:
        stop_pid(proc.pid)
        raise WindpipeError(f"Cannot write the pid file {pid_file} ({getattr(exc, 'problem', exc)}), so "
                            f"{argv[-1]} was stopped again.",
                            f"free space in {pid_file.parent.parent} (or make it writable), then try again") from None
    return proc.pid


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


def recorded_address(pid_file: Path) -> tuple[str | None, int | None]:
    """(host, port) a server was started on, as its pid file records them ((None, None): no record): a server
    started on a port chosen on the command line is found there again."""
    from urllib.parse import urlsplit

    record = _read_record(pid_file)
    if record is None or not record.url:
        return None, record.port if record is not None else None
    url = urlsplit(record.url)
    return url.hostname, url.port or record.port


def quiet(_message: str) -> None:
    """A `say` that says nothing."""


@dataclass
class Service:
    """One server windpipe runs: the fields define it, the methods are the same for every server.

    `check` raises WindpipeError naming the problem unless the server answers, else returns a detail for
    `windpipe status` ("health ok"). `command` and `env` are called when it starts (secrets are made then).
    A service without a command is a part that another server holds (the marts, in PostgreSQL); an `external`
    one was started by someone else (an existing database or S3 service named by settings): both are only
    checked, never started or stopped. Without `home` there is no pid file: `spawn` makes it a child of this
    process.
    """

    name: str  # its pid and log files (<home>/run/<name>.pid, <home>/logs/<name>.log); how status lists it
    url: str
    check: Callable[[], str]
    home: Path | None = None  # the state folder: the proof of its pid file, and the server's WINDPIPE_HOME
    host: str = "127.0.0.1"
    port: int | None = None
    command: Callable[[], list[str]] | None = None
    env: Callable[[], dict[str, str]] | None = None  # default: this process's environment
    prepare: Callable[[], None] | None = None  # what must exist before it starts (folders, a generated secret)
    cwd: Path | None = None
    log: Path | None = None  # default: <home>/logs/<name>.log
    title: str = ""  # how messages name it; default "the <name> server"
    port_fix: str = "choose another port"  # what to do about a taken port
    exit_fix: str = ""  # what to do when it exits while starting; default: see its log
    timeout: float = 60.0  # seconds it may take to answer after it starts
    after_ready: bool = False  # (bring_up) start it only once the services started before it answer
    external: bool = False

    # ------------------------------------------------------------------ where

    @property
    def what(self) -> str:
        """'The mlflow server', 'JupyterLab': the start of a message."""
        title = self.title or f"the {self.name} server"
        return title[0].upper() + title[1:]

    @property
    def pid_file(self) -> Path | None:
        return StatePaths(self.home).pid_file(self.name) if self.home is not None else None

    @property
    def log_file(self) -> Path | None:
        return self.log or (StatePaths(self.home).log_file(self.name) if self.home is not None else None)

    @property
    def managed(self) -> bool:
        """Whether windpipe starts and stops it (not an external service, not a part of another server)."""
        return self.command is not None and not self.external

    # ------------------------------------------------------------------ what runs

    def pid(self, say: Say | None = None) -> int | None:
        """Its pid while it runs, started by this state folder (proven by its pid file); with `say`, a stale or
        foreign pid file is removed and reported."""
        if not self.managed or self.pid_file is None:
            return None
        return owned_pid(self.pid_file, self.home, say)

    def running_url(self) -> str:
        """The URL it was started with (a port chosen on the command line), else its definition's."""
        record = _read_record(self.pid_file) if self.pid_file is not None else None
        return (record.url if record is not None and record.url and self.pid() is not None else None) or self.url

    def state(self) -> ServiceState:
        """Checked for real, as `windpipe status` shows it."""
        pid = self.pid()
        url = self.running_url()
        try:
            return ServiceState(self.name, url, True, pid, self.check())
        except WindpipeError as exc:
            detail = str(exc)
            if pid is None and self.managed and self.port is not None and not port_is_free(self.host, self.port):
                detail += "\n  note: the port is held by a program windpipe did not start"
            return ServiceState(self.name, url, False, pid, detail)

    # ------------------------------------------------------------------ starting and stopping

    def require_port(self) -> None:
        """Refuse to start on a port another program holds (it would fail later, less clearly)."""
        if self.port is not None and not port_is_free(self.host, self.port):
            title = self.what[0].lower() + self.what[1:] if self.what.startswith("The ") else self.what
            raise WindpipeError(f"Port {self.port} on {self.host} is taken by another program, so {title} cannot "
                                "start.", f"stop that program, or {self.port_fix}")

    def environment(self) -> dict[str, str]:
        return self.env() if self.env is not None else dict(os.environ)

    def launch(self) -> int:
        """Start it detached (its own session; a pid file that proves it, with its port and URL); its pid."""
        if self.command is None or self.home is None or self.pid_file is None or self.log_file is None:
            raise WindpipeError(f"{self.what} is not a process windpipe starts.")
        self.require_port()
        if self.prepare is not None:
            self.prepare()
        return start_detached(self.command(), self.environment(), self.log_file, self.pid_file, self.home,
                              port=self.port, cwd=self.cwd, url=self.url)

    def spawn(self, stdout: object = None) -> subprocess.Popen:
        """Start it as a child of this process, in its own process group (no pid file: the caller stops it with
        `stop_child`). Its output goes to its log, else to `stdout`."""
        if self.command is None:
            raise WindpipeError(f"{self.what} is not a process windpipe starts.")
        self.require_port()
        if self.prepare is not None:
            self.prepare()
        out = open(self.log_file, "ab") if self.log_file is not None else stdout  # (the child holds it open)
        return subprocess.Popen(self.command(), env=self.environment(), stdout=out,
                                stderr=subprocess.STDOUT if out is not None else None, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=self.cwd)

    def wait(self, alive: Callable[[], bool], timeout: float | None = None) -> str:
        """Wait until `check` passes (its detail); say at once when the process exits (with its log's last lines)."""
        log = self.log_file
        see = f"see {log}" if log is not None else ""
        return wait_until(self.check, self.timeout if timeout is None else timeout, self.what, alive=alive,
                          exited=lambda: WindpipeError(f"{self.what} exited while starting.{log_tail(log, 5)}",
                                                       self.exit_fix or see or None),
                          fix=see)

    def begin(self, say: Say = quiet, timeout: float | None = None) -> int | None:
        """Start it unless it runs (an external one or a running one is checked at once); the pid when this call
        started it (then `wait` for it)."""
        if self.external:
            say(f"{self.name}: using {self.url}")
            self.check()
            return None
        if not self.managed:
            return None
        pid = self.pid(say)
        if pid is not None:
            say(f"{self.name}: already running (pid {pid}) at {self.running_url()}")
            self.check()
            return None
        pid = self.launch()
        say(f"{self.name}: starting (pid {pid})")
        return pid

    def start(self, say: Say = quiet, timeout: float | None = None) -> int:
        """Start it unless it runs and wait until it answers; its pid. On a failure (Ctrl-C too) what this call
        started is stopped again."""
        pid = self.pid(say)
        if pid is not None:
            return pid
        pid = self.launch()
        try:
            self.wait(lambda: pid_alive(pid), timeout)
        except BaseException:
            self.stop()
            raise
        return pid

    def stop(self, say: Say = quiet) -> int | None:
        """Stop it (its whole process group) when this state folder started it and say so; the pid it had."""
        if not self.managed:
            return None
        pid = self.pid(say)
        if pid is None:
            say(f"{self.name}: not running")
        else:
            stop_pid(pid)
            say(f"{self.name}: stopped (pid {pid})")
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)
        return pid


def stop_child(proc: subprocess.Popen) -> None:
    """Stop a `Service.spawn` child and its process group."""
    if proc.poll() is None:
        stop_pid(proc.pid)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def bring_up(services: Iterable[Service], say: Say = quiet, timeout: float = 60.0) -> list[ServiceState]:
    """Start, in order, each service that does not run, wait until each answers, and return every one's state
    (a WindpipeError names one that is not healthy). On a failure (Ctrl-C too) what this call started is stopped
    again; what ran before is left alone."""
    services = list(services)
    deadline = time.monotonic() + timeout
    started: list[Service] = []
    pending: list[tuple[Service, int]] = []

    def remaining() -> float:
        return max(deadline - time.monotonic(), 1.0)

    def wait_pending() -> None:
        while pending:
            svc, pid = pending.pop(0)
            svc.wait(lambda pid=pid: pid_alive(pid), remaining())

    try:
        for svc in services:
            if svc.after_ready:
                wait_pending()
            pid = svc.begin(say, remaining())
            if pid is not None:
                started.append(svc)
                pending.append((svc, pid))
        wait_pending()
        states = [svc.state() for svc in services]
        for st in states:
            if not st.healthy:
                raise WindpipeError(f"{st.name} is not healthy: {st.detail}", "see `windpipe status`")
    except BaseException:
        for svc in reversed(started):
            svc.stop()
        raise
    for st in states:
        if any(svc.name == st.name for svc in started):
            say(f"{st.name}: up at {st.url}")
    return states


def bring_down(services: Iterable[Service], say: Say = quiet) -> None:
    """Stop, in reverse order, the services windpipe started (and only those)."""
    for svc in reversed(list(services)):
        svc.stop(say)


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

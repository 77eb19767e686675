"""The local platform: the FTP artifact server and the MLflow tracking server on SQLite.

(`WINDPIPE_STACK=team`: the same three calls run `windpipe.stack.team`.)

`up` starts both detached and waits until they answer, `down` stops what `up` started
(pid files in the state folder), `status` checks both for real (an FTP login, the
tracking server's /health and an artifact listing through its proxy).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable

from windpipe.errors import WindpipeError
from windpipe.fileio import low_space, mount_point
from windpipe.identity import pid_alive
from windpipe.settings import Settings
from windpipe.stack import ftp
from windpipe.stack.procs import (
    ServiceState,
    log_tail,
    owned_pid,
    port_is_free,
    start_detached,
    stop_pid,
    stop_service,
    wait_until,
)
from windpipe.tracking.client import probe_artifacts, probe_health

FTP = "ftp"
MLFLOW = "mlflow"


def running_pid(settings: Settings, name: str, say: Callable[[str], None] | None = None) -> int | None:
    """The pid of the `name` server this state folder started, when it runs (proven by its pid file).

    With `say`, a stale or foreign pid file is removed and reported."""
    return owned_pid(settings.pid_file(name), settings.home, say)


# files of the state folder only their owner may read: the databases (with their WAL files) and the logs
PRIVATE_GLOBS = ("*.db", "*.db-wal", "*.db-shm", "*.db-journal", "logs/*.log", "run/*")


def ensure_state_folder(settings: Settings) -> None:
    """Create the state folder (FTP root, logs, pid files) with mode 0700, or say why it cannot be used.

    The folder holds credentials, so it and its databases and logs are the owner's only (0700 / 0600),
    also when an older windpipe created them world-readable.
    """
    home = settings.home
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(home, 0o700)
        for folder in (settings.ftp_root / "artifacts", settings.log_file(FTP).parent, settings.pid_file(FTP).parent):
            folder.mkdir(parents=True, exist_ok=True)
        for pattern in PRIVATE_GLOBS:
            for path in home.glob(pattern):
                if path.is_file():
                    os.chmod(path, 0o600)
        probe = settings.run_file(".write-test")
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise WindpipeError(
            f"The state folder {home} is not writable ({exc.strerror or exc}).",
            "free space there or make it writable, or point WINDPIPE_HOME at a folder you own",
        ) from None


def _url(settings: Settings, name: str) -> str:
    if name == FTP:
        return f"ftp://{settings.host}:{settings.ftp_port}"
    return settings.local_tracking_uri


def _port(settings: Settings, name: str) -> int:
    return settings.ftp_port if name == FTP else settings.mlflow_port


def _check(settings: Settings, name: str) -> str:
    """Check one service for real; raise WindpipeError naming the problem."""
    if name == FTP:
        ftp.check_login(settings, ftp.ftp_password(settings))
        return "login ok"
    probe_health(settings.local_tracking_uri, timeout=3.0)
    return "health ok"


def service_state(settings: Settings, name: str) -> ServiceState:
    """Check one service for real."""
    pid = running_pid(settings, name)
    try:
        detail = _check(settings, name)
        if name == MLFLOW and status_ok(settings, FTP):
            probe_artifacts(settings.local_tracking_uri)
            detail += ", artifact proxy ok"
        return ServiceState(name, _url(settings, name), True, pid, detail)
    except WindpipeError as exc:
        detail = str(exc)
        if pid is None and not port_is_free(settings.host, _port(settings, name)):
            detail += "\n  note: the port is held by a program windpipe did not start"
        return ServiceState(name, _url(settings, name), False, pid, detail)


def status_ok(settings: Settings, name: str) -> bool:
    try:
        _check(settings, name)
    except WindpipeError:
        return False
    return True


def status(settings: Settings) -> list[ServiceState]:
    """Every server's state, and the state folder's disk (DOWN below settings.min_free_mb free)."""
    if settings.stack == "team":
        from windpipe.stack import team

        return [*team.status(settings), disk_state(settings)]
    return [service_state(settings, FTP), service_state(settings, MLFLOW), disk_state(settings)]


def disk_state(settings: Settings) -> ServiceState:
    """The disk of the state folder (the tracking database, the artifacts, the marts live there) as a status line."""
    mount = mount_point(settings.home)
    low = low_space(settings.home, settings.min_free_mb, "the state folder")
    if low is not None:
        return ServiceState("disk", str(mount), False, None, str(low))
    try:
        free = f"{shutil.disk_usage(mount).free / 1e6:.0f} MB free"
    except OSError as exc:
        free = f"free space unknown ({exc.strerror or exc})"
    return ServiceState("disk", str(mount), True, None, f"{free} for {settings.home}")


def _server_env(settings: Settings, password: str) -> dict[str, str]:
    env = dict(os.environ)
    # settings travel by environment so no password shows in a process list
    env.update({
        "WINDPIPE_HOME": str(settings.home.resolve()),
        "WINDPIPE_HOST": settings.host,
        "WINDPIPE_FTP_PORT": str(settings.ftp_port),
        "WINDPIPE_FTP_PASSIVE_PORTS": settings.ftp_passive_ports,
        "WINDPIPE_FTP_USER": settings.ftp_user,
        "WINDPIPE_FTP_PASSWORD": password,
        "MLFLOW_ARTIFACTS_DESTINATION": ftp.artifact_destination(settings, password),
        "WINDPIPE_MLFLOW_PORT": str(settings.mlflow_port),
        "WINDPIPE_BACKEND_STORE_URI": settings.backend_store_uri,
        "PYTHONUNBUFFERED": "1",
        **settings.process_environment(),
    })
    return env


def _command(settings: Settings, name: str) -> list[str]:
    if name == FTP:
        return [sys.executable, "-m", "windpipe.stack.ftp"]
    if settings.mlflow_launcher == "fast":
        return [sys.executable, "-m", "windpipe.stack.mlflow_server"]
    return [
        sys.executable, "-m", "mlflow", "server",
        "--host", settings.host, "--port", str(settings.mlflow_port),
        "--backend-store-uri", settings.backend_store_uri,
        "--serve-artifacts", "--workers", str(settings.mlflow_workers),
    ]


def _start(settings: Settings, name: str, env: dict[str, str]) -> int:
    port = _port(settings, name)
    if not port_is_free(settings.host, port):
        var = "WINDPIPE_FTP_PORT" if name == FTP else "WINDPIPE_MLFLOW_PORT"
        raise WindpipeError(
            f"Port {port} on {settings.host} is taken by another program, so the {name} server cannot start.",
            f"stop that program, or choose another port with {var}=<port>",
        )
    return start_detached(_command(settings, name), env, settings.log_file(name), settings.pid_file(name),
                          settings.home, port=port, cwd=settings.home)


def _wait_healthy(settings: Settings, name: str, pid: int, deadline: float) -> None:
    log = settings.log_file(name)
    wait_until(lambda: _check(settings, name), max(deadline - time.monotonic(), 0.0), f"The {name} server",
               alive=lambda: pid_alive(pid),
               exited=lambda: WindpipeError(f"The {name} server exited while starting.{log_tail(log, 5)}",
                                            f"see {log}"),
               fix=f"see {log}")


def up(settings: Settings, say: Callable[[str], None] = print) -> list[ServiceState]:
    """Start whatever is not running, wait until both answer. Running services are left alone. A state folder
    on a disk with less than settings.min_free_mb free is refused: nothing starts (the servers would start,
    then fail the first write with errors that do not say why)."""
    low = low_space(settings.home, settings.min_free_mb, "the state folder")
    if low is not None:
        raise low
    if settings.stack == "team":
        from windpipe.stack import team

        return team.up(settings, say)
    ensure_state_folder(settings)
    password = ftp.ftp_password(settings, create=True)
    env = _server_env(settings, password)
    deadline = time.monotonic() + settings.startup_timeout
    started: dict[str, int] = {}
    try:
        for name in (FTP, MLFLOW):
            pid = running_pid(settings, name, say)
            if pid is not None:
                if name == FTP:
                    _check(settings, FTP)  # a running server with another password is an error, not "ok"
                say(f"{name}: already running (pid {pid}) at {_url(settings, name)}")
                continue
            started[name] = _start(settings, name, env)
            say(f"{name}: starting (pid {started[name]})")
        for name, pid in started.items():
            _wait_healthy(settings, name, pid, deadline)
        states = status(settings)
        for st in states:
            if not st.healthy:
                raise WindpipeError(f"{st.name} is not healthy: {st.detail}", "see `windpipe status`")
    except BaseException:  # (Ctrl-C too) what this call started does not outlive its failure
        for name, pid in started.items():
            stop_pid(pid)
            settings.pid_file(name).unlink(missing_ok=True)
        raise
    for st in states:
        if st.name in started:
            say(f"{st.name}: up at {st.url}")
    return states


def down(settings: Settings, say: Callable[[str], None] = print) -> None:
    """Stop the servers `up` started (and only those)."""
    if settings.stack == "team":
        from windpipe.stack import team

        return team.down(settings, say)
    for name in (MLFLOW, FTP):
        stop_service(name, running_pid(settings, name, say), settings.pid_file(name), say)


def tidy_up(settings: Settings) -> list[str]:
    """After killed processes: end KILLED the RUNNING runs whose process is gone, and complete or remove the
    prediction batches a killed `windpipe predict` left pending. Returns what was done, one line each."""
    from mlflow import MlflowClient

    from windpipe.marts.tables import get_engine
    from windpipe.marts.writers import settle_pending
    from windpipe.stack.objects import local_copy
    from windpipe.tracking.runs import mark_killed_runs

    try:
        lines = [f"run {run_id}: marked KILLED (its process is gone)"
                 for run_id in mark_killed_runs(MlflowClient(settings.effective_tracking_uri))]
    except Exception as exc:  # the tracking store cannot be written (a full disk answers 503): say so, go on
        from windpipe.errors import first_line
        from windpipe.tracking.client import diagnose

        down = diagnose(settings)
        lines = [f"runs: not checked ({down.problem if down is not None else first_line(exc, 300)})"]
    try:
        lines += settle_pending(get_engine(settings=settings), lambda uri: local_copy(uri, settings))
    except WindpipeError as exc:
        lines.append(f"marts: not checked ({exc.problem})")
    return lines

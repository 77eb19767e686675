"""The platform's servers: `up`, `down` and `status` for the stack the settings choose.

The local stack is defined here: the FTP artifact server and the MLflow tracking server on SQLite
(`WINDPIPE_STACK=team`: `windpipe.stack.team` defines PostgreSQL, S3 and MLflow). Each server is a
`windpipe.stack.procs.Service`: `up` starts what does not run and waits until it answers, `down`
stops what `up` started (pid files in the state folder), `status` checks each for real (an FTP login,
the tracking server's /health and an artifact listing through its proxy).
"""

from __future__ import annotations

import os
import sys

from windpipe.errors import WindpipeError
from windpipe.settings import Settings
from windpipe.stack import ftp
from windpipe.stack.procs import Say, Service, ServiceState, bring_down, bring_up
from windpipe.tracking.client import mlflow_client, probe_artifacts, probe_health

FTP = "ftp"
MLFLOW = "mlflow"


def ftp_service(settings: Settings) -> Service:
    """The FTP artifact server (pyftpdlib): checked by a login with the platform's password."""
    def check() -> str:
        ftp.check_login(settings, ftp.ftp_password(settings))
        return "login ok"

    return Service(FTP, f"ftp://{settings.host}:{settings.ftp_port}", check, home=settings.home, host=settings.host,
                   port=settings.ftp_port, command=lambda: [sys.executable, "-m", "windpipe.stack.ftp"],
                   env=lambda: _server_env(settings), cwd=settings.home,
                   port_fix="choose another port with WINDPIPE_FTP_PORT=<port>")


def mlflow_service(settings: Settings) -> Service:
    """The tracking server on SQLite, proxying artifacts to the FTP server (its artifact listing is checked too
    while that answers)."""
    uri = settings.local_tracking_uri

    def check() -> str:
        probe_health(uri, timeout=3.0)
        try:
            ftp.check_login(settings, ftp.ftp_password(settings))
        except WindpipeError:
            return "health ok"
        probe_artifacts(uri)
        return "health ok, artifact proxy ok"

    return Service(MLFLOW, uri, check, home=settings.home, host=settings.host, port=settings.mlflow_port,
                   command=lambda: _mlflow_command(settings), env=lambda: _server_env(settings), cwd=settings.home,
                   port_fix="choose another port with WINDPIPE_MLFLOW_PORT=<port>")


def stack(settings: Settings) -> list[Service]:
    """The servers of the configured stack, in start order (`windpipe up | down | status`)."""
    if settings.stack == "team":
        from windpipe.stack import team

        return team.services(settings)
    return [ftp_service(settings), mlflow_service(settings)]


def running_pid(settings: Settings, name: str, say: Say | None = None) -> int | None:
    """The pid of the stack's `name` server this state folder started, when it runs (proven by its pid file).

    With `say`, a stale or foreign pid file is removed and reported."""
    return next(svc.pid(say) for svc in stack(settings) if svc.name == name)


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
        paths = settings.paths
        for folder in (paths.ftp_root / "artifacts", paths.log_file(FTP).parent, paths.pid_file(FTP).parent):
            folder.mkdir(parents=True, exist_ok=True)
        for pattern in PRIVATE_GLOBS:
            for path in home.glob(pattern):
                if path.is_file():
                    os.chmod(path, 0o600)
        probe = settings.paths.run_file(".write-test")
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise WindpipeError(
            f"The state folder {home} is not writable ({exc.strerror or exc}).",
            "free space there or make it writable, or point WINDPIPE_HOME at a folder you own",
        ) from None


def status(settings: Settings) -> list[ServiceState]:
    """Each server of the stack checked for real."""
    return [svc.state() for svc in stack(settings)]


def _server_env(settings: Settings) -> dict[str, str]:
    password = ftp.ftp_password(settings, create=True)
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


def _mlflow_command(settings: Settings) -> list[str]:
    if settings.mlflow_launcher == "fast":
        return [sys.executable, "-m", "windpipe.stack.mlflow_server"]
    return [
        sys.executable, "-m", "mlflow", "server",
        "--host", settings.host, "--port", str(settings.mlflow_port),
        "--backend-store-uri", settings.backend_store_uri,
        "--serve-artifacts", "--workers", str(settings.mlflow_workers),
    ]


def up(settings: Settings, say: Say = print) -> list[ServiceState]:
    """Start whatever is not running, wait until every server answers. Running servers are left alone; on a
    failure what this call started is stopped again."""
    if settings.stack == "team":
        from windpipe.stack import team

        team.prepare_home(settings)
    else:
        ensure_state_folder(settings)
    return bring_up(stack(settings), say, settings.startup_timeout)


def down(settings: Settings, say: Say = print) -> None:
    """Stop the servers `up` started (and only those: an existing database or S3 service is left alone)."""
    bring_down(stack(settings), say)


def tidy_up(settings: Settings) -> list[str]:
    """After killed processes: end KILLED the RUNNING runs whose process is gone, and complete or remove the
    prediction batches a killed `windpipe predict` left pending. Returns what was done, one line each."""
    from windpipe.marts.tables import get_engine
    from windpipe.marts.writers import settle_pending
    from windpipe.stack.objects import local_copy
    from windpipe.tracking.runs import mark_killed_runs

    lines = [f"run {run_id}: marked KILLED (its process is gone)"
             for run_id in mark_killed_runs(mlflow_client(settings))]
    try:
        lines += settle_pending(get_engine(settings=settings), lambda uri: local_copy(uri, settings))
    except WindpipeError as exc:
        lines.append(f"marts: not checked ({exc.problem})")
    return lines

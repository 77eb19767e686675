"""The team stack (`WINDPIPE_STACK=team`): PostgreSQL, an S3 store and the MLflow tracking server.

`up` starts what is missing (an existing database or S3 service named by settings is used as it
is), `status` checks each part for real (a query, a bucket listing, /health, an artifact listing
through the tracking server's proxy) and names the one that is down, `down` stops what `up`
started. The tracking server proxies artifacts, so clients hold no database password and no S3
key; with `WINDPIPE_AUTH=basic` it runs MLflow's basic-auth app with a generated admin password.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from windpipe.errors import WindpipeError, first_line
from windpipe.fileio import atomic_write_text, kept_secret
from windpipe.identity import pid_alive
from windpipe.settings import Settings
from windpipe.stack import postgres, s3
from windpipe.stack.procs import (
    ServiceState,
    log_tail,
    owned_pid,
    port_is_free,
    start_detached,
    stop_service,
    wait_until,
)
from windpipe.tracking.client import env_credentials, probe_artifacts, probe_health

POSTGRES = "postgres"
MARTS = "marts"
S3 = s3.NAME
MLFLOW = "mlflow"
# the flag only marks the process as the team stack's (the server takes its settings from the environment)
MLFLOW_ARGV = ["-m", "windpipe.stack.mlflow_server", "--team"]
ADMIN = "admin"
ADMIN_PASSWORD = "auth_admin_password"
FLASK_KEY = "flask_secret_key"
AUTH_CONFIG = "basic_auth.ini"
# variables a server must not inherit from whoever runs `windpipe up`
_PRIVATE_PREFIXES = ("AWS_", "MLFLOW_TRACKING_PASSWORD", "WINDPIPE_S3_SECRET", "WINDPIPE_PG_URL", "WINDPIPE_MARTS_URL",
                     "WINDPIPE_FTP_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "PGPASSWORD")


def admin_credentials(settings: Settings) -> tuple[str, str] | None:
    """(user, password) of the basic-auth admin (generated on first use, kept 0600); None without auth."""
    if settings.team.auth != "basic":
        return None
    return ADMIN, kept_secret(settings.paths.secret_file(ADMIN_PASSWORD))


def _auth_env(settings: Settings) -> dict[str, str]:
    credentials = admin_credentials(settings)
    if credentials is None:
        return {"WINDPIPE_AUTH": "none"}
    kept_secret(settings.paths.secret_file(FLASK_KEY))
    config = atomic_write_text(settings.paths.secret_file(AUTH_CONFIG), (
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {postgres.uri(settings, 'mlflow_auth')}\n"
        f"admin_username = {credentials[0]}\n"
        # read once, when the admin user is first made (later changes go through MLflow's API)
        f"admin_password = {credentials[1]}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # without it every request re-checks the password hash: about a second each here
        "auth_cache_ttl_seconds = 300\n"), mode=0o600)
    return {"WINDPIPE_AUTH": "basic", "MLFLOW_AUTH_CONFIG_PATH": str(config),
            "WINDPIPE_FLASK_SECRET_KEY_FILE": str(settings.paths.secret_file(FLASK_KEY))}


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE_PREFIXES)}


def _mlflow_env(settings: Settings) -> dict[str, str]:
    return {
        **_base_env(),
        **postgres.client_env(settings),
        **s3.server_env(settings),
        **_auth_env(settings),
        # the URI has no password (PGPASSFILE has it), or it is the user's WINDPIPE_PG_URL: environment, not argv
        "WINDPIPE_BACKEND_STORE_URI": postgres.uri(settings),
        "MLFLOW_ARTIFACTS_DESTINATION": s3.destination(settings),
        "WINDPIPE_HOST": settings.host,
        "WINDPIPE_MLFLOW_PORT": str(settings.mlflow_port),
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "PYTHONUNBUFFERED": "1",
    }


def mlflow_pid(settings: Settings) -> int | None:
    return owned_pid(settings.paths.pid_file(MLFLOW), settings.home)


def _check_mlflow(settings: Settings) -> str:
    uri = settings.local_tracking_uri
    probe_health(uri, timeout=3.0)
    probe_artifacts(uri, auth=admin_credentials(settings) or env_credentials(settings))
    return "health ok, artifact proxy ok"


def _check_marts(settings: Settings) -> str:
    """A query on the data marts, as their own login (the tables are made on first use)."""
    from windpipe.marts.queries import count_rows
    from windpipe.marts.tables import display_url, get_engine

    try:
        batches = count_rows(get_engine(settings=settings))["batches"]
    except WindpipeError:
        raise
    except Exception as exc:  # the server went away after the engine was made
        raise WindpipeError(f"The data marts at {display_url(settings.effective_marts_url)} do not answer a query "
                            f"({first_line(exc, 200)}).", "run `windpipe up`") from None
    return f"query ok ({batches} batches)"


def _parts(settings: Settings) -> list[tuple[str, str, Callable[[], int | None], Callable[[], str]]]:
    """(name, where, pid, check) of each part, in start order (the marts live in PostgreSQL)."""
    from windpipe.marts.tables import display_url

    return [
        (POSTGRES, postgres.display_uri(settings),
         lambda: None if settings.team.pg_url is not None else postgres.running_pid(settings),
         lambda: postgres.check(settings)),
        (MARTS, display_url(settings.effective_marts_url), lambda: None, lambda: _check_marts(settings)),
        (S3, f"{settings.s3_endpoint}/{settings.team.s3_bucket}",
         lambda: None if s3.external(settings) else s3.running_pid(settings), lambda: s3.check(settings)),
        (MLFLOW, settings.local_tracking_uri, lambda: mlflow_pid(settings), lambda: _check_mlflow(settings)),
    ]


def status(settings: Settings) -> list[ServiceState]:
    """Each part checked for real; a part that is down says why (and the tracking server, when only it fails)."""
    states = []
    for name, where, pid, check in _parts(settings):
        try:
            states.append(ServiceState(name, where, True, pid(), check()))
        except WindpipeError as exc:
            states.append(ServiceState(name, where, False, pid(), str(exc)))
    return states


def _require_free(settings: Settings, name: str, port: int, var: str) -> None:
    if not port_is_free(settings.host, port):
        raise WindpipeError(
            f"Port {port} on {settings.host} is taken by another program, so the {name} server cannot start.",
            f"stop that program, or choose another port with {var}=<port>")


def _prepare_home(settings: Settings) -> None:
    try:
        for folder in (settings.home, settings.paths.log_file(MLFLOW).parent, settings.paths.pid_file(MLFLOW).parent):
            folder.mkdir(parents=True, exist_ok=True)
        for folder in (settings.paths.log_file(MLFLOW).parent, settings.paths.pid_file(MLFLOW).parent):
            folder.chmod(0o700)
    except OSError as exc:
        raise WindpipeError(f"The state folder {settings.home} is not writable ({exc.strerror or exc}).",
                            "make it writable, or point WINDPIPE_HOME at a folder you own") from None


def up(settings: Settings, say: Callable[[str], None] = print) -> list[ServiceState]:
    """Start what is missing and wait until every part answers; on failure stop what this call started."""
    _prepare_home(settings)
    deadline = time.monotonic() + settings.startup_timeout
    started: list[str] = []
    try:
        _up(settings, say, deadline, started)
    except BaseException:
        _stop(settings, started, lambda _m: None)
        raise
    states = status(settings)
    for st in states:
        if not st.healthy:
            raise WindpipeError(f"{st.name} is not healthy: {st.detail}", "see `windpipe status`")
    for st in states:
        if st.name in started:
            say(f"{st.name}: up at {st.url}")
    return states


def _up(settings: Settings, say: Callable[[str], None], deadline: float, started: list[str]) -> None:
    def remaining() -> float:
        return max(deadline - time.monotonic(), 1.0)

    rclone = None
    if s3.external(settings):
        say(f"s3: using {settings.s3_endpoint} (bucket {settings.team.s3_bucket})")
    elif (rclone := s3.running_pid(settings)) is not None:
        say(f"s3: already running (pid {rclone})")
        rclone = None
    else:
        _require_free(settings, "S3", settings.team.s3_port, "WINDPIPE_S3_PORT")
        rclone = s3.start(settings, _base_env())
        started.append(S3)
        say(f"s3: starting (pid {rclone})")

    if settings.team.pg_url is not None:
        say(f"postgres: using {postgres.display_uri(settings)}")
    else:
        postgres.prepare(settings)
        if postgres.start(settings, remaining()):
            started.append(POSTGRES)
            say(f"postgres: started (pid {postgres.running_pid(settings)})")
        else:
            say(f"postgres: already running (pid {postgres.running_pid(settings)})")
        postgres.bootstrap(settings)
    postgres.check(settings)

    if rclone is None:  # running already, or not ours: it answers now or the settings are wrong
        s3.check(settings)
    else:
        s3_log = settings.paths.log_file(S3)
        wait_until(lambda: s3.check(settings), remaining(), "The S3 store", alive=lambda: pid_alive(rclone),
                   exited=lambda: WindpipeError(f"rclone exited while starting.{log_tail(s3_log, 5)}",
                                                f"see {s3_log}"),
                   fix=f"see {s3_log}")

    pid = mlflow_pid(settings)
    if pid is not None:
        say(f"mlflow: already running (pid {pid}) at {settings.local_tracking_uri}")
        return
    _require_free(settings, "MLflow", settings.mlflow_port, "WINDPIPE_MLFLOW_PORT")
    pid = start_detached([sys.executable, *MLFLOW_ARGV], _mlflow_env(settings),
                         settings.paths.log_file(MLFLOW), settings.paths.pid_file(MLFLOW), settings.home,
                         port=settings.mlflow_port, cwd=settings.home)
    started.append(MLFLOW)
    say(f"mlflow: starting (pid {pid})")
    log = settings.paths.log_file(MLFLOW)
    wait_until(lambda: _check_mlflow(settings), remaining(), "The mlflow server", alive=lambda: pid_alive(pid),
               exited=lambda: WindpipeError(f"The mlflow server exited while starting.{log_tail(log, 5)}",
                                            f"see {log}"),
               fix=f"see {log}")


def _stop(settings: Settings, names: list[str], say: Callable[[str], None]) -> None:
    for name in (MLFLOW, S3):
        if name not in names:
            continue
        pid = mlflow_pid(settings) if name == MLFLOW else s3.running_pid(settings)
        stop_service(name, pid, settings.paths.pid_file(name), say)
    if POSTGRES in names:
        pid = postgres.stop(settings)
        say(f"{POSTGRES}: stopped (pid {pid})" if pid else f"{POSTGRES}: not running")


def down(settings: Settings, say: Callable[[str], None] = print) -> None:
    """Stop the servers `up` started (and only those: an existing database or S3 service is left alone)."""
    names = [MLFLOW]
    if not s3.external(settings):
        names.append(S3)
    if settings.team.pg_url is None and postgres.data_dir(settings).exists():
        names.append(POSTGRES)
    _stop(settings, names, say)

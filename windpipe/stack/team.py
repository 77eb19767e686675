"""The team stack (`WINDPIPE_STACK=team`): PostgreSQL, an S3 store and the MLflow tracking server.

`services` defines its parts for `windpipe.stack.services` (`up`, `down`, `status`): `up` starts what
is missing (an existing database or S3 service named by settings is used as it is), `status` checks
each part for real (a query, a bucket listing, /health, an artifact listing through the tracking
server's proxy) and names the one that is down, `down` stops what `up` started. The tracking
server proxies artifacts, so clients hold no database password and no S3 key; with
`WINDPIPE_AUTH=basic` it runs MLflow's basic-auth app with a generated admin password.
"""

from __future__ import annotations

import os
import sys

from windpipe.errors import WindpipeError, first_line
from windpipe.fileio import atomic_write_text, kept_secret
from windpipe.settings import Settings
from windpipe.stack import postgres, s3
from windpipe.stack.procs import Service
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


def mlflow_service(settings: Settings) -> Service:
    """The team tracking server: PostgreSQL's tracking store, artifacts proxied to S3, optionally basic auth. It
    starts once PostgreSQL and S3 answer."""
    return Service(MLFLOW, settings.local_tracking_uri, lambda: _check_mlflow(settings), home=settings.home,
                   host=settings.host, port=settings.mlflow_port, command=lambda: [sys.executable, *MLFLOW_ARGV],
                   env=lambda: _mlflow_env(settings), cwd=settings.home,
                   port_fix="choose another port with WINDPIPE_MLFLOW_PORT=<port>", after_ready=True)


def mlflow_pid(settings: Settings) -> int | None:
    return mlflow_service(settings).pid()


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


def services(settings: Settings) -> list[Service]:
    """The team stack's parts in start order: the S3 store, PostgreSQL, the data marts (in PostgreSQL: only
    checked) and the tracking server. An existing database or S3 service named by settings is only checked."""
    from windpipe.marts.tables import display_url

    return [s3.service(settings, _base_env()), postgres.service(settings),
            Service(MARTS, display_url(settings.effective_marts_url), lambda: _check_marts(settings)),
            mlflow_service(settings)]


def prepare_home(settings: Settings) -> None:
    """The state folder with its logs/ and run/ (0700), or a message saying why it cannot be used."""
    try:
        for folder in (settings.home, settings.paths.log_file(MLFLOW).parent, settings.paths.pid_file(MLFLOW).parent):
            folder.mkdir(parents=True, exist_ok=True)
        for folder in (settings.paths.log_file(MLFLOW).parent, settings.paths.pid_file(MLFLOW).parent):
            folder.chmod(0o700)
    except OSError as exc:
        raise WindpipeError(f"The state folder {settings.home} is not writable ({exc.strerror or exc}).",
                            "make it writable, or point WINDPIPE_HOME at a folder you own") from None

"""Connecting to the tracking server, and the probes everything else uses.

`probe_health` asks `/health` (is the server there?), `probe_tracking_store` lists one experiment
(can it query its database?), `probe_artifacts` lists the artifact root through the server's proxy
(can it reach its artifact store?). Each answers in seconds with a message naming the part that is
down, where MLflow's own client would retry for minutes.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

from windpipe.errors import WindpipeError
from windpipe.settings import Settings, get_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient

UP_FIX = "run `windpipe up` (or set MLFLOW_TRACKING_URI to a server that runs)"


def is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


class ServerDown(WindpipeError):
    """The tracking server, or the artifact store behind it, does not answer (the message names which)."""


def probe_health(uri: str, timeout: float = 5.0) -> None:
    """Raise ServerDown unless the tracking server at `uri` answers /health with OK (non-HTTP URIs pass)."""
    if not is_http(uri):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as resp:
            body = resp.read().decode(errors="replace").strip()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServerDown(f"The MLflow tracking server at {uri} does not answer ({reason}).", UP_FIX) from None
    if body != "OK":
        raise ServerDown(f"The MLflow tracking server at {uri} answered /health with {body[:80]!r}.",
                         "check its log (`windpipe status` names it)")


def basic_auth_header(auth: tuple[str, str] | None) -> dict[str, str]:
    """The Authorization header for a basic-auth tracking server ({} without credentials)."""
    if auth is None:
        return {}
    import base64

    return {"Authorization": "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()}


def env_credentials(settings: Settings | None = None) -> tuple[str, str] | None:
    """MLFLOW_TRACKING_USERNAME / _PASSWORD (what MLflow's own client sends), when both are set."""
    settings = settings or get_settings()
    if settings.tracking_username and settings.tracking_password is not None:
        return settings.tracking_username, settings.tracking_password.get_secret_value()
    return None


def probe_artifacts(uri: str, timeout: float = 5.0, store: str | None = None,
                    auth: tuple[str, str] | None = None) -> None:
    """Raise ServerDown unless the server's artifact proxy can list its store (tracking server -> store).

    `store` names the store in the message (the local platform: "the FTP artifact server at ftp://...").
    `auth`: (user, password) for a basic-auth server; default: the MLFLOW_TRACKING_* credentials.
    """
    _probe(uri, "/api/2.0/mlflow-artifacts/artifacts", "reach its artifact store", store, timeout, auth)


def probe_tracking_store(uri: str, timeout: float = 5.0, store: str | None = None,
                         auth: tuple[str, str] | None = None) -> None:
    """Raise ServerDown unless the server can read its tracking store (one experiment listed: a query).

    /health answers without the database: a tracking server whose PostgreSQL died still says OK there.
    """
    _probe(uri, "/api/2.0/mlflow/experiments/search?max_results=1", "read its tracking store", store, timeout, auth)


def _probe(uri: str, path: str, what: str, store: str | None, timeout: float, auth: tuple[str, str] | None) -> None:
    if not is_http(uri):
        return
    request = urllib.request.Request(f"{uri.rstrip('/')}{path}", headers=basic_auth_header(auth or env_credentials()))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise WindpipeError(f"The MLflow tracking server at {uri} asks for a login (HTTP 401): set "
                                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD.",
                                "`windpipe env` prints them on the server's machine") from None
        lead = f"{store[0].upper()}{store[1:]} does not answer: the" if store else "The"
        raise ServerDown(f"{lead} MLflow tracking server at {uri} cannot {what} (HTTP {exc.code}).",
                         "run `windpipe up` (it restarts what is down; `windpipe status` names it)") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServerDown(f"The MLflow tracking server at {uri} does not answer ({reason}).", UP_FIX) from None


def _own_server(settings: Settings) -> bool:
    """Whether the tracking server is the one `windpipe up` runs (so windpipe knows what stands behind it)."""
    return settings.effective_tracking_uri == settings.local_tracking_uri


def artifact_store_name(settings: Settings) -> str | None:
    """How messages name the artifact store: the local stack's FTP server, the team stack's S3 store
    (None: another server's own store)."""
    if not _own_server(settings):
        return None
    if settings.stack == "team":
        return f"the S3 store at {settings.s3_endpoint}"
    return f"the FTP artifact server at ftp://{settings.host}:{settings.ftp_port}"


def tracking_store_name(settings: Settings) -> str | None:
    """How messages name the tracking store: the team stack's PostgreSQL server (None: SQLite inside the
    local stack's server, or another server's own database)."""
    if not (_own_server(settings) and settings.stack == "team"):
        return None
    if settings.team.pg_url is not None:
        from sqlalchemy.engine import make_url

        url = make_url(settings.team.pg_url.get_secret_value())
        return f"the PostgreSQL server of the tracking store at {url.host}:{url.port or 5432}"
    return f"the PostgreSQL server of the tracking store at {settings.host}:{settings.team.pg_port}"


def diagnose(settings: Settings | None = None) -> ServerDown | None:
    """Which server is down, found within seconds (no MLflow retry loop): the tracking server, the
    database behind it, or its artifact store. None when all answer."""
    settings = settings or get_settings()
    uri = settings.effective_tracking_uri
    try:
        probe_health(uri, timeout=3.0)
        probe_tracking_store(uri, timeout=5.0, store=tracking_store_name(settings))
        probe_artifacts(uri, timeout=5.0, store=artifact_store_name(settings))
    except ServerDown as exc:
        return exc
    return None


def connect(settings: Settings | None = None, experiment: bool = True) -> str:
    """Point MLflow's fluent API (mlflow.start_run, log_*) at the configured tracking server after checking that
    it answers: for a step's process, which makes runs. A server (the dashboard, `windpipe serve`) never calls it:
    it passes the URI to each client (`mlflow_client`).

    Returns the tracking URI. Raises WindpipeError (with `windpipe up` as the fix) when an
    http(s) server does not answer, instead of MLflow's long retry loop.
    """
    settings = settings or get_settings()
    os.environ.update(settings.process_environment())  # bounded retries, no telemetry (before MLflow's import)
    import mlflow

    uri = settings.effective_tracking_uri
    probe_health(uri)
    mlflow.set_tracking_uri(uri)
    # under `mlflow run` the run exists already, in the experiment the caller chose
    if experiment and not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(settings.experiment)
    return uri


def mlflow_client(settings: Settings | None = None) -> MlflowClient:
    """The one way windpipe makes an MlflowClient: on the configured tracking server, its URI passed explicitly.

    Never MLflow's process-wide default (`mlflow.set_tracking_uri` changes it for every thread, and exports
    MLFLOW_TRACKING_URI to every later subprocess; without any, MLflow 3 writes ./mlflow.db).
    """
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=(settings or get_settings()).effective_tracking_uri)


def client(settings: Settings | None = None) -> MlflowClient:
    """`mlflow_client`, after checking that the server answers (instead of MLflow's long retry loop)."""
    settings = settings or get_settings()
    probe_health(settings.effective_tracking_uri)
    return mlflow_client(settings)

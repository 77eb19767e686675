"""The local platform: the FTP artifact server and the MLflow tracking server on SQLite.

`up` starts both detached and waits until they answer, `down` stops what `up` started
(pid files in the state folder), `status` checks both for real (an FTP login, the
tracking server's /health and an artifact listing through its proxy).
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from windpipe import ftp_server
from windpipe.errors import WindpipeError
from windpipe.procs import pid_alive, port_is_free, read_pid, start_detached, stop_pid
from windpipe.settings import Settings

FTP = "ftp"
MLFLOW = "mlflow"


@dataclass(frozen=True)
class ServiceState:
    name: str
    url: str
    healthy: bool
    pid: int | None
    detail: str


def state_paths(settings: Settings, name: str) -> tuple[Path, Path]:
    """(pid file, log file) of a service."""
    return settings.home / "run" / f"{name}.pid", settings.home / "logs" / f"{name}.log"


def backend_store_uri(settings: Settings) -> str:
    return f"sqlite:///{settings.home.resolve() / 'mlflow.db'}"


def _marker(name: str) -> tuple[str, ...]:
    """What our servers' command lines contain (either MLflow launcher)."""
    return ("windpipe.ftp_server",) if name == FTP else ("windpipe.tracking_server", "mlflow server")


def ensure_state_folder(settings: Settings) -> Path:
    """Create the state folder (FTP root, logs, pid files) or say why it cannot be used."""
    home = settings.home
    try:
        for sub in ("ftp/artifacts", "logs", "run"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        probe = home / "run" / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise WindpipeError(
            f"The state folder {home} is not writable ({exc.strerror or exc}).",
            "make it writable, or point WINDPIPE_HOME at a folder you own",
        ) from None
    return home


def _url(settings: Settings, name: str) -> str:
    if name == FTP:
        return f"ftp://{settings.host}:{settings.ftp_port}"
    return settings.local_tracking_uri


def _check_ftp(settings: Settings) -> str:
    ftp_server.check_login(settings, ftp_server.ftp_password(settings))
    return "login ok"


def _check_mlflow(settings: Settings, timeout: float = 3.0) -> str:
    base = settings.local_tracking_uri
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=timeout) as resp:
            body = resp.read().decode(errors="replace").strip()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WindpipeError(f"MLflow tracking server at {base} does not answer ({reason}).",
                            "run `windpipe up`") from None
    if body != "OK":
        raise WindpipeError(f"MLflow tracking server at {base} answered /health with {body!r}.",
                            f"look at {state_paths(settings, MLFLOW)[1]}")
    return "health ok"


def _check_artifact_proxy(settings: Settings, timeout: float = 5.0) -> str:
    # listing the root goes tracking server -> FTP, so it proves the whole artifact path
    url = f"{settings.local_tracking_uri}/api/2.0/mlflow-artifacts/artifacts"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        raise WindpipeError(
            f"MLflow tracking server cannot reach its FTP artifact store (HTTP {exc.code}).",
            "run `windpipe status` to see whether the FTP server is down, then `windpipe up`",
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        raise WindpipeError(f"MLflow artifact proxy does not answer ({exc}).", "run `windpipe up`") from None
    return "artifact proxy ok"


def service_state(settings: Settings, name: str) -> ServiceState:
    """Check one service for real."""
    pid_file, _ = state_paths(settings, name)
    pid = read_pid(pid_file, _marker(name))
    try:
        if name == FTP:
            detail = _check_ftp(settings)
        else:
            detail = _check_mlflow(settings)
            if status_ok(settings, FTP):
                detail += ", " + _check_artifact_proxy(settings)
        return ServiceState(name, _url(settings, name), True, pid, detail)
    except WindpipeError as exc:
        if pid is None and not port_is_free(settings.host, _port(settings, name)):
            detail = f"{exc}\n  note: the port is held by a program windpipe did not start"
        else:
            detail = str(exc)
        return ServiceState(name, _url(settings, name), False, pid, detail)


def status_ok(settings: Settings, name: str) -> bool:
    try:
        (_check_ftp if name == FTP else _check_mlflow)(settings)
    except WindpipeError:
        return False
    return True


def status(settings: Settings) -> list[ServiceState]:
    return [service_state(settings, FTP), service_state(settings, MLFLOW)]


def _port(settings: Settings, name: str) -> int:
    return settings.ftp_port if name == FTP else settings.mlflow_port


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
        "MLFLOW_ARTIFACTS_DESTINATION": ftp_server.artifact_destination(settings, password),
        "WINDPIPE_MLFLOW_PORT": str(settings.mlflow_port),
        "WINDPIPE_BACKEND_STORE_URI": backend_store_uri(settings),
        "PYTHONUNBUFFERED": "1",
    })
    return env


def _command(settings: Settings, name: str) -> list[str]:
    if name == FTP:
        return [sys.executable, "-m", "windpipe.ftp_server"]
    if settings.mlflow_launcher == "fast":
        return [sys.executable, "-m", "windpipe.tracking_server"]
    return [
        sys.executable, "-m", "mlflow", "server",
        "--host", settings.host, "--port", str(settings.mlflow_port),
        "--backend-store-uri", backend_store_uri(settings),
        "--serve-artifacts", "--workers", str(settings.mlflow_workers),
    ]


def _start(settings: Settings, name: str, env: dict[str, str]) -> int:
    pid_file, log_file = state_paths(settings, name)
    port = _port(settings, name)
    if not port_is_free(settings.host, port):
        var = "WINDPIPE_FTP_PORT" if name == FTP else "WINDPIPE_MLFLOW_PORT"
        raise WindpipeError(
            f"Port {port} on {settings.host} is taken by another program, so the {name} server cannot start.",
            f"stop that program, or choose another port with {var}=<port>",
        )
    return start_detached(_command(settings, name), env, log_file, pid_file, cwd=settings.home)


def _wait_healthy(settings: Settings, name: str, pid: int, deadline: float) -> None:
    check = _check_ftp if name == FTP else _check_mlflow
    _, log_file = state_paths(settings, name)
    last: WindpipeError | None = None
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-5:]) if log_file.exists() else ""
            raise WindpipeError(f"The {name} server exited while starting. Last log lines:\n{tail}",
                                f"see {log_file}")
        try:
            check(settings)
            return
        except WindpipeError as exc:
            last = exc
            time.sleep(0.2)
    raise WindpipeError(f"The {name} server did not become healthy in {settings.startup_timeout:.0f} s ({last}).",
                        f"see {log_file}")


def up(settings: Settings, say: Callable[[str], None] = print) -> list[ServiceState]:
    """Start whatever is not running, wait until both answer. Running services are left alone."""
    ensure_state_folder(settings)
    password = ftp_server.ftp_password(settings, create=True)
    env = _server_env(settings, password)
    deadline = time.monotonic() + settings.startup_timeout
    started: dict[str, int] = {}
    for name in (FTP, MLFLOW):
        pid = read_pid(state_paths(settings, name)[0], _marker(name))
        if pid is not None:
            if name == FTP:
                _check_ftp(settings)  # a running server with another password is an error, not "ok"
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
        if st.name in started:
            say(f"{st.name}: up at {st.url}")
    return states


def down(settings: Settings, say: Callable[[str], None] = print) -> None:
    """Stop the servers `up` started (and only those)."""
    for name in (MLFLOW, FTP):
        pid_file, _ = state_paths(settings, name)
        pid = read_pid(pid_file, _marker(name))
        if pid is None:
            say(f"{name}: not running")
        else:
            stop_pid(pid)
            say(f"{name}: stopped (pid {pid})")
        pid_file.unlink(missing_ok=True)

"""`windpipe lab`: JupyterLab for the workshop notebooks, started detached and pointed at the platform.

- bound to 127.0.0.1 (`WINDPIPE_HOST`) on `WINDPIPE_LAB_PORT` (8888), its root the repository, so
  `1_starting_point/`, `2_tracked/` and `notebooks/` open as they are and each kernel starts in its
  notebook's folder (the relative paths the notebooks use);
- a generated token kept in the state folder with mode 0600 (`lab_token`); the server reads it from that
  file (`JUPYTER_TOKEN_FILE`), so it is never on a command line and Jupyter logs it as `...`;
- `MLFLOW_TRACKING_URI` and `MLFLOW_EXPERIMENT_NAME` set for the platform in every kernel's environment;
- a pid file and a log like the other services; Jupyter's runtime files (they hold the token) in a 0700
  folder of the state folder.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from windpipe.errors import WindpipeError
from windpipe.fileio import kept_secret
from windpipe.identity import pid_alive
from windpipe.settings import Settings, repo_root
from windpipe.stack.procs import log_tail, owned_pid, port_is_free, start_detached, stop_pid, wait_until
from windpipe.stack.services import ServiceState
from windpipe.tracking.client import probe_health
from windpipe.tracking.output import user_environment

SERVICE = "lab"
MARKER = "jupyterlab"  # `python -m jupyterlab ...`
TOKEN_FILE = "lab_token"


def base_url(settings: Settings, port: int | None = None) -> str:
    return f"http://{settings.host}:{port or settings.lab_port}"


def token(settings: Settings) -> str:
    """The lab's token: generated on first use, kept (mode 0600) in the state folder."""
    return kept_secret(settings.paths.secret_file(TOKEN_FILE))


def runtime_dir(settings: Settings) -> Path:
    """Jupyter's runtime files (server info and the log-in page, which hold the token): a 0700 folder."""
    return settings.paths.run_file("jupyter")


def running_pid(settings: Settings) -> int | None:
    return owned_pid(settings.paths.pid_file(SERVICE), settings.home)


def lab_env(settings: Settings) -> dict[str, str]:
    """The server's environment, which every kernel inherits: the platform, the experiment, this venv first."""
    env = {k: v for k, v in user_environment().items()
           if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID", "JUPYTER_TOKEN")}  # the platform's, not ours
    env.update({
        "MLFLOW_TRACKING_URI": settings.effective_tracking_uri,
        "MLFLOW_EXPERIMENT_NAME": settings.experiment,
        "WINDPIPE_HOME": str(settings.home.resolve()),
        "JUPYTER_TOKEN_FILE": str(settings.paths.secret_file(TOKEN_FILE).resolve()),
        "JUPYTER_RUNTIME_DIR": str(runtime_dir(settings).resolve()),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
    })
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # fewer of TensorFlow's C++ lines in the notebooks
    return env


def command(settings: Settings, port: int) -> list[str]:
    argv = [sys.executable, "-m", MARKER, "--no-browser", f"--ServerApp.ip={settings.host}",
            f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={repo_root()}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # containers and CI run as root; Jupyter refuses without it
        argv.append("--allow-root")
    return argv


def check(base: str, secret: str, timeout: float = 3.0) -> dict:
    """Raise WindpipeError unless the lab at `base` answers its API with this token; return /api/status."""
    req = urllib.request.Request(f"{base}/api/status", headers={"Authorization": f"token {secret}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise WindpipeError(f"JupyterLab at {base} refused the token (HTTP {exc.code}).",
                            "stop it (`windpipe lab --stop`) and start it again") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise WindpipeError(f"JupyterLab at {base} does not answer ({getattr(exc, 'reason', exc)}).",
                            "start it: `windpipe lab`") from None


def start(settings: Settings, port: int | None = None) -> tuple[int, str]:
    """Start JupyterLab detached (idempotent) and wait until its API answers; return (pid, url)."""
    pid = running_pid(settings)
    if pid is not None:
        return pid, _recorded_url(settings) or f"{base_url(settings, port)}/lab"
    port = port or settings.lab_port
    base = base_url(settings, port)
    try:
        probe_health(settings.effective_tracking_uri)
    except WindpipeError as exc:
        raise WindpipeError(f"JupyterLab needs the tracking server, for the notebooks to log to: {exc.problem}",
                            exc.fix) from None
    if not port_is_free(settings.host, port):
        raise WindpipeError(f"Port {port} on {settings.host} is taken, so JupyterLab cannot start.",
                            "stop what holds it, or choose another port: windpipe lab --port <port> "
                            "(or WINDPIPE_LAB_PORT=<port>)")
    secret = token(settings)
    runtime_dir(settings).mkdir(parents=True, exist_ok=True, mode=0o700)
    runtime_dir(settings).chmod(0o700)
    log = settings.paths.log_file(SERVICE)
    pid = start_detached(command(settings, port), lab_env(settings), log, settings.paths.pid_file(SERVICE),
                         settings.home, port=port, cwd=repo_root())
    settings.paths.run_file("lab.url").write_text(f"{base}/lab\n")
    try:
        wait_until(lambda: check(base, secret), max(settings.startup_timeout, 90.0), "JupyterLab",
                   alive=lambda: pid_alive(pid),
                   exited=lambda: WindpipeError(f"JupyterLab exited while starting.{log_tail(log, 5)}", f"see {log}"),
                   fix=f"see {log}")
    except BaseException:
        stop_pid(pid)
        settings.paths.pid_file(SERVICE).unlink(missing_ok=True)
        raise
    page = login_page(settings, pid)
    if page is not None:
        page.chmod(0o600)  # it holds the token (Jupyter writes it with the umask's mode)
    return pid, f"{base}/lab"


def login_page(settings: Settings, pid: int) -> Path | None:
    """The page Jupyter writes that logs a browser in (file://...), when it exists."""
    page = runtime_dir(settings) / f"jpserver-{pid}-open.html"
    return page if page.exists() else None


def _recorded_url(settings: Settings) -> str | None:
    try:
        return settings.paths.run_file("lab.url").read_text().strip() or None
    except OSError:
        return None


def stop(settings: Settings) -> int | None:
    """Stop the lab `start` started; return its pid, or None when none was running."""
    pid = running_pid(settings)
    if pid is not None:
        stop_pid(pid)
    settings.paths.pid_file(SERVICE).unlink(missing_ok=True)
    return pid


def state(settings: Settings) -> ServiceState | None:
    """The lab for `windpipe status`: None when it does not run."""
    pid = running_pid(settings)
    if pid is None:
        return None
    url = _recorded_url(settings) or f"{base_url(settings)}/lab"
    try:
        info = check(url.removesuffix("/lab"), token(settings))
    except WindpipeError as exc:
        return ServiceState(SERVICE, url, False, pid, str(exc))
    return ServiceState(SERVICE, url, True, pid, f"api ok, {info.get('kernels', 0)} kernel(s)")

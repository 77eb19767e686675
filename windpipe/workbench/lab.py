"""`windpipe lab`: JupyterLab for the workshop notebooks, started detached and pointed at the platform.

- bound to 127.0.0.1 (`WINDPIPE_HOST`) on `WINDPIPE_LAB_PORT` (8888), its root the repository, so
  `1_starting_point/`, `2_tracked/` and `notebooks/` open as they are and each kernel starts in its
  notebook's folder (the relative paths the notebooks use);
- a generated token kept in the state folder with mode 0600 (`lab_token`); the server reads it from that
  file (`JUPYTER_TOKEN_FILE`), so it is never on a command line and Jupyter logs it as `...`;
- `MLFLOW_TRACKING_URI` and `MLFLOW_EXPERIMENT_NAME` set for the platform in every kernel's environment;
- a `windpipe.stack.procs.Service` like the other servers (a pid file, a log, `windpipe status` lists it while
  it runs); Jupyter's runtime files (they hold the token) in a 0700 folder of the state folder.
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
from windpipe.settings import Settings, repo_root
from windpipe.stack.procs import Say, Service, quiet, recorded_address
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


def service(settings: Settings, port: int | None = None) -> Service:
    """JupyterLab on 127.0.0.1:`port` (default: the port it runs on, else WINDPIPE_LAB_PORT), checked through its
    API with the token."""
    port = port or recorded_address(settings.paths.pid_file(SERVICE))[1] or settings.lab_port
    base = base_url(settings, port)

    def check_api() -> str:
        info = check(base, token(settings))
        return f"api ok, {info.get('kernels', 0)} kernel(s)"

    def prepare() -> None:
        token(settings)
        runtime_dir(settings).mkdir(parents=True, exist_ok=True, mode=0o700)
        runtime_dir(settings).chmod(0o700)

    return Service(SERVICE, f"{base}/lab", check_api, home=settings.home, host=settings.host, port=port,
                   command=lambda: command(settings, port), env=lambda: lab_env(settings), prepare=prepare,
                   cwd=repo_root(), title="JupyterLab", timeout=max(settings.startup_timeout, 90.0),
                   port_fix="choose another port: windpipe lab --port <port> (or WINDPIPE_LAB_PORT=<port>)")


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
    svc = service(settings, port)
    pid = svc.pid()
    if pid is not None:
        return pid, svc.running_url()
    try:
        probe_health(settings.effective_tracking_uri)
    except WindpipeError as exc:
        raise WindpipeError(f"JupyterLab needs the tracking server, for the notebooks to log to: {exc.problem}",
                            exc.fix) from None
    pid = svc.start()
    page = login_page(settings, pid)
    if page is not None:
        page.chmod(0o600)  # it holds the token (Jupyter writes it with the umask's mode)
    return pid, svc.url


def login_page(settings: Settings, pid: int) -> Path | None:
    """The page Jupyter writes that logs a browser in (file://...), when it exists."""
    page = runtime_dir(settings) / f"jpserver-{pid}-open.html"
    return page if page.exists() else None


def stop(settings: Settings, say: Say = quiet) -> int | None:
    """Stop the lab `start` started, saying so; return its pid, or None when none was running."""
    return service(settings).stop(say)

"""Apache Airflow 3 on this machine: its API server (UI + REST), scheduler and DAG processor.

Airflow runs from its own environment (`make airflow`, Settings.airflow_venv), with its state in
<home>/airflow (airflow.cfg, SQLite, task logs), bound to 127.0.0.1, and the DAG folder of this
checkout (orchestration/airflow/dags). Its tasks run the main environment's `windpipe` by path and
reach the same MLflow tracking server. The admin password is generated before the first start and
kept in <home>/airflow_passwords.json (mode 0600): Airflow prints a password only for a user
missing from that file, so it never appears in a log.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from windpipe.errors import WindpipeError, first_line
from windpipe.fileio import atomic_write_text
from windpipe.identity import pid_alive
from windpipe.settings import TELEMETRY_OFF, Settings
from windpipe.stack.procs import Service, ServiceState, log_tail, stop_pid, wait_until
from windpipe.tracking.client import ServerDown, probe_artifacts

SERVICES = ("api-server", "scheduler", "dag-processor")
USER = "admin"
# the scheduler serves task logs on 0.0.0.0:8793 unless told not to; LocalExecutor writes them where the API
# server reads them anyway
ARGS = {"api-server": [], "scheduler": ["--skip-serve-logs"], "dag-processor": []}
# what Airflow's health endpoint calls each service
COMPONENTS = {"api-server": "metadatabase", "scheduler": "scheduler", "dag-processor": "dag_processor"}
READY_TIMEOUT = 300.0  # a first start migrates the database and builds the UI (40-70 s on a busy 2-core machine)
MAKE_FIX = "run `make airflow` (Airflow's own environment, .venv-airflow)"
STATUS_FIX = "check `windpipe airflow status`"


def airflow_bin(settings: Settings) -> Path:
    return settings.airflow_venv / "bin" / "airflow"


def password_file(settings: Settings) -> Path:
    return settings.paths.secret_file("airflow_passwords.json")


def admin_password(settings: Settings, create: bool = False) -> str:
    """The generated admin password (created with mode 0600 when `create`)."""
    path = password_file(settings)
    if not path.exists() and create:
        atomic_write_text(path, json.dumps({USER: secrets.token_urlsafe(24)}), mode=0o600)
    try:
        return str(json.loads(path.read_text())[USER])
    except (OSError, ValueError, KeyError):
        raise WindpipeError(f"Airflow's password file {path} is missing or unreadable.",
                            "run `windpipe airflow up` (it writes one), or delete the broken file") from None


def airflow_env(settings: Settings, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of Airflow's processes (and so of its tasks): Airflow's settings, and windpipe's.

    The caller's own environment goes with it: the stack's settings (WINDPIPE_STACK, ports) and a
    basic-auth login (MLFLOW_TRACKING_USERNAME / _PASSWORD) reach every task this way, never on a
    command line.
    """
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("AIRFLOW")}
    env.update({
        "AIRFLOW_HOME": str(settings.paths.airflow_home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(settings.dags_dir),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",  # LocalExecutor forks this many workers up front (default 32)
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(password_file(settings)),
        # a DAG file that cannot be built shows windpipe's message (problem and fix), not a traceback
        "AIRFLOW__CORE__DAGBAG_IMPORT_ERROR_TRACEBACKS": "False",
        "AIRFLOW__API__HOST": settings.host,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        # the task runners call the execution API at base_url: it must name this port (default :8080)
        "AIRFLOW__API__BASE_URL": settings.airflow_url,
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "10",
        # the tasks: the main environment's windpipe, the same state folder and tracking server
        "WINDPIPE_BIN_DIR": str(settings.bin_dir or Path(sys.executable).parent),
        "WINDPIPE_HOME": str(settings.home.resolve()),
        "MLFLOW_TRACKING_URI": settings.effective_tracking_uri,
        **TELEMETRY_OFF,
        "PYTHONWARNINGS": "ignore",
    })
    return env


def check_login(env: dict[str, str]) -> None:
    """Stop before anything starts when the tracking server refuses the login Airflow's tasks would send (the
    MLFLOW_TRACKING_USERNAME / _PASSWORD of `env`, which they inherit), instead of every task failing on HTTP
    401. A server that does not answer now is no reason to stop: the tasks say so when they run."""
    user, password = env.get("MLFLOW_TRACKING_USERNAME"), env.get("MLFLOW_TRACKING_PASSWORD")
    try:
        probe_artifacts(env["MLFLOW_TRACKING_URI"], auth=(user, password) if user and password else None)
    except ServerDown:
        return
    except WindpipeError as exc:
        raise WindpipeError(f"Airflow's tasks could not log in to the tracking server: {exc.problem}",
                            'export the login first (`eval "$(windpipe env)"` on the tracking server\'s machine), '
                            "then `windpipe airflow up`") from None


def service(settings: Settings, name: str) -> Service:
    """One of Airflow's services (SERVICES) as windpipe starts it: pid file and log `airflow-<name>`. Airflow's
    own health endpoint says how they are (`status`)."""
    return Service(f"airflow-{name}", settings.airflow_url, lambda: _component(settings, name), home=settings.home,
                   host=settings.host, port=settings.airflow_port if name == "api-server" else None,
                   command=lambda: [str(airflow_bin(settings)), name, *ARGS[name]], env=lambda: airflow_env(settings),
                   cwd=settings.paths.airflow_home, title="Airflow's API server" if name == "api-server" else
                   f"Airflow's {name}", port_fix="choose another port with WINDPIPE_AIRFLOW_PORT=<port>")


def _pid(settings: Settings, name: str) -> int | None:
    return service(settings, name).pid()


def _component(settings: Settings, name: str) -> str:
    state = health(settings).get(COMPONENTS[name], "")
    if state != "healthy":
        raise WindpipeError(f"Airflow's {name} is {state or 'not running'}.", STATUS_FIX)
    return state


def health(settings: Settings, timeout: float = 3.0) -> dict[str, str]:
    """component -> status from the API server's unauthenticated /api/v2/monitor/health."""
    url = f"{settings.airflow_url}/api/v2/monitor/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise WindpipeError(f"Airflow's API server at {settings.airflow_url} does not answer "
                            f"({first_line(getattr(exc, 'reason', exc))}).", "run `windpipe airflow up`") from None
    return {k: str((v or {}).get("status")) for k, v in data.items() if isinstance(v, dict | type(None))}


def _answers(settings: Settings) -> None:
    try:
        urllib.request.urlopen(f"{settings.airflow_url}/api/v2/version", timeout=3).read()
    except (urllib.error.URLError, OSError) as exc:
        raise WindpipeError(f"Airflow's API server does not answer yet ({first_line(exc)}).") from None


def _ready(settings: Settings) -> None:
    found = health(settings)
    sick = [k for k in ("metadatabase", "scheduler", "dag_processor") if found.get(k) != "healthy"]
    if sick:
        raise WindpipeError(f"Airflow is not healthy yet: {', '.join(f'{k} {found.get(k)}' for k in sick)}.")


def _migrate(settings: Settings, env: dict[str, str]) -> None:
    log = settings.paths.log_file("airflow-db-migrate")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.run([str(airflow_bin(settings)), "db", "migrate"], env=env, stdout=out,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=900, check=False)
    if proc.returncode != 0:
        raise WindpipeError(f"`airflow db migrate` failed (exit {proc.returncode}).{log_tail(log, 8)}", f"see {log}")


def up(settings: Settings, say: Callable[[str], None] = print) -> list[ServiceState]:
    """Start the services that do not run yet, wait until Airflow is healthy and its execution API warm."""
    if not airflow_bin(settings).exists():
        raise WindpipeError(f"Airflow's environment {settings.airflow_venv} is missing.", MAKE_FIX)
    env = airflow_env(settings)
    missing = [s for s in SERVICES if _pid(settings, s) is None]
    if missing:
        check_login(env)
    if "api-server" in missing:
        service(settings, "api-server").require_port()
    settings.paths.airflow_home.mkdir(parents=True, exist_ok=True)
    admin_password(settings, create=True)
    if missing:
        say("airflow: migrating its database ...")
        _migrate(settings, env)  # creates airflow.cfg (its secrets, mode 0600) before the services share it
    started = {}
    timeout = max(settings.startup_timeout, READY_TIMEOUT)
    for name in SERVICES:  # the API server first: every task calls its execution API
        pid = _pid(settings, name)
        if pid is not None:
            say(f"airflow {name}: already running (pid {pid})")
            continue
        started[name] = service(settings, name).launch()
        say(f"airflow {name}: starting (pid {started[name]})")
        if name == "api-server":
            wait_until(lambda: _answers(settings), timeout, "Airflow's API server",
                       alive=lambda: pid_alive(started["api-server"]), exited=lambda: _exited(settings, started),
                       fix=f"see {settings.paths.log_file('airflow-api-server')}")
            # its first request to the execution API builds it (8-18 s): pay it before any task runs
            try:
                urllib.request.urlopen(f"{settings.airflow_url}/execution/health", timeout=timeout).read()
            except (urllib.error.URLError, OSError):
                pass  # (only a warm-up)
    wait_until(lambda: _ready(settings), timeout, "Airflow", alive=lambda: all(pid_alive(p) for p in started.values()),
               exited=lambda: _exited(settings, started),
               fix=f"see {settings.paths.log_file('airflow-scheduler').parent}")
    say(f"airflow: up at {settings.airflow_url} (user {USER}, password in {password_file(settings)})")
    return status(settings)


def _exited(settings: Settings, started: dict[str, int]) -> WindpipeError:
    name = next((n for n, p in started.items() if not pid_alive(p)), "a service")
    log = settings.paths.log_file(f"airflow-{name}")
    return WindpipeError(f"Airflow's {name} exited while starting.{log_tail(log, 8)}", f"see {log}")


def down(settings: Settings, say: Callable[[str], None] = print) -> None:
    """Stop the services `up` started (all at once: the API server alone takes ~10 s to stop)."""
    pids = {name: pid for name in SERVICES if (pid := _pid(settings, name)) is not None}
    for pid in pids.values():
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    for name, pid in pids.items():
        stop_pid(pid, timeout=30.0)
        service(settings, name).pid_file.unlink(missing_ok=True)
        say(f"airflow {name}: stopped (pid {pid})")
    if not pids:
        say("airflow: not running")


def status(settings: Settings) -> list[ServiceState]:
    """Each service: its pid and what the health endpoint says of it."""
    try:
        found = health(settings)
        problem = ""
    except WindpipeError as exc:
        found, problem = {}, exc.problem
    out = []
    for name in SERVICES:
        pid = _pid(settings, name)
        state = found.get(COMPONENTS[name], "")
        ok = pid is not None and state == "healthy"
        detail = problem if name == "api-server" and problem else (state or "not running") + (
            f" ({settings.airflow_url})" if name == "api-server" else "")
        out.append(ServiceState(name, settings.airflow_url, ok, pid, detail))
    return out


def wait_for_dag(settings: Settings, dag_id: str, token: str, timeout: float = 120.0) -> None:
    """Wait until the DAG processor has parsed `dag_id` (the UI and the REST API know it)."""
    def known() -> None:
        req = urllib.request.Request(f"{settings.airflow_url}/api/v2/dags/{dag_id}",
                                     headers={"Authorization": f"Bearer {token}"})
        try:
            urllib.request.urlopen(req, timeout=5).read()
        except (urllib.error.URLError, OSError) as exc:
            raise WindpipeError(f"Airflow does not know the DAG {dag_id} yet ({first_line(exc)}).") from None

    wait_until(known, timeout, f"The DAG {dag_id}", interval=1.0)


def token(settings: Settings) -> str:
    """A JWT for Airflow's REST API (and the UI's `_token` cookie), from the generated admin password."""
    body = json.dumps({"username": USER, "password": admin_password(settings)}).encode()
    req = urllib.request.Request(f"{settings.airflow_url}/auth/token", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return str(json.loads(resp.read())["access_token"])
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        raise WindpipeError(f"Airflow refused a token ({first_line(exc)}).", STATUS_FIX) from None


def trigger(settings: Settings, dag_id: str, conf: dict[str, object], token_: str) -> str:
    """Trigger a DAG run through the REST API; return its run id."""
    body = json.dumps({"logical_date": None, "conf": conf}).encode()
    req = urllib.request.Request(f"{settings.airflow_url}/api/v2/dags/{dag_id}/dagRuns", data=body,
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {token_}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return str(json.loads(resp.read())["dag_run_id"])
    except urllib.error.HTTPError as exc:
        raise WindpipeError(f"Airflow refused to trigger {dag_id} (HTTP {exc.code}: "
                            f"{exc.read()[:300].decode(errors='replace')}).", "check the DAG id and the conf") from None
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        raise WindpipeError(f"Cannot trigger {dag_id} ({first_line(exc)}).", STATUS_FIX) from None


def run_state(settings: Settings, dag_id: str, run_id: str, token_: str) -> str:
    """queued, running, success or failed."""
    from urllib.parse import quote

    req = urllib.request.Request(f"{settings.airflow_url}/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}",
                                 headers={"Authorization": f"Bearer {token_}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return str(json.loads(resp.read())["state"])


def wait_for_run(settings: Settings, dag_id: str, run_id: str, token_: str, timeout: float = 1800.0) -> str:
    """Poll a DAG run until it succeeds or fails; return the final state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = run_state(settings, dag_id, run_id, token_)
        if state in ("success", "failed"):
            return state
        time.sleep(2.0)
    raise WindpipeError(f"The DAG run {dag_id} {run_id} did not finish in {timeout:.0f} s.",
                        f"look at it in the Airflow UI ({settings.airflow_url})")

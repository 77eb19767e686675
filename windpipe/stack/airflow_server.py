"""Apache Airflow 3 on this machine: its API server (UI + REST), scheduler and DAG processor; or a remote worker.

Airflow runs from its own environment (`make airflow`, Settings.airflow_venv), with its state in
<home>/airflow (airflow.cfg, SQLite, task logs), bound to 127.0.0.1, and the DAG folder of this
checkout (orchestration/airflow/dags). Its tasks run the main environment's `windpipe` by path and
reach the same MLflow tracking server. The admin password is generated before the first start and
kept in <home>/airflow_passwords.json (mode 0600): Airflow prints a password only for a user
missing from that file, so it never appears in a log.

With `--executor edge` the tasks run on remote workers instead (Airflow's EdgeExecutor: workers poll
the API server over HTTP, docs/orchestration.md "Past one machine"): the API server serves the
workers' endpoints, Airflow's database goes to the team stack's PostgreSQL, and the workers' shared
secret (Airflow's JWT signing key) is generated once and kept in <home>/airflow_worker_secret (0600).
`worker` joins a worker from any machine with a checkout, `make install` and `make airflow`: its
settings are the API server's URL, the tracking server's URL and logins, nothing of the central
machine's disk. `down` (and `up`, before it starts anything) also stops what a killed service left
behind: processes of its session (LocalExecutor workers, task processes) reparented to init.
"""

from __future__ import annotations

import dataclasses
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
from windpipe.fileio import atomic_write_text, kept_secret
from windpipe.identity import pid_alive
from windpipe.settings import TELEMETRY_OFF, Settings
from windpipe.stack.procs import (
    Service,
    ServiceState,
    log_tail,
    session_leftovers,
    stop_pid,
    wait_until,
)
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
EXECUTORS = {"local": "LocalExecutor", "edge": "airflow.providers.edge3.executors.EdgeExecutor"}
WORKER = "worker"  # a remote worker's pid file and log: airflow-worker
WORKER_SECRET = "airflow_worker_secret"
EXECUTOR_FILE = "airflow-executor"  # (run/) the executor the running services were started with
EDGE_API = "/edge_worker/v1/rpcapi"
# a task whose worker stopped heartbeating is failed (and retried on another worker) after this many seconds
# (Airflow's default: 300)
EDGE_HEARTBEAT_TIMEOUT = 60
# an edge worker reports every this many seconds; the API server counts one that missed 5 as gone (default: 30)
EDGE_WORKER_HEARTBEAT = 10


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


def airflow_env(settings: Settings, base: dict[str, str] | None = None, executor: str = "local") -> dict[str, str]:
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
        "AIRFLOW__CORE__EXECUTOR": EXECUTORS[executor],
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
    if executor == "edge":
        env.update(_edge_env(settings))
    return env


def worker_secret_file(settings: Settings) -> Path:
    return settings.paths.secret_file(WORKER_SECRET)


def _secret_cmd(path: Path) -> str:
    """Airflow reads a sensitive option from the output of `<option>_CMD`: the secret stays out of every process
    environment (a task inherits its worker's) and command line; only its file's path is named."""
    import shlex

    return f"cat {shlex.quote(str(path))}"


def _edge_env(settings: Settings) -> dict[str, str]:
    """The central machine's EdgeExecutor: the workers' API on the API server, the JWT key the workers share, a
    database every Airflow process shares (the team stack's PostgreSQL), and dead workers' tasks failed soon."""
    from windpipe.stack import postgres

    if settings.stack != "team":
        # (SQLite would do for Airflow's database: only the central processes use it, the workers talk HTTP; a
        # trial ran 3 DAG runs with no lock error. The login is what the local stack lacks.)
        raise WindpipeError("Remote workers need a tracking server they reach over the network with a login; the "
                            "local stack's has no login (it serves 127.0.0.1 only).",
                            "run the team stack: WINDPIPE_STACK=team WINDPIPE_AUTH=basic windpipe up, then "
                            "WINDPIPE_STACK=team windpipe airflow up --executor edge (docs/team.md)")
    kept_secret(worker_secret_file(settings))
    db = postgres.uri(settings, postgres.AIRFLOW_DATABASE)
    return {
        "AIRFLOW__EDGE__API_ENABLED": "True",
        "AIRFLOW__EDGE__API_URL": settings.airflow_url + EDGE_API,
        "AIRFLOW__API_AUTH__JWT_SECRET_CMD": _secret_cmd(worker_secret_file(settings)),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(EDGE_HEARTBEAT_TIMEOUT),
        "AIRFLOW__EDGE__HEARTBEAT_INTERVAL": str(EDGE_WORKER_HEARTBEAT),
        # no password in the URI: libpq reads it from the 0600 password file
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db,
        # (Airflow would derive asyncpg's URI; psycopg 3 speaks async itself)
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": db.replace("+psycopg:", "+psycopg_async:", 1),
        **postgres.client_env(settings),
    }


def check_login(env: dict[str, str], strict: bool = False) -> None:
    """Stop before anything starts when the tracking server refuses the login Airflow's tasks would send (the
    MLFLOW_TRACKING_USERNAME / _PASSWORD of `env`, which they inherit), instead of every task failing on HTTP
    401. A server that does not answer now is no reason to stop the central machine (the tasks say so when
    they run); a worker (`strict`) whose tracking URL leads nowhere stops."""
    user, password = env.get("MLFLOW_TRACKING_USERNAME"), env.get("MLFLOW_TRACKING_PASSWORD")
    try:
        probe_artifacts(env["MLFLOW_TRACKING_URI"], auth=(user, password) if user and password else None)
    except ServerDown as exc:
        if strict:
            raise WindpipeError(f"This worker's tasks cannot reach the tracking server: {exc.problem}",
                                "set MLFLOW_TRACKING_URI to the central tracking server's URL, as this machine "
                                "reaches it") from None
        return
    except WindpipeError as exc:
        raise WindpipeError(f"Airflow's tasks could not log in to the tracking server: {exc.problem}",
                            'export the login first (`eval "$(windpipe env)"` on the tracking server\'s machine), '
                            "then start Airflow again") from None


def service(settings: Settings, name: str, executor: str = "local") -> Service:
    """One of Airflow's services (SERVICES) as windpipe starts it: pid file and log `airflow-<name>`. Airflow's
    own health endpoint says how they are (`status`). (The worker's pid file and log: `worker`.)"""
    return Service(f"airflow-{name}", settings.airflow_url, lambda: _component(settings, name), home=settings.home,
                   host=settings.host, port=settings.airflow_port if name == "api-server" else None,
                   command=lambda: [str(airflow_bin(settings)), name, *ARGS[name]],
                   env=lambda: airflow_env(settings, executor=executor), cwd=settings.paths.airflow_home,
                   title="Airflow's API server" if name == "api-server" else f"Airflow's {name}",
                   port_fix="choose another port with WINDPIPE_AIRFLOW_PORT=<port>")


def _pid(settings: Settings, name: str) -> int | None:
    return service(settings, name).pid()


def _component(settings: Settings, name: str) -> str:
    if name == WORKER:
        _registered(settings)
        return "edge worker"
    state = health(settings).get(COMPONENTS[name], "")
    if state != "healthy":
        raise WindpipeError(f"Airflow's {name} is {state or 'not running'}.", STATUS_FIX)
    return state


def _running_executor(settings: Settings) -> str | None:
    try:
        return settings.paths.run_file(EXECUTOR_FILE).read_text().strip() or None
    except OSError:
        return None


def leftovers(settings: Settings) -> list[int]:
    """Processes a killed Airflow service or worker of this state folder left behind: its session's LocalExecutor
    workers, edge task supervisors and task commands, reparented to init (they hold ~140 MB each)."""
    found: list[int] = []
    for name in (*SERVICES, WORKER):
        if _pid(settings, name) is None:  # (a live service's session is its own business)
            found += session_leftovers(settings.paths.pid_file(f"airflow-{name}"), settings.home)
    return found


def stop_leftovers(settings: Settings, say: Callable[[str], None]) -> None:
    for pid in leftovers(settings):
        stop_pid(pid, timeout=10.0)
        say(f"airflow: stopped process {pid}, left behind by a service that was killed")


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


def up(settings: Settings, say: Callable[[str], None] = print, executor: str | None = None) -> list[ServiceState]:
    """Start the services that do not run yet, wait until Airflow is healthy and its execution API warm.

    `executor`: local (default: WINDPIPE_AIRFLOW_EXECUTOR) or edge (remote workers, the team stack)."""
    if not airflow_bin(settings).exists():
        raise WindpipeError(f"Airflow's environment {settings.airflow_venv} is missing.", MAKE_FIX)
    executor = executor or settings.airflow_executor
    running = [s for s in SERVICES if _pid(settings, s) is not None]
    before = _running_executor(settings) or "local"
    if running and before != executor:
        raise WindpipeError(f"Airflow runs here with the {before} executor already (pids "
                            f"{', '.join(str(_pid(settings, s)) for s in running)}), not {executor}.",
                            f"stop it first: `windpipe airflow down`, then `windpipe airflow up --executor {executor}`")
    env = airflow_env(settings, executor=executor)
    missing = [s for s in SERVICES if s not in running]
    if missing:
        check_login(env)
        stop_leftovers(settings, say)
    if "api-server" in missing:
        service(settings, "api-server").require_port()
    settings.paths.airflow_home.mkdir(parents=True, exist_ok=True)
    admin_password(settings, create=True)
    if missing:
        say("airflow: migrating its database ...")
        _migrate(settings, env)  # creates airflow.cfg (its secrets, mode 0600) before the services share it
        atomic_write_text(settings.paths.run_file(EXECUTOR_FILE), executor, mode=0o600)
    started = {}
    timeout = max(settings.startup_timeout, READY_TIMEOUT)
    for name in SERVICES:  # the API server first: every task calls its execution API
        pid = _pid(settings, name)
        if pid is not None:
            say(f"airflow {name}: already running (pid {pid})")
            continue
        started[name] = service(settings, name, executor).launch()
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
    if executor == "edge":
        say(f"airflow: tasks run on edge workers; on each worker machine: WINDPIPE_AIRFLOW_WORKER_SECRET=<the "
            f"secret in {worker_secret_file(settings)}> windpipe airflow worker --api-url {settings.airflow_url}")
    return status(settings)


# ---------------------------------------------------------------------------------------------- a remote worker


def _api_url(settings: Settings, api_url: str | None) -> str:
    url = (api_url or settings.airflow_api_url or "").strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        from windpipe.errors import UsageError

        raise UsageError(f"The Airflow API URL {url!r} is not an http(s) URL." if url else
                         "A worker needs the URL of the central machine's Airflow API server.",
                         "pass --api-url http://<central host>:8090 (or set WINDPIPE_AIRFLOW_API_URL)")
    return url


def _get_json(url: str, timeout: float = 10.0) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def check_api(url: str) -> None:
    """Raise WindpipeError unless `url` is an Airflow API server that serves the edge workers' API."""
    try:
        version = _get_json(f"{url}/api/v2/version")
    except (urllib.error.HTTPError, ValueError) as exc:
        raise WindpipeError(f"{url} answers, but not as Airflow's API server ({first_line(exc)}).",
                            "check --api-url: the central machine's WINDPIPE_AIRFLOW_PORT") from None
    except (urllib.error.URLError, OSError) as exc:
        raise WindpipeError(f"The Airflow API server at {url} does not answer "
                            f"({first_line(getattr(exc, 'reason', exc))}).",
                            "check --api-url (the central machine's address and WINDPIPE_AIRFLOW_PORT, reachable from "
                            "here), and that `windpipe airflow status` is up there") from None
    if not isinstance(version, dict) or "version" not in version:
        raise WindpipeError(f"{url} answers, but not as Airflow's API server.",
                            "check --api-url: the central machine's WINDPIPE_AIRFLOW_PORT")
    try:
        _get_json(f"{url}/edge_worker/v1/health")
    except (urllib.error.URLError, OSError, ValueError):
        raise WindpipeError(f"Airflow at {url} does not serve the edge workers' API (it runs another executor).",
                            "on the central machine: `windpipe airflow down`, then "
                            "`windpipe airflow up --executor edge`") from None


def worker_env(settings: Settings, url: str, name: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a remote worker's `airflow edge worker` (and so of its tasks): this checkout's DAG files
    and main environment, the central API server, the tracking server and its login from `base`; its secret
    only as a file path (Airflow reads `<option>_CMD`)."""
    env = airflow_env(settings, {k: v for k, v in (os.environ if base is None else base).items()
                                 if k != "WINDPIPE_AIRFLOW_WORKER_SECRET"})
    for key in ("AIRFLOW__API__HOST", "AIRFLOW__API__PORT", "AIRFLOW__API__BASE_URL",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"):
        env.pop(key, None)
    env.update({
        "AIRFLOW__CORE__EXECUTOR": EXECUTORS["edge"],
        "AIRFLOW__EDGE__API_URL": url + EDGE_API,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": url + "/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET_CMD": _secret_cmd(worker_secret_file(settings)),
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(settings.paths.airflow_home / "logs"),
        "AIRFLOW__EDGE__HEARTBEAT_INTERVAL": str(EDGE_WORKER_HEARTBEAT),
        "WINDPIPE_WORKER": name,
    })
    return env


def _check_main_environment(settings: Settings) -> None:
    missing = [n for n in ("windpipe", "mlflow") if not (settings.windpipe_bin / n).exists()]
    if missing:
        raise WindpipeError(f"The main environment {settings.windpipe_bin} has no {' or '.join(missing)}: this "
                            "machine could take tasks but not run a single step.",
                            "run `make install` in this checkout (or point WINDPIPE_BIN_DIR at the bin/ of an "
                            "environment that has windpipe and mlflow)")


def _registered(settings: Settings) -> None:
    # `airflow edge worker` writes its pid file once the API server has accepted its registration
    if not (settings.paths.airflow_home / "airflow-edge-worker.pid").exists():
        raise WindpipeError("The worker has not registered yet.")


class DuplicateWorker(WindpipeError):
    """The API server has a running worker of this name (or one that died and has not missed enough heartbeats)."""


def _worker_exited(settings: Settings, url: str, name: str) -> WindpipeError:
    log = settings.paths.log_file(f"airflow-{WORKER}")
    text = log.read_text(errors="replace")[-4000:] if log.exists() else ""
    import re

    # (aiohttp's ClientResponseError reads "403, message='Forbidden', url=...")
    if re.search(r"\b40[13], message=|Forbidden|Unauthorized", text):
        return WindpipeError(f"The Airflow API server at {url} refused the worker's login (its secret).",
                             "set WINDPIPE_AIRFLOW_WORKER_SECRET to the secret the central machine keeps in "
                             "<state folder>/airflow_worker_secret")
    if re.search(r"\b409, message=|is already active", text):
        return DuplicateWorker(f"A worker named {name!r} is registered and running already.",
                             "give this one another name: --name <name>")
    return WindpipeError(f"The Airflow worker exited while starting.{log_tail(log, 8)}", f"see {log}")


def worker(settings: Settings, queues: list[str], api_url: str | None = None, concurrency: int = 2,
           name: str | None = None, say: Callable[[str], None] = print) -> int:
    """Join this machine to a central Airflow as an edge worker taking tasks of `queues` (detached); return its pid.

    Stops, before anything starts, with a clear message when the API URL is wrong, when this machine has no
    main environment (or no Airflow environment), when the tracking server refuses the login the tasks would
    send, or when the API server refuses the worker's secret.
    """
    import socket

    url = _api_url(settings, api_url)
    name = name or socket.gethostname()
    pid = _pid(settings, WORKER)
    if pid is not None:
        say(f"airflow worker: already running (pid {pid})")
        return pid
    if not airflow_bin(settings).exists():
        raise WindpipeError(f"Airflow's environment {settings.airflow_venv} is missing.", MAKE_FIX)
    _check_main_environment(settings)
    if settings.airflow_worker_secret is None:
        raise WindpipeError("The worker's login is not set.",
                            "set WINDPIPE_AIRFLOW_WORKER_SECRET to the secret the central machine keeps in "
                            "<state folder>/airflow_worker_secret (environment or .env, never the command line)")
    check_api(url)
    env = worker_env(settings, url, name)
    check_login(env, strict=True)
    settings.paths.airflow_home.mkdir(parents=True, exist_ok=True)
    atomic_write_text(worker_secret_file(settings), settings.airflow_worker_secret.get_secret_value(), mode=0o600)
    stop_leftovers(settings, say)
    (settings.paths.airflow_home / "airflow-edge-worker.pid").unlink(missing_ok=True)
    argv = [str(airflow_bin(settings)), "edge", "worker", "--queues", ",".join(queues), "--concurrency",
            str(concurrency), "--edge-hostname", name]
    deadline = time.monotonic() + max(settings.startup_timeout, 120.0)
    svc = dataclasses.replace(service(settings, WORKER), url=url, port=None, command=lambda: argv, env=lambda: env)
    while True:
        pid = svc.launch()
        say(f"airflow worker {name}: starting (pid {pid}, queues {','.join(queues)}, {concurrency} tasks at a time)")
        try:
            wait_until(lambda: _registered(settings), max(deadline - time.monotonic(), 10.0), "The Airflow worker",
                       alive=lambda p=pid: pid_alive(p), exited=lambda: _worker_exited(settings, url, name),
                       fix=f"see {settings.paths.log_file(f'airflow-{WORKER}')}", interval=0.5)
        except DuplicateWorker:
            settings.paths.pid_file(f"airflow-{WORKER}").unlink(missing_ok=True)
            if time.monotonic() > deadline:
                raise
            # a worker of this name that died (kill -9, a lost machine) stays "running" for the API server until
            # it has missed 5 heartbeats: wait that out, as a restarted machine must
            say(f"airflow worker {name}: the API server still counts a worker of this name as running (one that "
                "died stays so for 5 heartbeats, 50 s); trying again in 10 s")
            time.sleep(10.0)
            continue
        except BaseException:
            stop_pid(pid)
            settings.paths.pid_file(f"airflow-{WORKER}").unlink(missing_ok=True)
            raise
        say(f"airflow worker {name}: registered with {url}")
        return pid


def _exited(settings: Settings, started: dict[str, int]) -> WindpipeError:
    name = next((n for n, p in started.items() if not pid_alive(p)), "a service")
    log = settings.paths.log_file(f"airflow-{name}")
    return WindpipeError(f"Airflow's {name} exited while starting.{log_tail(log, 8)}", f"see {log}")


def down(settings: Settings, say: Callable[[str], None] = print) -> None:
    """Stop the services `up` started and a worker `worker` started (all at once: the API server alone takes ~10 s
    to stop), then whatever killed ones left behind."""
    pids = {name: pid for name in (*SERVICES, WORKER) if (pid := _pid(settings, name)) is not None}
    for pid in pids.values():
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    for name, pid in pids.items():
        stop_pid(pid, timeout=30.0)
        service(settings, name).pid_file.unlink(missing_ok=True)
        say(f"airflow {name}: stopped (pid {pid})")
    stop_leftovers(settings, say)
    settings.paths.run_file(EXECUTOR_FILE).unlink(missing_ok=True)
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
    worker_pid = _pid(settings, WORKER)
    if worker_pid is not None:  # (a worker machine: only the worker)
        out.append(ServiceState(WORKER, settings.airflow_api_url or "", True, worker_pid,
                                f"edge worker, log {settings.paths.log_file('airflow-worker')}"))
        if not any(_pid(settings, n) for n in SERVICES):
            return out
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


def wait_for_run(settings: Settings, dag_id: str, run_id: str, token_: str, timeout: float = 1800.0,
                 patience: float = 30.0) -> str:
    """Poll a DAG run until it succeeds or fails; return the final state. An API server that stops answering
    for `patience` seconds (a restart takes less) is a WindpipeError, not a traceback."""
    deadline = time.monotonic() + timeout
    silent_since: float | None = None
    while time.monotonic() < deadline:
        try:
            state = run_state(settings, dag_id, run_id, token_)
            silent_since = None
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            silent_since = silent_since or time.monotonic()
            if time.monotonic() - silent_since >= patience:
                raise WindpipeError(
                    f"Airflow's API server at {settings.airflow_url} stopped answering while waiting for the DAG run "
                    f"{dag_id} {run_id} ({first_line(getattr(exc, 'reason', exc))}).",
                    "check `windpipe airflow status` (and `windpipe airflow up`); the run itself may go on: its state "
                    "is in the Airflow UI") from None
            time.sleep(2.0)
            continue
        if state in ("success", "failed"):
            return state
        time.sleep(2.0)
    raise WindpipeError(f"The DAG run {dag_id} {run_id} did not finish in {timeout:.0f} s.",
                        f"look at it in the Airflow UI ({settings.airflow_url})")

"""The local platform: real FTP and MLflow servers, started and stopped by windpipe."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import stat
import time

import pytest

from windpipe.errors import WindpipeError
from windpipe.settings import Settings
from windpipe.stack import ftp as ftp_server
from windpipe.stack import services as platform
from windpipe.stack.procs import port_is_free

from .processes import listening_sockets


def _password(p) -> str:
    return ftp_server.ftp_password(p.settings)


@pytest.mark.slow
def test_up_starts_both_and_status_is_healthy(make_platform):
    p = make_platform()
    proc = p.windpipe("status")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "up   ftp" in proc.stdout and "up   mlflow" in proc.stdout
    assert "artifact proxy ok" in proc.stdout
    # every socket the servers listen on is bound to loopback, and not to 0.0.0.0 as well
    listening = _listening(p)
    assert {port for _, port in listening} >= {p.settings.ftp_port, p.settings.mlflow_port}
    assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening


def _listening(p) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the platform's server processes (and their children) listen on."""
    return listening_sockets([platform.running_pid(p.settings, name) for name in (platform.FTP, platform.MLFLOW)])


@pytest.mark.slow
def test_up_twice_changes_nothing(make_platform):
    p = make_platform()
    pids = {n: platform.running_pid(p.settings, n) for n in (platform.FTP, platform.MLFLOW)}
    assert None not in pids.values()
    proc = p.windpipe("up")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("already running") == 2
    after = {n: platform.running_pid(p.settings, n) for n in (platform.FTP, platform.MLFLOW)}
    assert after == pids


@pytest.mark.slow
def test_generated_password_is_private_and_never_leaks(make_platform):
    import mlflow

    p = make_platform()
    pw_file = p.home / ftp_server.PASSWORD_FILE
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    password = _password(p)
    assert len(password) >= 24
    # make a run with an artifact so the store has rows and URIs to look at
    mlflow.set_tracking_uri(p.tracking_uri)
    exp = mlflow.set_experiment("leak-check")
    with mlflow.start_run() as run:
        mlflow.log_text("hello", "note.txt")
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/note.txt") == "hello"
    assert "ftp://" not in run.info.artifact_uri and password not in run.info.artifact_uri
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    assert (p.home / "ftp" / "artifacts" / exp.experiment_id / run.info.run_id / "artifacts" / "note.txt").exists()
    status = p.windpipe("status")
    assert password not in status.stdout + status.stderr
    for log in (p.home / "logs").iterdir():
        assert password not in log.read_text(errors="replace"), log
    db = sqlite3.connect(p.home / "mlflow.db")
    for (table,) in db.execute("select name from sqlite_master where type='table'"):
        for row in db.execute(f"select * from {table}"):
            assert password not in " ".join(map(str, row)), table
    # and no process shows it on its command line
    for pid in (platform.running_pid(p.settings, n) for n in (platform.FTP, platform.MLFLOW)):
        assert password not in open(f"/proc/{pid}/cmdline").read()


@pytest.mark.slow
def test_no_anonymous_ftp_login(make_platform):
    import ftplib

    p = make_platform()
    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", p.settings.ftp_port, timeout=5)
        with pytest.raises(ftplib.error_perm):
            ftp.login()  # anonymous


@pytest.mark.slow
def test_wrong_ftp_password_is_named(make_platform):
    p = make_platform()
    proc = p.windpipe("status", extra_env={"WINDPIPE_FTP_PASSWORD": "not-the-password"})
    assert proc.returncode == 1
    assert "refused the login" in proc.stdout and "WINDPIPE_FTP_PASSWORD" in proc.stdout
    proc = p.windpipe("up", extra_env={"WINDPIPE_FTP_PASSWORD": "not-the-password"})
    assert proc.returncode == 1
    assert "refused the login" in proc.stderr and "fix:" in proc.stderr


@pytest.mark.slow
def test_port_taken_by_another_program(make_platform):
    p = make_platform(start=False)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", p.settings.mlflow_port))
        blocker.listen()
        proc = p.windpipe("up")
    assert proc.returncode == 1
    assert f"Port {p.settings.mlflow_port}" in proc.stderr and "WINDPIPE_MLFLOW_PORT" in proc.stderr
    assert "Traceback" not in proc.stderr
    p.windpipe("down")


def test_state_folder_not_writable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    settings = Settings(home=blocker / "state")
    with pytest.raises(WindpipeError, match="not writable") as err:
        platform.up(settings, say=lambda _m: None)
    assert "WINDPIPE_HOME" in str(err.value)


@pytest.mark.slow
def test_kill_tracking_server_then_up_keeps_runs_and_artifacts(make_platform):
    import mlflow

    p = make_platform()
    mlflow.set_tracking_uri(p.tracking_uri)
    mlflow.set_experiment("survives")
    with mlflow.start_run() as run:
        mlflow.log_metric("m", 1.5)
        mlflow.log_text("kept", "kept.txt")
    pid = platform.running_pid(p.settings, platform.MLFLOW)
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 10
    while time.time() < deadline and not port_is_free("127.0.0.1", p.settings.mlflow_port):
        time.sleep(0.1)
    down = p.windpipe("status")
    assert down.returncode == 1 and "DOWN mlflow" in down.stdout
    assert p.windpipe("up").returncode == 0
    got = mlflow.get_run(run.info.run_id)
    assert got.data.metrics["m"] == 1.5
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/kept.txt") == "kept"


@pytest.mark.slow
def test_killed_ftp_server_is_named_by_status(make_platform):
    p = make_platform()
    pid = platform.running_pid(p.settings, platform.FTP)
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    proc = p.windpipe("status")
    assert proc.returncode == 1
    assert "DOWN ftp" in proc.stdout
    assert "up   mlflow" not in proc.stdout or "artifact" not in proc.stdout.split("mlflow", 1)[1]


@pytest.mark.slow
def test_down_stops_only_what_up_started(make_platform):
    import subprocess
    import sys

    p = make_platform()
    # another platform's server process, unrelated to this state folder, must survive `down`
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "windpipe.stack.mlflow_server"],
                             start_new_session=True)
    try:
        proc = p.windpipe("down")
        assert proc.returncode == 0
        assert proc.stdout.count("stopped") == 2, proc.stdout
        assert port_is_free("127.0.0.1", p.settings.mlflow_port)
        assert port_is_free("127.0.0.1", p.settings.ftp_port)
        assert other.poll() is None, "down stopped a process this state folder did not start"
    finally:
        other.kill()
        other.wait()
    assert p.windpipe("status").returncode == 1


def test_command_needing_tracking_says_run_up(tmp_path):
    from windpipe.stack.procs import free_port
    from windpipe.tracking.client import connect

    settings = Settings(home=tmp_path, tracking_uri=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(WindpipeError, match="does not answer") as err:
        connect(settings)
    assert "windpipe up" in str(err.value)


@pytest.mark.slow
def test_no_windpipe_process_falls_back_to_a_local_mlflow_db(shared_platform, tmp_path):
    """MLflow 3 writes ./mlflow.db when a client has no tracking URI: the committed mlflow.db came from
    `windpipe status` ending a killed run with such a client. Without MLFLOW_TRACKING_URI (the settings name the
    server by WINDPIPE_MLFLOW_PORT) and run in an empty folder, status ends the run KILLED on the platform's
    server and writes nothing there; a library call that uses MLflow's default finds the server too."""
    import socket
    import subprocess
    import sys

    from windpipe import names
    from windpipe.identity import ProcessId
    from windpipe.tracking.client import mlflow_client

    p = shared_platform
    client = mlflow_client(p.settings)
    exp = client.get_experiment_by_name("no-local-db") or client.get_experiment(client.create_experiment("no-local-db"))
    gone = ProcessId(socket.gethostname(), os.getpid(), 1.0)  # (this pid, another start time: a process that ended)
    run = client.create_run(exp.experiment_id, tags={names.PROCESS_TAG: str(gone)})
    env = {k: v for k, v in p.env.items() if k != "MLFLOW_TRACKING_URI"}
    status = subprocess.run([sys.executable, "-m", "windpipe", "status"], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert f"run {run.info.run_id}: marked KILLED" in status.stdout, status.stdout + status.stderr
    assert client.get_run(run.info.run_id).info.status == "KILLED"
    code = ("from windpipe.settings import enter_process; enter_process(); import mlflow; "
            "mlflow.MlflowClient().search_experiments(); print(mlflow.get_tracking_uri())")
    default = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                             timeout=300)
    assert default.stdout.strip() == p.tracking_uri, default.stdout + default.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_client_is_made_with_the_tracking_uri_and_only_a_steps_process_sets_mlflows_global_one():
    """Fast: every MlflowClient of windpipe comes from tracking.client.mlflow_client (the URI passed explicitly),
    and mlflow.set_tracking_uri is called by tracking.client.connect only (a step's process, for the fluent API):
    never by a server (it would change the URI for every thread and export it to every subprocess)."""
    import re
    from pathlib import Path

    import windpipe

    root = Path(windpipe.__file__).parent
    found = {"MlflowClient(": [], "set_tracking_uri(": []}
    for path in root.rglob("*.py"):
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for call in found:
                if re.search(rf"\b{re.escape(call)}", code) and "def " not in code:
                    found[call].append(f"{path.relative_to(root)}:{lineno}")
    assert [f.split(":")[0] for f in found["MlflowClient("]] == ["tracking/client.py"], found
    assert [f.split(":")[0] for f in found["set_tracking_uri("]] == ["tracking/client.py"], found


def test_a_new_server_is_one_service_definition(tmp_path):
    """Fast: a `Service` definition (command, check, port) is all a new server needs: `start` waits until it
    answers and records a pid file that proves it, `state` checks it, a second start finds it running, another
    state folder cannot take its port (the message names the setting), `stop` ends it and says so, and a server
    that exits while starting is named with its log's last lines, leaving no pid file."""
    import dataclasses
    import sys
    import urllib.request

    from windpipe.identity import pid_alive
    from windpipe.stack.procs import Service, free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}/"

    def check() -> str:
        try:
            urllib.request.urlopen(url, timeout=2).read()
        except OSError as exc:
            raise WindpipeError(f"Nothing answers at {url} ({exc}).") from None
        return "http ok"

    svc = Service("toy", url, check, home=tmp_path / "home", port=port, cwd=tmp_path,
                  command=lambda: [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                  port_fix="choose another port with TOY_PORT=<port>")
    other = dataclasses.replace(svc, home=tmp_path / "other")
    said: list[str] = []
    pid = svc.start(timeout=60)
    try:
        assert svc.pid() == pid and svc.state() == platform.ServiceState("toy", url, True, pid, "http ok")
        assert svc.start() == pid
        with pytest.raises(WindpipeError, match=f"Port {port} on 127.0.0.1 is taken by another program, so the toy "
                                                "server cannot start") as taken:
            other.start()
        assert "TOY_PORT=<port>" in taken.value.fix
    finally:
        other.stop()
        assert svc.stop(said.append) == pid
    assert said == [f"toy: stopped (pid {pid})"] and not pid_alive(pid) and not svc.pid_file.exists()
    assert not svc.state().healthy
    broken = dataclasses.replace(svc, command=lambda: [sys.executable, "-c", "print('no such model'); exit(3)"])
    with pytest.raises(WindpipeError, match=r"(?s)The toy server exited while starting\..*no such model"):
        broken.start(timeout=60)
    assert not broken.pid_file.exists()

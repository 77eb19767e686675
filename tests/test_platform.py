"""The local platform: real FTP and MLflow servers, started and stopped by windpipe."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import stat
import time

import pytest

from windpipe import ftp_server, platform
from windpipe.errors import WindpipeError
from windpipe.settings import Settings

pytestmark = pytest.mark.slow


def _password(p) -> str:
    return ftp_server.ftp_password(p.settings)


def test_up_starts_both_and_status_is_healthy(make_platform):
    p = make_platform()
    proc = p.windpipe("status")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "up   ftp" in proc.stdout and "up   mlflow" in proc.stdout
    assert "artifact proxy ok" in proc.stdout
    # loopback only
    for port in (p.settings.ftp_port, p.settings.mlflow_port):
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass


def test_up_twice_changes_nothing(make_platform):
    p = make_platform()
    pids = {n: platform.read_pid(platform.state_paths(p.settings, n)[0], platform._marker(n))
            for n in (platform.FTP, platform.MLFLOW)}
    proc = p.windpipe("up")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("already running") == 2
    after = {n: platform.read_pid(platform.state_paths(p.settings, n)[0], platform._marker(n))
             for n in (platform.FTP, platform.MLFLOW)}
    assert after == pids


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
        for row in db.execute(f"select * from {table}"):  # noqa: S608 - table names from sqlite itself
            assert password not in " ".join(map(str, row)), table
    # and no process shows it on its command line
    for pid in (platform.read_pid(platform.state_paths(p.settings, n)[0], platform._marker(n))
                for n in (platform.FTP, platform.MLFLOW)):
        assert password not in open(f"/proc/{pid}/cmdline").read()


def test_no_anonymous_ftp_login(make_platform):
    import ftplib

    p = make_platform()
    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", p.settings.ftp_port, timeout=5)
        with pytest.raises(ftplib.error_perm):
            ftp.login()  # anonymous


def test_wrong_ftp_password_is_named(make_platform):
    p = make_platform()
    proc = p.windpipe("status", extra_env={"WINDPIPE_FTP_PASSWORD": "not-the-password"})
    assert proc.returncode == 1
    assert "refused the login" in proc.stdout and "WINDPIPE_FTP_PASSWORD" in proc.stdout
    proc = p.windpipe("up", extra_env={"WINDPIPE_FTP_PASSWORD": "not-the-password"})
    assert proc.returncode == 1
    assert "refused the login" in proc.stderr and "fix:" in proc.stderr


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


def test_kill_tracking_server_then_up_keeps_runs_and_artifacts(make_platform):
    import mlflow

    p = make_platform()
    mlflow.set_tracking_uri(p.tracking_uri)
    mlflow.set_experiment("survives")
    with mlflow.start_run() as run:
        mlflow.log_metric("m", 1.5)
        mlflow.log_text("kept", "kept.txt")
    pid = platform.read_pid(platform.state_paths(p.settings, platform.MLFLOW)[0], platform._marker(platform.MLFLOW))
    os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 10
    while time.time() < deadline and not platform.port_is_free("127.0.0.1", p.settings.mlflow_port):
        time.sleep(0.1)
    down = p.windpipe("status")
    assert down.returncode == 1 and "DOWN mlflow" in down.stdout
    assert p.windpipe("up").returncode == 0
    got = mlflow.get_run(run.info.run_id)
    assert got.data.metrics["m"] == 1.5
    assert mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/kept.txt") == "kept"


def test_killed_ftp_server_is_named_by_status(make_platform):
    p = make_platform()
    pid = platform.read_pid(platform.state_paths(p.settings, platform.FTP)[0], platform._marker(platform.FTP))
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    proc = p.windpipe("status")
    assert proc.returncode == 1
    assert "DOWN ftp" in proc.stdout
    assert "up   mlflow" not in proc.stdout or "artifact" not in proc.stdout.split("mlflow", 1)[1]


def test_down_stops_only_what_up_started(make_platform):
    p = make_platform()
    with socket.socket() as other:  # an unrelated listener must survive `down`
        other.bind(("127.0.0.1", 0))
        other.listen()
        proc = p.windpipe("down")
        assert proc.returncode == 0
        assert "stopped" in proc.stdout
        assert platform.port_is_free("127.0.0.1", p.settings.mlflow_port)
        assert platform.port_is_free("127.0.0.1", p.settings.ftp_port)
        other.getsockname()  # still open
    assert p.windpipe("status").returncode == 1


def test_command_needing_tracking_says_run_up(tmp_path):
    from windpipe.procs import free_port
    from windpipe.tracking import connect

    settings = Settings(home=tmp_path, tracking_uri=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(WindpipeError, match="unreachable") as err:
        connect(settings)
    assert "windpipe up" in str(err.value)

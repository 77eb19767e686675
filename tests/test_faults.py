"""Fault injection: killed servers and commands, full and read-only disks, hostile input, load (issue 16).

Tests that kill a server start their own platform (`make_platform`); the others share one. Points
inside a command are reached with the fault point of `windpipe.settings.fault_point`: the command
waits at the named point until the test has done its damage (see `Paused`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from windpipe.stack import services as platform

from .conftest import REPO

# ----------------------------------------------------------------------------------- helpers

class Paused:
    """Run a command that stops at a fault point; the test acts, then releases it (or kills it)."""

    def __init__(self, tmp_path: Path, point: str) -> None:
        self.release = tmp_path / f"release-{point.replace(':', '-')}"
        self.env = {"WINDPIPE_TEST_PAUSE_AT": f"{point}:{self.release}"}

    def wait(self, proc: subprocess.Popen, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        marker = Path(str(self.release) + ".paused")
        while not marker.exists():
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"ended before the fault point ({proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}")
            assert time.monotonic() < deadline, "the fault point was not reached"
            time.sleep(0.05)

    def go(self) -> None:
        self.release.touch()


def popen(p, *args: str, extra_env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.Popen:
    """`windpipe ...` started in the background against platform `p`."""
    env = {**p.env, **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-m", "windpipe", *args], env=env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)


# ----------------------------------------------------------------------------------- 1. pid files

@pytest.mark.slow
def test_down_and_up_never_act_on_foreign_or_stale_pid_files(make_platform):
    first = make_platform()
    other = make_platform(start=False)
    run_dir = other.home / "run"

    def copy_pid_files() -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        for pid_file in (first.home / "run").glob("*.pid"):
            shutil.copy(pid_file, run_dir / pid_file.name)

    copy_pid_files()
    proc = other.windpipe("down")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("removed a foreign pid file") == 2, proc.stdout
    assert first.windpipe("status").returncode == 0, "down stopped another state folder's servers"
    assert not list(run_dir.glob("*.pid"))

    # the copies do not make `up` refuse or report "already running": it starts this folder's own servers
    copy_pid_files()
    proc = other.windpipe("up")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "already running" not in proc.stdout and proc.stdout.count("removed a foreign pid file") == 2
    ours = {n: platform.running_pid(other.settings, n) for n in (platform.FTP, platform.MLFLOW)}
    theirs = {n: platform.running_pid(first.settings, n) for n in (platform.FTP, platform.MLFLOW)}
    assert None not in ours.values() and set(ours.values()).isdisjoint(theirs.values())
    assert other.windpipe("down").returncode == 0
    assert first.windpipe("status").returncode == 0

    # a pid file whose pid now belongs to another process (same state folder, even the same command
    # line, but another start time) is stale: nothing is signalled
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "windpipe.stack.mlflow_server"],
                                env={**other.env, "WINDPIPE_HOME": str(other.home.resolve())},
                                start_new_session=True)
    try:
        record = {"pid": stranger.pid, "started": 12345.0, "home": str(other.home.resolve()), "port": 1}
        (run_dir / "mlflow.pid").write_text(json.dumps(record))
        (run_dir / "ftp.pid").write_text(json.dumps({**record, "pid": 2 ** 22 + 7}))  # no such process
        proc = other.windpipe("down")
        assert proc.returncode == 0
        assert "removed a stale pid file" in proc.stdout and "another process" in proc.stdout, proc.stdout
        assert "is gone" in proc.stdout
        assert stranger.poll() is None, "down signalled a process that only reuses a recorded pid"
    finally:
        stranger.kill()
        stranger.wait()
    assert first.windpipe("status").returncode == 0

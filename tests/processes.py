"""Commands run against a test platform in the background, paused at a fault point, and servers killed hard.

A command started with `Paused(tmp_path, point).env` waits at `windpipe.faults.fault_point(point)`
until the test has done its damage (killed a server, filled a disk) and calls `go()`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import REPO


def code_snapshot(dest: Path) -> Path:
    """A copy of the code (library + projects) taken now, in `dest`.

    Code versions are part of the cache key, and other people edit this tree while a test runs; a
    pipeline run from the copy keeps its code version.
    """
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "windpipe", dest / "windpipe", ignore=ignore)
    shutil.copytree(REPO / "projects", dest / "projects", symlinks=True, ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", dest / "pyproject.toml")
    return dest


class Paused:
    """Run a command that stops at a fault point; the test acts, then releases it (or kills it)."""

    def __init__(self, tmp_path: Path, point: str) -> None:
        self.release = tmp_path / f"release-{point.replace(':', '-')}-{time.time_ns()}"
        self.env = {"WINDPIPE_TEST_PAUSE_AT": f"{point}@{self.release}"}

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


def popen(p, *args: str, extra_env: dict[str, str] | None = None, cwd: Path = REPO,
          preexec_fn: object = None) -> subprocess.Popen:
    """`windpipe ...` started in the background against platform `p`."""
    env = {**p.env, **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-m", "windpipe", *args], env=env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=preexec_fn)


def run(p, *args: str, extra_env: dict[str, str] | None = None, preexec_fn: object = None,
        timeout: float = 300) -> subprocess.CompletedProcess:
    proc = popen(p, *args, extra_env=extra_env, preexec_fn=preexec_fn)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


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


def wait_for(check, what: str, timeout: float = 60.0, interval: float = 0.2):
    """Poll `check` until it returns something truthy; fail naming `what` after the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def processes_of(run_id: str) -> list[int]:
    """Pids whose environment names `run_id` as their MLflow run (a step's process and its children)."""
    out = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"MLFLOW_RUN_ID={run_id}".encode() in env.read_bytes():
                out.append(int(env.parent.name))
        except OSError:
            pass
    return out


def listening_sockets(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the processes `pids` and their children listen on; a child that ends
    while it is read (a database backend, a server's worker) is skipped."""
    import psutil

    found = set()
    for pid in pids:
        proc = psutil.Process(pid)
        for each in (proc, *proc.children(recursive=True)):
            try:
                found |= {(c.laddr.ip, c.laddr.port) for c in each.net_connections("tcp") if c.status == "LISTEN"}
            except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                continue
    return found

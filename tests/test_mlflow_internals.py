"""What windpipe uses of MLflow beyond its documented API (windpipe/tracking/internals.py), checked against the
installed MLflow: an upgrade that changes one of them fails here first."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time

import pytest

from windpipe.tracking.internals import initialize_stores, step_process

from .processes import processes_of


def test_the_server_initialises_its_stores_as_mlflow_server_does(monkeypatch):
    from unittest import mock

    from mlflow.server import handlers

    # a stand-in with the real function's signature: a call that no longer fits it raises TypeError
    stand_in = mock.create_autospec(handlers.initialize_backend_stores)
    monkeypatch.setattr(handlers, "initialize_backend_stores", stand_in)
    initialize_stores("sqlite:///x.db", "mlflow-artifacts:/")
    stand_in.assert_called_once_with("sqlite:///x.db", "sqlite:///x.db", "mlflow-artifacts:/")


def test_a_local_submitted_run_holds_its_process():
    from mlflow.projects.submitted_run import LocalSubmittedRun

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    submitted = LocalSubmittedRun("0" * 32, proc)
    assert step_process(submitted) is proc
    assert submitted.wait() and submitted.get_status() == "FINISHED"


@pytest.mark.slow
def test_an_asynchronous_project_run_gives_the_process_tree_to_stop(use_platform, tmp_path):
    """`mlflow.projects.run(synchronous=False)` returns with the run created and its process started; the
    launcher stops a step through that process (windpipe.pipeline.launcher.Launcher.stop)."""
    import mlflow
    import psutil

    from windpipe.pipeline.launcher import _kill_tree, step_environment

    (tmp_path / "MLproject").write_text(
        "name: sleeper\nentry_points:\n  main:\n    parameters: {seconds: {type: float, default: 120}}\n"
        "    command: python sleep.py {seconds}\n")
    # the step starts a child of its own, as joblib workers or the marts helper do
    (tmp_path / "sleep.py").write_text("import subprocess, sys, time\n"
                                       "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
                                       "time.sleep(float(sys.argv[1]))\n")
    experiment = mlflow.MlflowClient().create_experiment(f"internals-{time.time_ns()}")
    with step_environment():
        submitted = mlflow.projects.run(str(tmp_path), "main", parameters={"seconds": "120"}, experiment_id=experiment,
                                        env_manager="local", synchronous=False)
    try:
        proc = step_process(submitted)
        assert isinstance(proc, subprocess.Popen) and proc.poll() is None
        assert mlflow.MlflowClient().get_run(submitted.run_id).info.status == "RUNNING"
        deadline = time.monotonic() + 60
        while len(processes_of(submitted.run_id)) < 3 and time.monotonic() < deadline:  # mlflow run, step, child
            time.sleep(0.2)
        tree = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)} | {proc.pid}
        assert set(processes_of(submitted.run_id)) <= tree and len(tree) >= 3
        _kill_tree(proc)
        submitted.wait()  # (returns at once: the process is gone)
        assert processes_of(submitted.run_id) == []
    finally:  # (whatever failed above: nothing of the test left running)
        for pid in processes_of(submitted.run_id):
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).kill()

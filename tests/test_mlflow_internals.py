"""What windpipe uses of MLflow beyond its documented API (windpipe/tracking/internals.py), checked against the
installed MLflow: an upgrade that changes one of them fails here first."""

from __future__ import annotations

import threading
import time
from unittest import mock

import pytest

from windpipe.tracking.internals import initialize_stores, pinned_requirements, run_project_in, use_git_tags

from .processes import processes_of


def test_the_server_initialises_its_stores_as_mlflow_server_does(monkeypatch):
    from mlflow.server import handlers

    # a stand-in with the real function's signature: a call that no longer fits it raises TypeError
    stand_in = mock.create_autospec(handlers.initialize_backend_stores)
    monkeypatch.setattr(handlers, "initialize_backend_stores", stand_in)
    initialize_stores("sqlite:///x.db", "mlflow-artifacts:/")
    stand_in.assert_called_once_with("sqlite:///x.db", "sqlite:///x.db", "mlflow-artifacts:/")


def test_a_project_runs_in_the_run_the_launcher_made(monkeypatch):
    import mlflow.projects

    stand_in = mock.create_autospec(mlflow.projects.run)
    monkeypatch.setattr(mlflow.projects, "run", stand_in)
    run_project_in("0" * 32, "/steps/lr", "main", {"seed": "1"}, "7", "local")
    stand_in.assert_called_once_with("/steps/lr", "main", parameters={"seed": "1"}, experiment_id="7",
                                     env_manager="local", synchronous=True, run_id="0" * 32)


def test_pinned_requirements_are_still_checked_without_mapping_every_installed_distribution(monkeypatch, caplog):
    """Inside pinned_requirements MLflow's requirement check still warns of a version this environment lacks,
    without building its module map (importlib.metadata.packages_distributions, 0.5 s); MLflow's map is unbuilt
    again afterwards."""
    import logging
    from importlib.metadata import version

    from mlflow.utils import requirements_utils

    def scan():
        raise AssertionError("MLflow mapped every installed distribution")

    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)
    monkeypatch.setattr(requirements_utils.importlib_metadata, "packages_distributions", scan)
    with caplog.at_level(logging.WARNING), pinned_requirements():
        requirements_utils.warn_dependency_requirement_mismatches(
            ["scikit-learn==0.0.1", f"numpy=={version('numpy')}", "pandas"])
    assert "scikit-learn (current: " in caplog.text and "numpy" not in caplog.text
    assert requirements_utils._MODULES_TO_PACKAGES is None


@pytest.mark.slow
def test_mlflow_tags_new_runs_with_the_git_tags_windpipe_read_without_asking_git(monkeypatch):
    """After use_git_tags, the tags MLflow's run context gives a new run (resolve_tags, what start_run and a logged
    model's creation call) carry windpipe's commit, branch and repository, and MLflow's GitPython helpers are not
    called; outside git ({}) no git tag at all, as MLflow gives outside git."""
    from mlflow.tracking.context import git_context, registry

    from windpipe import names
    from windpipe.settings import package_dir
    from windpipe.tracking.runs import git_tags

    def never(_path):
        raise AssertionError("MLflow asked git itself")

    for helper in ("get_git_commit", "get_git_branch", "get_git_repo_url"):
        monkeypatch.setattr(git_context, helper, never)
    provider = next(p for p in registry._run_context_provider_registry._registry
                    if isinstance(p, git_context.GitRunContext))
    monkeypatch.setattr(provider, "_cache", {})  # (restored afterwards: other tests keep MLflow's own answer)
    ours = git_tags(package_dir())
    assert ours.get(names.MLFLOW_GIT_COMMIT_TAG)  # (the test runs in the project's checkout)
    use_git_tags(ours)
    resolved = registry.resolve_tags({"x": "1"})
    assert {k: resolved.get(k) for k in ours} == ours and resolved["x"] == "1"
    use_git_tags({})
    assert not [k for k in registry.resolve_tags() if k.startswith("mlflow.source.git")]


def test_a_step_runs_in_the_launchers_run_and_its_process_tree_can_be_stopped(use_platform, tmp_path):
    """MLflow Projects runs the command in the run windpipe made (no second run), as a child of this process
    carrying the run id, so the launcher finds and stops it, and whatever it started
    (windpipe.pipeline.launcher.Launcher.stop)."""
    import mlflow
    import psutil

    from windpipe.pipeline.launcher import _kill, step_environment, step_processes
    from windpipe.pipeline.project_run import create_project_run

    (tmp_path / "MLproject").write_text(
        "name: sleeper\nentry_points:\n  main:\n    parameters: {seconds: {type: float, default: 120}}\n"
        "    command: python sleep.py {seconds}\n")
    # the step starts a child of its own, as joblib workers or the marts helper do, after joining its run
    # (windpipe's step_run unsets MLFLOW_RUN_ID then): only its parent names the run
    (tmp_path / "sleep.py").write_text(
        "import os, subprocess, sys, time\n"
        "env = {k: v for k, v in os.environ.items() if k != 'MLFLOW_RUN_ID'}\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'], env=env)\n"
        "open('child.pid', 'w').write(str(child.pid))\n"
        "time.sleep(float(sys.argv[1]))\n")
    client = mlflow.MlflowClient()
    experiment = client.create_experiment(f"internals-{time.time_ns()}")
    run_id = create_project_run(client, experiment, {"windpipe.cache_key": "k"}, {"seconds": "120"})
    outcome: list[BaseException | None] = []

    def launch() -> None:
        try:
            with step_environment():
                run_project_in(run_id, tmp_path, "main", {"seconds": "120"}, experiment, "local")
            outcome.append(None)
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=launch)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "child.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)  # (the pid is written)
        child = psutil.Process(int((tmp_path / "child.pid").read_text()))
        found = step_processes(run_id)  # the step (bash execs it) and its child
        assert {p.pid for p in found} >= {*processes_of(run_id), child.pid}
        assert [r.info.run_id for r in client.search_runs([experiment])] == [run_id]  # no run of MLflow's own
        assert client.get_run(run_id).data.params == {"seconds": "120"}
        _kill(found)
        thread.join(timeout=60)
        assert not thread.is_alive() and isinstance(outcome[0], mlflow.exceptions.ExecutionException)
        assert client.get_run(run_id).info.status == "FAILED"  # MLflow Projects ends a run its command did not
        assert processes_of(run_id) == [] and not (child.is_running() and child.status() != psutil.STATUS_ZOMBIE)
    finally:  # (whatever failed above: nothing of the test left running)
        pid_file = tmp_path / "child.pid"
        strays = [psutil.Process(int(pid_file.read_text()))] if pid_file.exists() else []
        _kill(step_processes(run_id) + [p for p in strays if p.is_running()])
        thread.join(timeout=60)

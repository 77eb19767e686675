"""A step's MLflow project run, made the way MLflow Projects makes it, and `windpipe run STEP` in this process.

`create_project_run` makes the run `mlflow run STEP_DIR -e ENTRY` would: the same parameters (each entry
point parameter, its default filled in, logged as MLflow Projects logs them, `logged_params`) and the same
tags (user, source, entry point, git commit and repository, backend, `project_tags`), from the MLproject
windpipe read once (`windpipe.pipeline.interfaces`), with MLflow's client API. The launcher makes each
step's run so, with its pipeline tags, before MLflow Projects runs the step in it
(`windpipe.pipeline.launcher`). `run_here` (`windpipe run`) runs the entry point's command with
`MLFLOW_RUN_ID` set, so the step joins that run; a `python step.py ...` command runs in this interpreter
instead of a second one: Python and MLflow start once. tests/test_train_projects.py compares the run with
the one `mlflow run` makes.
"""

from __future__ import annotations

import getpass
import os
import runpy
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from windpipe import names
from windpipe.errors import UsageError
from windpipe.pipeline.interfaces import MLProject, Parameter
from windpipe.stack.procs import environment
from windpipe.tracking.client import mlflow_client
from windpipe.tracking.runs import git_output, git_tags, without_credentials

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run


def project_tags(folder: Path, entry_point: str, source: str | None = None) -> dict[str, str]:
    """The tags MLflow Projects gives a run of the project in `folder` (`mlflow.projects.run`): user, source,
    entry point, git commit and repository, backend. `source`: the URI the project came from (a git URI
    `<repo>#<folder>`, of which `folder` is a checkout); by default `folder` itself."""
    try:
        user = getpass.getuser()
    except (ImportError, KeyError, OSError):
        user = "unknown"
    top = git_output(folder, "rev-parse", "--show-toplevel")
    if source is None:
        source = str(folder)
        if top:
            rel = os.path.relpath(folder, top)
            source = f"file://{top}" + ("" if rel == "." else f"#{rel}")
    tags = {names.MLFLOW_USER_TAG: user, names.MLFLOW_SOURCE_NAME_TAG: without_credentials(source),
            names.MLFLOW_SOURCE_TYPE_TAG: "PROJECT", names.MLFLOW_PROJECT_ENTRY_TAG: entry_point,
            names.MLFLOW_PROJECT_BACKEND_TAG: "local"}
    # (MLflow Projects tags a run of a local folder with its commit and repository, not its branch)
    return tags | {k: v for k, v in git_tags(folder).items() if k != names.MLFLOW_GIT_BRANCH_TAG}


def check_values(declared: Mapping[str, Parameter], given: Mapping[str, str], where: str) -> None:
    """Refuse what MLflow Projects would refuse once the run exists: a required parameter not given, a `uri`
    parameter that is no URI."""
    missing = [n for n, p in declared.items() if p.required and n not in given]
    if missing:
        raise UsageError(f"{where} needs {', '.join(missing)}, which has no default.", f"pass -P {missing[0]}=VALUE")
    for name, param in declared.items():
        value = str(given.get(name, param.default))
        if param.type == "uri" and not urlsplit(value).scheme:
            raise UsageError(f"{where}: parameter {name} must be a URI, got {value!r}.", f"pass -P {name}=<scheme>://...")


def logged_params(declared: Mapping[str, Parameter], given: Mapping[str, str]) -> dict[str, str]:
    """The parameters as MLflow Projects logs them: each declared one with its given value or its default,
    then the others given; shell-quoted (`'a b'`), as they go into the command."""
    values = {n: str(given[n] if n in given else p.default) for n, p in declared.items()}
    extra = {k: str(v) for k, v in given.items() if k not in declared}
    return {k: shlex.quote(v) for k, v in values.items()} | {shlex.quote(k): shlex.quote(v) for k, v in extra.items()}


def create_project_run(client: MlflowClient, experiment_id: str, tags: Mapping[str, str],
                       params: Mapping[str, str]) -> str:
    """A new run with `tags` and the logged `params` (`logged_params`), as MLflow Projects creates one; its id."""
    from mlflow.entities import Param

    run_id = client.create_run(experiment_id, tags=dict(tags)).info.run_id
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    return run_id


def entry_point_command(project: MLProject, entry_point: str, given: Mapping[str, str], storage: Path) -> str:
    """The shell command of `entry_point` with the values `given` (the defaults filled in), as MLflow Projects
    builds it: values shell-quoted; a `path` parameter's file made absolute (it must exist), or a URI
    downloaded into `storage`; names the entry point does not declare appended as `--name value`."""
    declared = project.entry_points[entry_point]
    values = {n: str(given[n] if n in given else p.default) for n, p in declared.items()}
    for name, param in declared.items():
        if param.type == "path":
            values[name] = _local(name, values[name], storage)
    extra = {k: v for k, v in given.items() if k not in declared}
    return " ".join([project.commands[entry_point].format(**{k: shlex.quote(v) for k, v in values.items()}),
                     *(f"--{shlex.quote(k)} {shlex.quote(v)}" for k, v in extra.items())])


def _local(name: str, value: str, storage: Path) -> str:
    """A `path` parameter's local file (absolute), or the download of a URI."""
    parts = urlsplit(value)
    if parts.scheme in ("", "file"):
        path = Path(parts.path if parts.scheme else value).resolve()
        if not path.exists():
            raise UsageError(f"Parameter {name}: no such file or folder {value}.", "pass an existing path")
        return str(path)
    import mlflow

    target = storage / name
    target.mkdir(parents=True, exist_ok=True)
    return mlflow.artifacts.download_artifacts(artifact_uri=value, dst_path=str(target))


def run_here(project: MLProject, entry_point: str, params: dict[str, str], experiment_id: str) -> Run:
    """Make the run `mlflow run <project folder> -e ENTRY --env-manager local -P ...` makes and run its command
    in this process (a `python step.py` script) or a shell; return the ended run."""
    import mlflow

    folder = project.folder.resolve()
    if entry_point not in project.commands:
        raise UsageError(f"The {entry_point} entry point of {folder / 'MLproject'} has no command.",
                         "give it `command: python step.py ...`")
    declared = project.entry_points[entry_point]
    check_values(declared, params, f"The {entry_point} entry point of {folder.name}")
    client = mlflow_client()
    with tempfile.TemporaryDirectory(prefix="windpipe-params-") as storage:
        command = entry_point_command(project, entry_point, params, Path(storage))
        run_id = create_project_run(client, experiment_id, project_tags(folder, entry_point),
                                    logged_params(declared, params))
        code = _execute(command, folder, {"MLFLOW_RUN_ID": run_id, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
                                          "MLFLOW_EXPERIMENT_ID": str(experiment_id)})
    run = client.get_run(run_id)
    if run.info.status == "RUNNING":  # (the command ended without ending its run, as `mlflow run` handles it)
        client.set_terminated(run_id, "FINISHED" if code in (0, None) else "FAILED")
        run = client.get_run(run_id)
    return run


def _execute(command: str, work_dir: Path, env: dict[str, str]) -> object:
    """Run `command` in `work_dir` with `env` added, `python x.py ...` in this interpreter; return its exit code."""
    argv = shlex.split(command)
    saved = (os.getcwd(), list(sys.argv), list(sys.path))
    code: object = 0
    try:
        with environment(env):
            os.chdir(work_dir)
            if len(argv) >= 2 and argv[0] == "python" and argv[1].endswith(".py"):
                sys.argv, sys.path[:0] = argv[1:], [str(work_dir)]  # as `python step.py ...` would see them
                try:
                    runpy.run_path(argv[1], run_name="__main__")
                except SystemExit as exc:
                    code = exc.code
            else:  # not a Python script: as MLflow's local backend runs it
                code = subprocess.run(["bash", "-c", command], check=False).returncode
    finally:
        os.chdir(saved[0])
        sys.argv, sys.path[:] = saved[1], saved[2]
    return code

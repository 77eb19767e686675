"""The life of a step's MLflow run: connect, tag, and on a user error mark it FAILED with the reason."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from windpipe.errors import WindpipeError
from windpipe.settings import get_settings
from windpipe.tracking import connect, git_commit, tree_hash

STEP_TAG = "windpipe.step"
ENTRY_TAG = "windpipe.entry_point"
FAILURE_TAG = "windpipe.failure_reason"
CODE_VERSION_TAG = "windpipe.code_version"
DATA_DATE_TAG = "windpipe.data_date"
PACKAGE_DIR = Path(__file__).resolve().parent.parent


def code_version(step_dir: Path | None) -> str:
    """Git commit plus a hash of the step folder and the library (uncommitted edits count)."""
    paths = [PACKAGE_DIR] + ([step_dir.resolve()] if step_dir else [])
    commit = git_commit(PACKAGE_DIR) or "nogit"
    return f"{commit[:12]}-{tree_hash(paths)}"


@contextlib.contextmanager
def step_run(step: str, entry_point: str = "main", step_dir: Path | None = None,
             run_name: str | None = None, nested: bool = False) -> Iterator[object]:
    """Open (or join, under `mlflow run`) the step's run.

    A WindpipeError inside ends the run FAILED with the reason as a tag and is re-raised,
    so the step exits non-zero with a clear message.
    """
    import mlflow

    connect(get_settings())
    tags = {STEP_TAG: step, ENTRY_TAG: entry_point, CODE_VERSION_TAG: code_version(step_dir)}
    commit = git_commit(PACKAGE_DIR)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    # under `mlflow run` MLFLOW_RUN_ID names the run already created for us; start_run(run_id=None)
    # joins it and unsets the variable, so runs started inside (nested grid runs) are new runs
    joined = bool(os.environ.get("MLFLOW_RUN_ID"))
    run = mlflow.start_run(run_name=run_name, nested=nested, tags=tags)
    try:
        with run:
            if joined:
                mlflow.set_tags(tags)
            yield run
    except WindpipeError as exc:
        client = mlflow.MlflowClient()
        client.set_tag(run.info.run_id, FAILURE_TAG, str(exc)[:4000])
        client.set_terminated(run.info.run_id, status="FAILED")
        raise


def run_step(func, *args, **kwargs) -> None:  # noqa: ANN001 - any step body
    """Run a step body from a script: user errors print as `error: ...` and exit 1."""
    import sys

    from windpipe.procs import skip_final_gc

    try:
        func(*args, **kwargs)
    except WindpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        skip_final_gc()

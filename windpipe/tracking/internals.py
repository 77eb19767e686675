"""Every use of MLflow beyond its documented API, in one place; tests/test_mlflow_internals.py checks each one
against the installed MLflow, so an upgrade that changes them fails there, not on a user's machine.

- `step_process(submitted)`: the process behind a run `mlflow.projects.run(..., synchronous=False)` started
  (the local backend's `LocalSubmittedRun.command_proc`). `SubmittedRun.cancel()` only signals the process
  group and waits; stopping a pipeline ends the whole process tree, with SIGKILL for what lingers.
- `initialize_stores(backend_uri, artifact_root)`: create or migrate the tracking and registry tables before
  the server accepts requests, as `mlflow server` does (`mlflow.server.handlers.initialize_backend_stores`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

    from mlflow.projects.submitted_run import SubmittedRun


def step_process(submitted: SubmittedRun) -> subprocess.Popen | None:
    """The local process of a submitted project run (None for a backend that runs elsewhere)."""
    return getattr(submitted, "command_proc", None)


def initialize_stores(backend_uri: str, artifact_root: str) -> None:
    """Create or migrate the tracking and model registry tables of `backend_uri` (SQLite or PostgreSQL), with
    `artifact_root` for the Default experiment, in this process: the server's handlers then use these stores."""
    from mlflow.server.handlers import initialize_backend_stores

    initialize_backend_stores(backend_uri, backend_uri, artifact_root)

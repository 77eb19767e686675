"""Every use of MLflow beyond its documented API, in one place; tests/test_mlflow_internals.py checks each one
against the installed MLflow, so an upgrade that changes them fails there, not on a user's machine.

- `run_project_in(run_id, ...)`: `mlflow.projects.run(..., run_id=...)` runs a project in a run the caller
  made (MLflow documents `run_id` as meant for its own use: `mlflow run --run-id`). The launcher makes each
  step's run itself, tagged for the cache and as a child of the pipeline run before the step starts, and
  runs it synchronously on a worker thread: MLflow Projects then starts the entry point's command directly.
  (`synchronous=False` starts an `mlflow run` process in between: 4-5 s more per step, docs/DEVELOPING.md.)
- `initialize_stores(backend_uri, artifact_root)`: create or migrate the tracking and registry tables before
  the server accepts requests, as `mlflow server` does (`mlflow.server.handlers.initialize_backend_stores`).
- `pinned_requirements()`: while a model is logged with requirements pinned from this environment, MLflow's
  check of them against the installed versions skips its map of every installed distribution's modules
  (`mlflow.utils.requirements_utils._MODULES_TO_PACKAGES`, built by reading every RECORD file: 0.5 s of a
  step's 5 s); the check itself still runs.
- `use_git_tags(tags)`: MLflow's git run context (`mlflow.tracking.context.git_context.GitRunContext`, which tags
  each new run and logged model with the commit, branch and repository of the main file's checkout) answers
  with the tags windpipe read of the step's checkout, instead of importing GitPython and asking git again
  (0.1 s of a step's fixed cost).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path


def run_project_in(run_id: str, folder: Path | str, entry_point: str, parameters: Mapping[str, str],
                   experiment_id: str, env_manager: str) -> None:
    """Run the MLflow project in `folder` in the existing run `run_id` and wait for it; MLflow Projects sets
    the environment tag, starts the command with `MLFLOW_RUN_ID`, and ends the run if the command did not.
    Raises mlflow's ExecutionException when the command fails (the run is then ended) or cannot start (a bad
    parameter or project: the run is left RUNNING)."""
    import mlflow.projects

    mlflow.projects.run(str(folder), entry_point, parameters=dict(parameters), experiment_id=experiment_id,
                        env_manager=env_manager, synchronous=True, run_id=run_id)


def initialize_stores(backend_uri: str, artifact_root: str) -> None:
    """Create or migrate the tracking and model registry tables of `backend_uri` (SQLite or PostgreSQL), with
    `artifact_root` for the Default experiment, in this process: the server's handlers then use these stores."""
    from mlflow.server.handlers import initialize_backend_stores

    initialize_backend_stores(backend_uri, backend_uri, artifact_root)


@contextmanager
def pinned_requirements() -> Iterator[None]:
    """Log models with `pip_requirements` pinned to this environment's versions without the 0.5 s scan.

    MLflow checks each requirement with `importlib.metadata.version(name)`; it consults its module map only to
    import a package whose metadata is missing (`_get_installed_version`), which a requirement pinned from
    this environment's metadata never is. An empty map for the duration skips building it; MLflow's map is
    left as it was (unbuilt) afterwards, so a later inference of requirements builds the full one."""
    from mlflow.utils import requirements_utils

    if requirements_utils._MODULES_TO_PACKAGES is not None:  # already built in this process: nothing to save
        yield
        return
    requirements_utils._MODULES_TO_PACKAGES = {}
    try:
        yield
    finally:
        requirements_utils._MODULES_TO_PACKAGES = None
        requirements_utils._PACKAGES_TO_MODULES = None


def use_git_tags(tags: Mapping[str, str]) -> None:
    """MLflow's git run context, in this process, answers with `tags` (mlflow.source.git.commit, .branch,
    .repoURL: windpipe.tracking.runs.git_tags of the step's folder; {} outside git: no git tags, as MLflow
    gives outside git). It caches its answer per process; this gives it the answer before its first question."""
    from mlflow.tracking.context.git_context import GitRunContext
    from mlflow.tracking.context.registry import _run_context_provider_registry

    for provider in _run_context_provider_registry._registry:
        if isinstance(provider, GitRunContext):
            provider._cache["git_info"] = dict(tags)

"""Connecting to the tracking server, and the tags every run carries."""

from __future__ import annotations

import hashlib
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from windpipe.errors import WindpipeError
from windpipe.settings import Settings, get_settings


def connect(settings: Settings | None = None, experiment: bool = True) -> str:
    """Point MLflow at the configured tracking server after checking that it answers.

    Returns the tracking URI. Raises WindpipeError (with `windpipe up` as the fix) when an
    http(s) server does not answer, instead of MLflow's long retry loop.
    """
    import mlflow

    settings = settings or get_settings()
    uri = settings.effective_tracking_uri
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as resp:
                resp.read()
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise WindpipeError(
                f"The MLflow tracking server at {uri} is unreachable ({reason}).",
                "run `windpipe up` (or set MLFLOW_TRACKING_URI to a server that runs)",
            ) from None
    mlflow.set_tracking_uri(uri)
    # under `mlflow run` the run exists already, in the experiment the caller chose
    if experiment and not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(settings.experiment)
    return uri


def git_commit(path: Path | str = ".") -> str | None:
    """The commit of the git checkout holding `path`, or None outside git."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def tree_hash(paths: list[Path]) -> str:
    """A hash of the content of all files below `paths` (code version of uncommitted work)."""
    digest = hashlib.sha256()
    for root in paths:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for f in files:
            if {"__pycache__", ".git"} & set(f.relative_to(root).parts) or f.suffix == ".pyc":
                continue
            digest.update(str(f.relative_to(root.parent)).encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()[:16]

"""`windpipe export-step`: a step folder -> a standalone git repository that `mlflow run` can take.

The windpipe dependency is *vendored*: a copy of this checkout's `windpipe` package goes into
the repository beside `step.py` (where the `windpipe` link was), so the repository runs anywhere
with no package index and no reachable git remote, and its commit pins the library exactly.
The cost: the copy does not follow later windpipe fixes; export again to pick them up.
See docs/steps.md for the alternatives (a pip git requirement, a wheel in the repository).
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from windpipe.errors import UsageError, WindpipeError
from windpipe.fileio import atomic_folder
from windpipe.pipeline.interfaces import MLPROJECT_FILE, SPEC_FILE, load_interface
from windpipe.settings import package_dir
from windpipe.tracking.runs import git_commit, tree_hash

SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "mlruns", "mlartifacts", "outputs",
                              ".ruff_cache", "*.egg-info", ".ipynb_checkpoints", ".git")
GITIGNORE = "__pycache__/\n*.pyc\n.pytest_cache/\nmlruns/\nmlartifacts/\noutputs/\n.windpipe/\n"
EXPORT_NOTE = "EXPORTED.md"


@dataclass(frozen=True)
class ExportResult:
    """The new repository and its initial commit (pass it to `mlflow run DEST --version <commit>`)."""

    dest: Path
    commit: str
    step: str


def _git(repo: Path, *args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=60, check=True)
    except FileNotFoundError:
        raise WindpipeError("git is not installed.", "install git (e.g. apt-get install git)") from None
    except subprocess.CalledProcessError as exc:
        raise WindpipeError(f"git {' '.join(args)} failed in {repo}: {exc.stderr.strip()[:500]}",
                            "check the git installation and the destination folder") from None
    return out.stdout.strip()


def _git_config(repo: Path, key: str) -> str:
    proc = subprocess.run(["git", "config", "--get", key], cwd=repo, capture_output=True, text=True, timeout=30)
    return proc.stdout.strip()


def _source_commit() -> str:
    return git_commit(package_dir()) or "no git"


def _note(step: str, source: Path) -> str:
    from windpipe import __version__

    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""# The `{step}` step as its own repository

Exported {when} by `windpipe export-step` from `{source}` (windpipe {__version__},
source commit `{_source_commit()[:12]}`, library hash `{tree_hash([package_dir()])}`).

```bash
git -C . log --oneline -1                       # the commit to pin
mlflow run . --version <commit> --env-manager local [-P name=value ...]
mlflow run file://$PWD --version <commit>       # same, building the env from python_env.yaml
```

The run records the commit as its `mlflow.source.git.commit` tag. `step.yaml` is the step's
interface (inputs, outputs, parameters); `MLproject` its entry points.

**The windpipe dependency is vendored**: `windpipe/` here is a copy of the library at the
version above, so this repository runs anywhere with no package index and no git remote, and
its commit pins step and library together. It does not follow later windpipe fixes: export the
step again (or replace `windpipe/`) to update. Note that `mlflow run <local repo> --version`
checks the commit out in place (detached HEAD); clone the repository first to keep your branch.
"""


def export_step(step_dir: Path | str, dest: Path | str) -> ExportResult:
    """Copy the step at `step_dir` plus a vendored windpipe into a new git repository at `dest`.

    `dest` must not exist or be an empty folder. The repository is built in a temporary folder
    beside `dest` and renamed into place only when its initial commit exists: on any error
    nothing is written.
    """
    step_dir, dest = Path(step_dir), Path(dest).expanduser()
    if not (step_dir / MLPROJECT_FILE).is_file():
        raise UsageError(f"{step_dir} is not a step folder (it has no {MLPROJECT_FILE}).",
                         "pass a folder like projects/lr")
    if not (step_dir / SPEC_FILE).is_file():
        raise UsageError(f"{step_dir} has no {SPEC_FILE} (the step's interface).",
                         "write it first (see docs/steps.md); a step leaves the monorepo with its interface")
    spec = load_interface(step_dir)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise UsageError(f"The destination {dest} exists and is not empty.", "export into a new or empty folder")
    with atomic_folder(dest) as tmp:
        for item in sorted(step_dir.iterdir()):
            if item.name == "windpipe" or SKIP(str(step_dir), [item.name]):
                continue
            if item.is_dir():
                shutil.copytree(item, tmp / item.name, ignore=SKIP)
            else:
                shutil.copy2(item, tmp / item.name)
        shutil.copytree(package_dir(), tmp / "windpipe", ignore=SKIP)
        (tmp / ".gitignore").write_text(GITIGNORE, encoding="utf-8")
        (tmp / EXPORT_NOTE).write_text(_note(spec.name, step_dir), encoding="utf-8")
        _git(tmp, "-c", "init.defaultBranch=main", "init", "-q")
        if not _git_config(tmp, "user.name"):
            _git(tmp, "config", "user.name", "windpipe export")
        if not _git_config(tmp, "user.email"):
            _git(tmp, "config", "user.email", "windpipe@localhost")
        _git(tmp, "add", "-A")
        _git(tmp, "-c", "commit.gpgsign=false", "commit", "-q", "-m",
             f"Export step {spec.name} with windpipe vendored (source {_source_commit()[:12]})")
        commit = _git(tmp, "rev-parse", "HEAD")
        if dest.exists() and any(dest.iterdir()):
            raise UsageError(f"The destination {dest} exists and is not empty.", "export into a new or empty folder")
    return ExportResult(dest=dest.resolve(), commit=commit, step=spec.name)

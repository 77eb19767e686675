"""The runs of steps: opening one (tags, code version, FAILED with a reason), finding the latest ones."""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from windpipe import identity, names
from windpipe.errors import WindpipeError, first_line
from windpipe.faults import fault_point
from windpipe.settings import get_settings, package_dir
from windpipe.tracking.client import ServerDown, connect, diagnose, mlflow_client, probe_health
from windpipe.tracking.internals import use_git_tags

if TYPE_CHECKING:
    from mlflow.entities import Run


def git_output(folder: Path | str, *args: str) -> str | None:
    """What `git ARGS` in `folder` prints (stripped), or None when git fails or is missing."""
    try:
        out = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def git_commit(path: Path | str = ".") -> str | None:
    """The commit of the git checkout holding `path`, or None outside git."""
    return git_output(path, "rev-parse", "HEAD")


def without_credentials(url: str) -> str:
    """A remote URL without the user and token some HTTPS remotes carry (a tag is shown to everyone)."""
    parts = urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, parts.query, parts.fragment))


def git_tags(folder: Path) -> dict[str, str]:
    """The git tags MLflow's run context gives a new run or logged model whose code is in `folder`: its checkout's
    commit, branch (none when detached) and first remote's URL (without credentials); {} outside git."""
    commit = git_commit(folder)
    if not commit:
        return {}
    tags = {names.MLFLOW_GIT_COMMIT_TAG: commit}
    branch = git_output(folder, "rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":
        tags[names.MLFLOW_GIT_BRANCH_TAG] = branch
    remote = (git_output(folder, "remote") or "").split()
    url = git_output(folder, "remote", "get-url", remote[0]) if remote else None
    if url:
        tags[names.MLFLOW_GIT_REPO_URL_TAG] = without_credentials(url)
    return tags


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


def code_version(step_dir: Path | None, commit: str | None = None) -> str:
    """Git commit (`commit`: the library's, when the caller has it) plus a hash of the step folder and the library
    (uncommitted edits count)."""
    paths = [package_dir()] + ([step_dir.resolve()] if step_dir else [])
    commit = commit or git_commit(package_dir()) or "nogit"
    return f"{commit[:12]}-{tree_hash(paths)}"


def process_tags() -> dict[str, str]:
    """The tag that says which process runs a run (host, pid, start time): a run whose process is gone
    while it is still RUNNING was killed (`mark_killed_runs`)."""
    return {names.PROCESS_TAG: str(identity.current())}


class Stopped(KeyboardInterrupt):
    """SIGTERM turned into an exception, so that `with` blocks clean up and runs end KILLED."""


def _stop(signum: int, _frame: object) -> None:
    raise Stopped(f"stopped by signal {signum}")


@contextlib.contextmanager
def terminate_cleanly() -> Iterator[None]:
    """Inside the block SIGTERM raises `Stopped` (a KeyboardInterrupt) instead of ending the process on the
    spot: files and transactions are undone and the run ends KILLED. (Main thread only; else a no-op.)"""
    import signal

    try:
        old = signal.signal(signal.SIGTERM, _stop)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def termination_deferred() -> Iterator[None]:
    """SIGTERM and SIGINT arriving inside the block take effect at its end (steps that must not be split:
    a commit and the rename that goes with it). Main thread only; elsewhere a no-op.

    (Python runs signal handlers in the main thread whichever thread the signal reaches, so holding the
    signal in a handler works where blocking it with a signal mask would not: other threads would take it.)
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = {sig: signal.signal(sig, lambda signum, _frame: caught.append(signum))
           for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if caught:
            signal.raise_signal(caught[0])  # now the usual handler acts on it


@contextlib.contextmanager
def step_run(step: str, entry_point: str = "main", step_dir: Path | None = None,
             run_name: str | None = None, nested: bool = False, native_log: bool = True) -> Iterator[Run]:
    """Open (or join, under `mlflow run`) the step's run, tagged with the process that runs it.

    A WindpipeError inside ends the run FAILED with the reason as a tag and is re-raised, so the step
    exits non-zero with a clear message. Ctrl-C or SIGTERM end it KILLED. Any other error while the
    tracking server or its artifact store is down becomes a WindpipeError naming the server that is
    down (within seconds: MLflow's retries are bounded by the settings). Diagnostics go to the run's
    log file (`windpipe.tracking.output.run_log`; `native_log=False` for a run that starts step processes).
    """
    import mlflow

    from windpipe.tracking.output import run_log

    settings = get_settings()
    connect(settings)
    commit = git_commit(package_dir())
    tags = {names.STEP_TAG: step, names.ENTRY_TAG: entry_point, names.CODE_VERSION_TAG: code_version(step_dir, commit),
            **process_tags()}
    if commit:
        tags[names.MLFLOW_GIT_COMMIT_TAG] = commit
    # the step's child runs and logged model get their git tags from MLflow's run context: answered with what git
    # says of the step's folder (a few milliseconds) instead of GitPython's import and its own git processes (0.1 s)
    use_git_tags(git_tags(step_dir.resolve() if step_dir else package_dir()))
    # under `mlflow run` MLFLOW_RUN_ID names the run already created for us; start_run(run_id=None)
    # joins it (adding `tags` to it) and unsets the variable, so runs started inside (nested grid runs) are new runs
    run = mlflow.start_run(run_name=run_name, nested=nested, tags=tags)
    with run_log(run, run_name or step, native=native_log):
        try:
            with terminate_cleanly(), run:
                fault_point(f"step:{step}")
                yield run
        except WindpipeError as exc:
            exc = _diagnosed(exc, settings)
            _end_quietly(run.info.run_id, str(exc))
            raise exc from None
        except KeyboardInterrupt as exc:
            reason = f"{step} was stopped ({exc or 'Ctrl-C'})"
            _end_quietly(run.info.run_id, reason, "KILLED")
            print(f"stopped: {reason}; the run {run.info.run_id} ends KILLED", file=sys.stderr)
            raise
        except Exception as exc:
            inner = _step_error(exc)
            if inner is not None:  # ending the run failed after the step's own error (one PostgreSQL behind both)
                inner = _diagnosed(inner, settings)
                _end_quietly(run.info.run_id, str(inner))
                raise inner from None
            down = diagnose(settings)
            if down is None:
                raise
            problem = ServerDown(f"The {step} step stopped: {down.problem} ({type(exc).__name__}: {first_line(exc)})",
                                 f"{down.fix}; then run it again" if down.fix else None)
            _end_quietly(run.info.run_id, str(problem))
            raise problem from None


def _diagnosed(exc: WindpipeError, settings: Any) -> WindpipeError:
    """The step's error, with the server that is down named when one is (the error may only be what a server
    that died looks like from here: an entity that cannot be fetched while the tracking store's database is gone)."""
    down = None if isinstance(exc, ServerDown) else diagnose(settings)
    return exc if down is None else ServerDown(f"{exc.problem.rstrip('.')}: {down.problem}", down.fix)


def _step_error(exc: BaseException) -> WindpipeError | None:
    """The step's own WindpipeError that was being handled when `exc` came up (MLflow ending the run), if any."""
    seen: set[int] = set()
    inner = exc.__context__
    while inner is not None and id(inner) not in seen and not isinstance(inner, WindpipeError):
        seen.add(id(inner))
        inner = inner.__context__
    return inner if isinstance(inner, WindpipeError) else None


@contextlib.contextmanager
def child_run(run_name: str, tags: dict[str, str]) -> Iterator[Run]:
    """A nested run of the active step run (a grid point), tagged with this process; Ctrl-C or SIGTERM end
    it KILLED (MLflow would say FAILED), so no child is left RUNNING or blamed on an error."""
    import mlflow

    child = mlflow.start_run(nested=True, run_name=run_name, tags={**tags, **process_tags()})
    try:
        with child:
            yield child
    except KeyboardInterrupt as exc:  # (after MLflow ended it FAILED)
        _end_quietly(child.info.run_id, f"stopped ({exc or 'Ctrl-C'})", "KILLED")
        raise


def _end_quietly(run_id: str, reason: str, status: str = "FAILED") -> None:
    """fail_run, unless the tracking server cannot take it (then the run stays RUNNING until a later
    pipeline or `windpipe status` sees its process is gone and marks it KILLED)."""
    import mlflow

    try:
        probe_health(mlflow.get_tracking_uri(), timeout=2.0)  # (down: no retry loop for nothing)
        fail_run(run_id, reason, status)
    except Exception:
        pass


def mark_killed_runs(client: Any, experiment_ids: Iterable[str] | None = None) -> list[str]:
    """End KILLED every RUNNING run whose process is gone; return their ids.

    Gone: the run's process tag names a process of this host that no longer runs (a kill -9, a lost
    machine session), or the run has no process tag and its parent run is gone or no longer RUNNING
    (e.g. a grid child whose step was killed). Runs of other hosts, and runs too new to carry the tag,
    are left alone. `experiment_ids` None: every active experiment.
    """
    if experiment_ids is None:
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
    ids = list(experiment_ids)
    if not ids:
        return []
    running = {r.info.run_id: r for r in client.search_runs(ids, filter_string="attributes.status = 'RUNNING'",
                                                             max_results=1000)}

    def gone(run: Any, depth: int = 0) -> str | None:
        proc = identity.ProcessId.parse(run.data.tags.get(names.PROCESS_TAG))
        if proc is not None:
            return f"its process ({proc}) is gone" if proc.running() is False else None
        parent = run.data.tags.get(names.MLFLOW_PARENT_RUN_TAG)
        if not parent or depth > 5:
            return None
        if parent in running:
            return f"its parent run {parent} was killed" if gone(running[parent], depth + 1) else None
        return f"its parent run {parent} ended"

    killed = []
    for run_id, run in running.items():
        why = gone(run)
        if why:
            fail_run(run_id, f"killed: the run was still RUNNING but {why}", "KILLED", client)
            killed.append(run_id)
    return killed


def fail_run(run_id: str, reason: str, status: str = "FAILED", client: Any = None) -> None:
    """End a run FAILED (or KILLED) with the reason in the failure tag."""

    client = client or mlflow_client()
    client.set_tag(run_id, names.FAILURE_TAG, reason[:4000])
    client.set_terminated(run_id, status=status)


def log_batch(params: dict[str, object], metrics: dict[str, float] | None = None,
              tags: dict[str, str] | None = None, skip_logged: bool = True) -> None:
    """Params, metrics and tags of the active run in one request; params the run already has are skipped
    (`mlflow run` logs the MLproject parameters as typed, e.g. seed=42.0; MLflow refuses to change them).
    `skip_logged=False`: a run started here has none, so the look-up is saved."""
    import mlflow
    from mlflow.entities import Metric, Param, RunTag

    run_id = mlflow.active_run().info.run_id
    client = mlflow_client()
    have = client.get_run(run_id).data.params if skip_logged else {}
    now = int(time.time() * 1000)
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items() if k not in have],
                     metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
                     tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])


def experiment_id(client: Any = None, name: str | None = None) -> str | None:
    """The id of the experiment of the active run, else of `name` (default: settings.experiment)."""
    import mlflow

    run = mlflow.active_run()
    if run is not None:
        return run.info.experiment_id
    exp = (client or mlflow_client()).get_experiment_by_name(name or get_settings().experiment)
    return exp.experiment_id if exp is not None else None


def latest_runs(filter_string: str, experiment_ids: Iterable[str] | None = None, max_results: int = 1,
                finished: bool = True) -> list[Run]:
    """The newest runs matching `filter_string` (FINISHED ones only by default), newest first."""
    import mlflow

    filt = " and ".join(f for f in (filter_string, "attributes.status = 'FINISHED'" if finished else "") if f)
    ids = list(experiment_ids) if experiment_ids is not None else [i for i in [experiment_id()] if i]
    kwargs: dict[str, Any] = {"experiment_ids": ids} if ids else {"search_all_experiments": True}
    return mlflow.search_runs(filter_string=filt, order_by=["attributes.start_time DESC"], max_results=max_results,
                              output_format="list", **kwargs)


def input_uri(entity: str, value: object) -> str:
    """What a step reads for `entity` when its parameter says `value`: empty or `latest` -> the URI the newest
    finished run wrote (`latest_entity_uri`); a local path -> made absolute; any other URI as given.
    The one resolver of `latest` for every step (record the result under `names.input_tag(entity)`)."""
    text = str(value or "").strip()
    if text in ("", names.LATEST):
        return latest_entity_uri(entity)
    return str(Path(text).resolve()) if names.is_path(text) else text


def latest_entity_uri(entity: str, experiment_ids: Iterable[str] | None = None) -> str:
    """The URI of `entity` in the newest finished run that wrote it (tag windpipe.entity.<name>)."""
    tag = names.entity_tag(entity)
    runs = latest_runs(f"tags.`{tag}` LIKE '%'", experiment_ids)
    if not runs:
        raise WindpipeError(f"No finished run has written the {entity!r} entity yet (no run tagged {tag}).",
                            f"run the step that produces {entity} first, or pass its URI "
                            f"(runs:/<run_id>/entities/{entity}.parquet or a local file)")
    return runs[0].data.tags[tag]


@dataclass(frozen=True)
class StepStatus:
    """A step's latest run: run id, status (FINISHED, FAILED, ...), start (UTC, ms), duration and reason."""

    step: str
    status: str
    run_id: str | None = None
    run_name: str = ""
    entry_point: str = ""
    start_ms: int | None = None
    end_ms: int | None = None
    reason: str = ""

    @property
    def duration_s(self) -> float | None:
        return (self.end_ms - self.start_ms) / 1000.0 if self.end_ms and self.start_ms else None


def latest_step_runs(client: Any, experiment: str, steps: Iterable[str] | None = None,
                     max_results: int = 500) -> dict[str, StepStatus]:
    """The latest run of each step (by the step tag) in `experiment`, any status; `steps` given:
    every one of them, those without a run as `NO RUNS`."""
    exp = client.get_experiment_by_name(experiment)
    runs = [] if exp is None else client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{names.STEP_TAG}` != ''",
        order_by=["attributes.start_time DESC"], max_results=max_results)
    out: dict[str, StepStatus] = {}
    for run in runs:
        step = run.data.tags.get(names.STEP_TAG)
        if not step or step in out or run.data.tags.get(names.ENTRY_TAG) == "grid_child":
            continue
        out[step] = StepStatus(step, run.info.status, run.info.run_id, run.info.run_name or "",
                               run.data.tags.get(names.ENTRY_TAG, ""), run.info.start_time, run.info.end_time,
                               run.data.tags.get(names.FAILURE_TAG, ""))
    if steps is not None:
        out = {s: out.get(s, StepStatus(s, "NO RUNS")) for s in steps}
    return out

"""Quiet, useful output: a person reads the step, its progress, its result and where to look; diagnostics go
to the step run's log file (the run's artifact `logs/<step>.log`) and show on the console with `--verbose`.

- `quiet_environment(env)`: the variables that keep library chatter out of a windpipe process and of the step
  processes it starts (they inherit it): MLflow prints no "View run" lines and leaves its loggers to us (the
  projects backend ends every step run a second time and printed the lines twice: windpipe prints one line
  per run itself), TensorFlow's C++ log level, no artifact progress bars in logs.
- `configure_logging()`: the console shows windpipe's warnings and other libraries' errors, nothing more
  (everything with `--verbose`); Python warnings become log records; Keras draws no per-batch progress bars
  when the output is not a terminal.
- `run_log(...)`: while a step run is open, every log record at INFO and up, and (`native=True`) whatever C and
  C++ libraries write to the process's stderr (TensorFlow and absl write there before anything can silence
  them), go to a log file, logged as an artifact of the run when it ends; then the run's one line.

`WINDPIPE_VERBOSE=1` (`windpipe --verbose ...`) turns all of it off for a process and its children.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from windpipe.settings import get_settings

if TYPE_CHECKING:
    from mlflow.entities import Run

log = logging.getLogger("windpipe")
VERBOSE_VAR = "WINDPIPE_VERBOSE"
LOG_ARTIFACT_DIR = "logs"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def verbose() -> bool:
    """True when this process shows its diagnostics (`--verbose`, WINDPIPE_VERBOSE=1)."""
    return get_settings().verbose


def quiet_environment(env: MutableMapping[str, str] | None = None,
                      show: bool | None = None) -> MutableMapping[str, str]:
    """Set the quiet variables in `env` (default: this process's environment, which step processes inherit).

    A value the user set stays. `show` (default: `verbose()`) keeps MLflow's and TensorFlow's own output.
    """
    env = os.environ if env is None else env
    show = verbose() if show is None else show
    values = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}  # windpipe prints one line per run
    if show:
        values[VERBOSE_VAR] = "1"
    else:
        values["MLFLOW_CONFIGURE_LOGGING"] = "false"  # MLflow's records go through configure_logging
        values["TF_CPP_MIN_LOG_LEVEL"] = "2"  # TensorFlow's own C++ INFO and WARNING lines
        if not sys.stderr.isatty():
            values["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    for key, value in values.items():
        if key not in env:
            env[key] = value
            if env is os.environ:
                _added.add(key)
    return env


_added: set[str] = set()


def user_environment() -> dict[str, str]:
    """This process's environment without what `quiet_environment` added: for programs a person uses
    directly (JupyterLab's kernels keep MLflow's own run links and logging)."""
    return {k: v for k, v in os.environ.items() if k not in _added}


class _ConsoleFilter(logging.Filter):
    """windpipe's own warnings are for a person; other libraries speak up only for errors."""

    def __init__(self, show_all: bool) -> None:
        super().__init__()
        self.show_all = show_all

    def filter(self, record: logging.LogRecord) -> bool:
        if self.show_all:
            return True
        own = record.name == "windpipe" or record.name.startswith("windpipe.")
        return record.levelno >= (logging.WARNING if own else logging.ERROR)


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever `sys.stderr` is at the time (run_log rebinds it)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


_console: logging.Handler | None = None


def configure_logging(show: bool | None = None) -> None:
    """Logging for a windpipe process (idempotent): see the module docstring."""
    global _console
    show = verbose() if show is None else show
    root = logging.getLogger()
    if _console is None:
        _console = _Stderr()
        root.addHandler(_console)
    _console.filters = [_ConsoleFilter(show)]
    _console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if show else "%(message)s"))
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    if not show and not sys.stdout.isatty():
        _quiet_keras()


class _QuietKeras(importlib.abc.MetaPathFinder):
    """Turn off Keras's interactive logging as soon as Keras is imported.

    Keras draws its per-batch progress bars with terminal control characters even into a log (it counts any
    POSIX system as a terminal) and has no environment variable to stop it; importing Keras up front to call
    `keras.config.disable_interactive_logging()` would cost every step seconds. With it off, the progress goes
    to the `absl` logger, i.e. to the run's log file.
    """

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "keras":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_quiet(module: Any) -> None:
            exec_module(module)
            module.config.disable_interactive_logging()

        spec.loader.exec_module = exec_and_quiet  # type: ignore[method-assign]
        return spec


def _quiet_keras() -> None:
    if "keras" in sys.modules:
        sys.modules["keras"].config.disable_interactive_logging()
    elif not any(isinstance(f, _QuietKeras) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietKeras())


def setup_process() -> None:
    """The quiet environment and logging for a windpipe process: the CLI, a step script."""
    quiet_environment()
    configure_logging()


def run_url(run: Run, tracking_uri: str) -> str | None:
    """The run's page in the MLflow UI (None when the tracking URI is not a server)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"


@contextlib.contextmanager
def _native_stderr_to(fd: int) -> Iterator[None]:
    """Point file descriptor 2 at `fd` (C/C++ libraries write there); Python's sys.stderr stays on the console."""
    old_stderr = sys.stderr
    with contextlib.suppress(Exception):
        old_stderr.flush()
    try:
        on_fd2 = old_stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # replaced by a StringIO or the like: leave it be
        on_fd2 = False
    saved = os.dup(2)
    console = None
    if on_fd2:
        console = io.TextIOWrapper(os.fdopen(os.dup(saved), "wb", buffering=0), write_through=True,
                                   encoding=getattr(old_stderr, "encoding", None) or "utf-8",
                                   errors="backslashreplace")
        sys.stderr = console
    os.dup2(fd, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr = old_stderr
        if console is not None:
            with contextlib.suppress(Exception):
                console.close()


@contextlib.contextmanager
def run_log(run: Run, step: str, native: bool = True) -> Iterator[Path]:
    """Send the diagnostics of this process to a log file while the run is open; log it as the run's artifact
    `logs/<step>.log` at the end and print the run's one line (`<step> run: <url>`).

    `native=False` leaves file descriptor 2 alone: for a run that starts step processes, which inherit it.
    With `--verbose` the console shows everything as well, and native output stays on it.
    """
    import mlflow

    show = verbose()
    with tempfile.TemporaryDirectory(prefix="windpipe-log-") as tmp:
        path = Path(tmp) / f"{step}.log"
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.setLevel(logging.INFO)
        root = logging.getLogger()
        old_level = root.level
        root.setLevel(min(root.level or logging.INFO, logging.INFO))
        root.addHandler(handler)
        redirect = native and not show
        log.info("%s run %s (tracking server %s)", step, run.info.run_id, mlflow.get_tracking_uri())
        try:
            with open(path, "ab", buffering=0) as raw, \
                    (_native_stderr_to(raw.fileno()) if redirect else contextlib.nullcontext()):
                try:
                    yield path
                except BaseException as exc:
                    log.info("the %s run ends with %s", step, type(exc).__name__, exc_info=True)
                    raise
        finally:
            root.removeHandler(handler)
            root.setLevel(old_level)
            handler.close()
            _upload(run, path)
            url = run_url(run, mlflow.get_tracking_uri())
            if url:
                print(f"{step} run: {url}", flush=True)


def _upload(run: Run, path: Path) -> None:
    from windpipe.tracking.client import mlflow_client

    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        mlflow_client().log_artifact(run.info.run_id, str(path), LOG_ARTIFACT_DIR)
    except Exception as exc:  # the artifact store may be what failed the run: the error says so
        if verbose():  # (the step's own error, printed next, names the server that is down)
            print(f"note: could not log {path.name} to the run ({type(exc).__name__}: "
                  f"{str(exc)[:200]})", file=sys.stderr, flush=True)

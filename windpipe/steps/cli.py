"""The command line of every step script, built from the step's MLproject.

    # projects/rf/step.py
    run_entry_points(Path(__file__).parent, **entry_points("rf"), grid=grid)

`python step.py ENTRY_POINT --name value ...` takes exactly the MLproject's parameters for that
entry point, with the MLproject's defaults and help texts (`help:` beside `type:` and `default:`),
so a default lives in one place. Each body is called as `body(step_dir=..., **params)` with the
parameter values as strings. A WindpipeError prints `error: ... fix: ...` and exits 1 (2 for a
usage error); the run is already FAILED with the reason (windpipe.tracking.runs.step_run).
Under the pipeline driver the step's output goes to its own log file (the driver shows a table).
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path

import typer

from windpipe.errors import UsageError, WindpipeError
from windpipe.settings import STEP_LOG_DIR_ENV, enter_process, parse_bool
from windpipe.stack.procs import skip_final_gc

Body = Callable[..., object]


def _add_command(app: typer.Typer, step_dir: Path, entry_point: str, body: Body) -> None:
    from windpipe.pipeline.interfaces import mlproject_entry_points

    params = mlproject_entry_points(step_dir)[entry_point]
    # typer reads the options from the callback's signature: build it from the MLproject
    signature = inspect.Signature([
        inspect.Parameter(p.name, inspect.Parameter.KEYWORD_ONLY, annotation=str,
                          default=typer.Option(... if p.required else p.default_text,
                                               f"--{p.name.replace('_', '-')}", help=p.help or None))
        for p in params.values()])

    def callback(**values: str) -> None:
        body(step_dir=step_dir, **values)

    func = getattr(body, "func", body)  # a functools.partial documents its function
    callback.__signature__ = signature  # type: ignore[attr-defined]
    callback.__doc__ = (func.__doc__ or "").strip().split("\n\n")[0] or None
    app.command(entry_point)(callback)


def entry_point_app(step_dir: Path, **bodies: Body) -> typer.Typer:
    """A typer app with one command per entry point; options and defaults from `<step_dir>/MLproject`."""
    from windpipe.pipeline.interfaces import mlproject_entry_points

    declared = mlproject_entry_points(step_dir)
    missing = sorted(set(declared) - set(bodies))
    extra = sorted(set(bodies) - set(declared))
    if missing or extra:
        raise WindpipeError(f"{step_dir / 'step.py'} and its MLproject disagree: entry points "
                            f"{', '.join(missing) or '-'} lack a body; {', '.join(extra) or '-'} are not in the "
                            "MLproject.", "give run_entry_points one body per MLproject entry point")
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                      help=f"The {step_dir.name} step (MLflow project {step_dir}).")

    @app.callback()
    def group() -> None:  # a group even with one entry point: the command line names it, as the MLproject does
        pass

    for name, body in bodies.items():
        _add_command(app, step_dir, name, body)
    return app


def redirect_output(step_dir: Path) -> None:
    """When the pipeline driver asks for it (WINDPIPE_STEP_LOG_DIR), send this process's output to
    <dir>/<step folder>.log: steps running side by side would otherwise interleave on one terminal."""
    folder = os.environ.get(STEP_LOG_DIR_ENV)
    if not folder:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(Path(folder) / f"{step_dir.name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout.reconfigure(line_buffering=True)  # the driver shows the last line while the step runs


def run_entry_points(step_dir: Path | str, **bodies: Body) -> None:
    """The step script's main: parse the command line, run the entry point's body, exit with its outcome."""
    from windpipe.tracking.output import setup_process

    setup_process()  # before anything imports MLflow or TensorFlow: quiet console, diagnostics to the run's log
    step_dir = Path(step_dir).resolve()
    redirect_output(step_dir)
    enter_process()  # telemetry off, bounded MLflow retries, a tracking URI: before MLflow is imported
    code = 0
    try:
        entry_point_app(step_dir, **bodies)(prog_name=f"{step_dir.name}/step.py")  # usage errors: exit 2
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except WindpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    finally:
        skip_final_gc()
    sys.exit(code)


def flag(value: str | bool) -> bool:
    """An MLproject flag (string parameter) as a bool (`windpipe.settings.parse_bool`: true/false, 1/0, yes/no)."""
    try:
        return parse_bool(value)
    except ValueError:
        raise UsageError(f"{value!r} is not true or false.", "pass true or false") from None

"""The `windpipe` command: one typer app made of the command groups in this package.

Each module holds its commands at module level and imports its heavy libraries inside the
commands, so `windpipe --help` is instant. Errors a user can fix print `error: ... fix: ...`
without a traceback: exit code 2 for usage errors (a bad option, an unknown command), 1 for
the rest; `--debug` (or WINDPIPE_DEBUG=1) shows the traceback too. The console shows what a person
needs; `--verbose` (or WINDPIPE_VERBOSE=1) adds the diagnostics that otherwise go to each step run's
log file (windpipe.tracking.output).
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Optional

import typer

from windpipe.cli import dashboard, data, models, orchestration, pipeline, platform, predict, serving, steps, workbench
from windpipe.errors import UsageError, WindpipeError, first_line
from windpipe.settings import enter_process, parse_bool

app = typer.Typer(help="windpipe: a tracked, reproducible MLflow pipeline on your laptop.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
for _module in (platform, data, pipeline, models, predict, serving, dashboard, workbench, steps, orchestration):
    app.add_typer(_module.app, **getattr(_module, "GROUP", {}))


def _debug(argv: list[str]) -> bool:
    try:
        return "--debug" in argv or parse_bool(os.environ.get("WINDPIPE_DEBUG"))
    except ValueError:
        return False


def main(argv: Optional[list[str]] = None) -> None:
    """Run the command line; user-facing errors print as `error: ...` plus the fix."""
    from windpipe.tracking.output import VERBOSE_VAR, setup_process

    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debug(args)
    if "--verbose" in args:  # for every command and the step processes it starts (they inherit the variable)
        os.environ[VERBOSE_VAR] = "1"
        from windpipe.settings import clear_settings_cache

        clear_settings_cache()
    args = [a for a in args if a not in ("--debug", "--verbose")]
    try:
        setup_process()  # quiet output
    except WindpipeError:
        pass  # a bad setting: the command that reads it says so (`--help` still works)
    try:
        app(args=args, prog_name="windpipe")  # click's standalone mode: usage errors print usage, exit 2
    except UsageError as exc:
        _report(exc, debug)
        sys.exit(2)
    except WindpipeError as exc:
        _report(exc, debug)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        # an unexpected error is a bug, unless the server wants a login or died under the command: say so
        if _unauthenticated(exc):
            _report(WindpipeError("The MLflow tracking server asks for a login (HTTP 401).", LOGIN_FIX), debug)
            sys.exit(1)
        down = _server_down()
        if down is None:
            raise
        _report(WindpipeError(f"{down.problem} ({type(exc).__name__}: {first_line(exc)})", down.fix), debug)
        sys.exit(1)


LOGIN_FIX = "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (`windpipe env` prints them on the server)"


def _unauthenticated(exc: Exception) -> bool:
    """MLflow's client refused by a basic-auth tracking server (it raises MlflowException ... 401)."""
    return type(exc).__module__.startswith("mlflow") and "error code 401" in str(exc)


def _server_down() -> WindpipeError | None:
    """The tracking server or artifact store that does not answer (found in seconds), else None."""
    from windpipe.tracking.client import diagnose

    try:
        return diagnose()
    except WindpipeError:  # the settings themselves are broken: not a server problem
        return None


def _report(exc: WindpipeError, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    typer.echo(f"error: {exc}", err=True)


def run() -> None:
    """The `windpipe` console script (and `python -m windpipe`): main(), then a quick exit."""
    from windpipe.stack.procs import skip_final_gc

    # telemetry off, bounded MLflow retries, a tracking URI: for this process and the step runs it starts
    enter_process()
    try:
        main()
    finally:
        skip_final_gc()

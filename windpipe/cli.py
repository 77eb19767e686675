"""The `windpipe` command. Each command imports its module lazily so `--help` is instant."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from windpipe.errors import WindpipeError
from windpipe.settings import get_settings

app = typer.Typer(help="windpipe: a tracked, reproducible MLflow pipeline on your laptop.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
data_app = typer.Typer(help="Make and inspect data.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@app.command()
def up() -> None:
    """Start the FTP artifact server and the MLflow tracking server (detached, idempotent)."""
    from windpipe import platform

    settings = get_settings()
    platform.up(settings)
    typer.echo(f"tracking: {settings.local_tracking_uri}   (export MLFLOW_TRACKING_URI={settings.local_tracking_uri})")


@app.command()
def down() -> None:
    """Stop the servers `windpipe up` started."""
    from windpipe import platform

    platform.down(get_settings())


@app.command()
def status() -> None:
    """Report the health of both servers; exit 0 only when both are healthy."""
    from windpipe import platform

    states = platform.status(get_settings())
    for st in states:
        mark = "up  " if st.healthy else "DOWN"
        pid = f"pid {st.pid}" if st.pid else "no pid"
        typer.echo(f"{mark} {st.name:<7} {st.url:<28} {pid:<10} {st.detail}")
    if not all(st.healthy for st in states):
        raise typer.Exit(1)


@app.command("env")
def env() -> None:
    """Print shell exports that point MLflow at the local platform: `eval "$(windpipe env)"`."""
    settings = get_settings()
    typer.echo(f"export MLFLOW_TRACKING_URI={settings.effective_tracking_uri}")
    typer.echo(f"export MLFLOW_EXPERIMENT_NAME={settings.experiment}")


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Folder to write the raw OPSD-shaped CSV files into.")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same files.")] = 42,
    start: Annotated[int, typer.Option(help="First year.")] = 2013,
    years: Annotated[int, typer.Option(help="Number of years (hourly rows).")] = 4,
) -> None:
    """Write raw files shaped like the Open Power System Data downloads.

    Writes OUT/time_series_60min_singleindex.csv and OUT/weather_data.csv.
    """
    from windpipe.data.synth import write_raw

    paths = write_raw(out, seed=seed, start_year=start, years=years)
    for p in paths:
        typer.echo(f"wrote {p}")


def _register_commands() -> None:
    import importlib

    from windpipe.commands import MODULES

    for name in MODULES:
        importlib.import_module(f"windpipe.commands.{name}").register(app)


_register_commands()


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: user-facing errors print as `error: ...` plus the fix, exit code 1."""
    try:
        code = app(args=argv, standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except WindpipeError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as exc:  # click usage errors carry their own exit code
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


def run() -> None:
    """The `windpipe` console script (and `python -m windpipe.cli`): main(), then a quick exit."""
    from windpipe.procs import skip_final_gc

    try:
        main()
    finally:
        skip_final_gc()


if __name__ == "__main__":
    run()

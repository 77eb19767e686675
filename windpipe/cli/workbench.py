"""`windpipe lab`: JupyterLab for the workshop notebooks, pointed at the platform."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from windpipe.settings import Settings

app = typer.Typer()


@app.command()
def lab(
    port: Annotated[Optional[int], typer.Option(help="Port on 127.0.0.1 (default: WINDPIPE_LAB_PORT, 8888).")] = None,
    stop: Annotated[bool, typer.Option("--stop", help="Stop the lab `windpipe lab` started.")] = False,
) -> None:
    """Start JupyterLab in the background: the repository's notebooks, MLflow pointed at the platform.

    Binds 127.0.0.1 with a generated token (kept in the state folder, mode 0600); every kernel gets
    MLFLOW_TRACKING_URI and MLFLOW_EXPERIMENT_NAME. Needs the tracking server (`windpipe up`).
    `windpipe status` lists it while it runs; `windpipe lab --stop` stops it.
    """
    from windpipe.settings import get_settings
    from windpipe.workbench import lab as workbench_lab

    settings = get_settings()
    if stop:
        workbench_lab.stop(settings, say=typer.echo)  # lab: stopped (pid ...) | not running
        return
    pid, url = workbench_lab.start(settings, port)
    typer.echo(describe(settings, pid, url))


def describe(settings: Settings, pid: int, url: str) -> str:
    """What `windpipe lab` and the demo print: the URL, how to log in, where the log is."""
    from windpipe.workbench import lab as workbench_lab

    page = workbench_lab.login_page(settings, pid)
    token_file = settings.paths.secret_file(workbench_lab.TOKEN_FILE)
    login = f"open file://{page} (logs you in)" if page else "paste the token"
    return (f"lab: running (pid {pid}) at {url}\n"
            f"  log in: {login}, or use the token in {token_file}\n"
            f"  log: {settings.paths.log_file(workbench_lab.SERVICE)}   stop: windpipe lab --stop")

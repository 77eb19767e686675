"""`windpipe dashboard` and `windpipe report`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer()


@app.command()
def dashboard(
    port: Annotated[Optional[int], typer.Option(help="Port to serve on (default: settings, 8050).")] = None,
    host: Annotated[Optional[str], typer.Option(help="Address to bind (default 127.0.0.1: this machine only).")
                    ] = None,
    detach: Annotated[bool, typer.Option("--detach", help="Start in the background (pid and log in the "
                                         "state folder) and return once it answers.")] = False,
    stop: Annotated[bool, typer.Option("--stop", help="Stop the dashboard `--detach` started.")] = False,
    server: Annotated[str, typer.Option(help="auto (gunicorn where installed), gunicorn, or dash.")] = "auto",
) -> None:
    """Serve the dashboard of the production model (registry alias `production`).

    Pages: history, predictions vs recorded, what-if, model card, pipeline status. Reads the
    model `<model_name>@production` and the processed entity of the run that trained it.
    """
    from windpipe.settings import get_settings
    from windpipe.views.dashboard import serve

    settings = get_settings()
    if stop:
        serve.stop(settings, say=typer.echo)  # dashboard: stopped (pid ...) | not running
        return
    host = host or settings.host
    port = port or settings.dashboard_port
    if detach:
        pid, url = serve.start(settings, host, port)
        typer.echo(f"dashboard: running (pid {pid}) at {url}")
        typer.echo(f"  log: {settings.paths.log_file(serve.SERVICE)}   stop: windpipe dashboard --stop")
        return
    serve.serve(settings, host, port, server)

@app.command()
def report(
    week: Annotated[Optional[str], typer.Option(help="ISO week YYYY-Www (default: the last full week in "
                                                "the data).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="HTML file to write (default "
                                                "report/output/weekly_report.html).")] = None,
) -> None:
    """Write the weekly HTML report: recorded vs predicted, errors per target, model, data summary.

    Reads the production model and the processed entity of its training run; writes one
    self-contained HTML file (plotly.js inlined, works offline).
    """
    from windpipe.settings import get_settings
    from windpipe.views.report import create_report

    path, rep = create_report(get_settings(), week=week, out=out)
    errs = ", ".join(f"{t} rmse {e['rmse']:.3f} mae {e['mae']:.3f}" for t, e in rep.errors.items())
    typer.echo(f"week {rep.week}, model {rep.model.instance_name}: {errs}")
    typer.echo(f"wrote {path}")

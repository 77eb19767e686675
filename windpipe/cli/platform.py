"""`windpipe up | down | status | env`: the platform on this machine."""

from __future__ import annotations

import typer

app = typer.Typer()


@app.command()
def up() -> None:
    """Start the FTP artifact server and the MLflow tracking server (detached, idempotent).

    With WINDPIPE_STACK=team: PostgreSQL, an S3 store (rclone) and MLflow on both (docs/team.md)."""
    from windpipe.settings import get_settings
    from windpipe.stack import services

    settings = get_settings()
    services.up(settings)
    typer.echo(f"tracking: {settings.local_tracking_uri}   (export MLFLOW_TRACKING_URI={settings.local_tracking_uri})")


@app.command()
def down() -> None:
    """Stop the servers `windpipe up` started."""
    from windpipe.settings import get_settings
    from windpipe.stack import services

    services.down(get_settings())


@app.command()
def status() -> None:
    """Report the health of every server; exit 0 only when all are healthy.

    Then tidies up after killed processes: RUNNING runs whose process is gone end KILLED, and prediction
    batches a killed `windpipe predict` left pending are completed or removed.
    """
    from windpipe.settings import get_settings
    from windpipe.stack import services
    from windpipe.views.dashboard import serve
    from windpipe.workbench import lab

    settings = get_settings()
    states = services.status(settings)
    # the servers started on their own (`windpipe lab`, `windpipe dashboard --detach`): listed while they run
    states += [svc.state() for svc in (lab.service(settings), serve.service(settings)) if svc.pid() is not None]
    for st in states:
        mark = "up  " if st.healthy else "DOWN"
        pid = f"pid {st.pid}" if st.pid else "no pid"
        typer.echo(f"{mark} {st.name:<7} {st.url:<28} {pid:<10} {st.detail}")
    if not all(st.healthy for st in states):
        raise typer.Exit(1)
    for line in services.tidy_up(settings):
        typer.echo(line)


@app.command("env")
def env() -> None:
    """Print shell exports that point MLflow at the platform: `eval "$(windpipe env)"`.

    Also MLflow's bounded HTTP retries and telemetry off, as windpipe's own processes have them. A password
    in MLFLOW_TRACKING_URI is never printed.
    """
    from windpipe.errors import redact
    from windpipe.settings import get_settings

    settings = get_settings()
    uri = settings.effective_tracking_uri
    if redact(uri) != uri:  # a password in the URI: leave the variable as the user set it, print no secret
        typer.echo(f"# MLFLOW_TRACKING_URI is set with credentials ({redact(uri)}): left as it is")
    else:
        typer.echo(f"export MLFLOW_TRACKING_URI={uri}")
    typer.echo(f"export MLFLOW_EXPERIMENT_NAME={settings.experiment}")
    for key, value in settings.process_environment().items():
        typer.echo(f"export {key}={value}")
    if settings.stack == "team" and settings.team.auth == "basic":
        from windpipe.stack import team

        # the password stays in its 0600 file: the export reads it when the shell runs it
        typer.echo(f"export MLFLOW_TRACKING_USERNAME={team.ADMIN}")
        typer.echo(f'export MLFLOW_TRACKING_PASSWORD="$(cat {settings.paths.secret_file(team.ADMIN_PASSWORD)})"')

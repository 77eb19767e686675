"""`windpipe serve`: the production model over HTTP."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from windpipe.names import alias_uri

app = typer.Typer()


@app.command()
def serve(
    port: Annotated[Optional[int], typer.Option(help="Port on 127.0.0.1 (default: WINDPIPE_SERVE_PORT).")] = None,
    model_uri: Annotated[Optional[str], typer.Option(
        help=f"Model to serve (default {alias_uri('<model>')}).")] = None,
) -> None:
    """Serve the production model over HTTP with `mlflow models serve --env-manager local`.

    Checks the alias exists, waits until /ping answers, prints the URL and a curl example;
    Ctrl-C stops the server.
    """
    from windpipe.deploy import serving
    from windpipe.settings import get_settings
    from windpipe.tracking.client import connect

    settings = get_settings()
    connect(settings, experiment=False)
    uri = model_uri or serving.default_model_uri(settings)
    port = port or settings.serve_port
    typer.echo(f"starting: {' '.join(serving.serve_command(uri, port, settings.host))}")
    proc, url = serving.start(settings, port, uri)
    columns, tensor = serving.input_spec(settings, uri)
    typer.echo(f"serving {uri} at {url}\ntry:\n  {serving.curl_example(url, columns, tensor)}\n(Ctrl-C stops it)")
    import signal

    def _term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)  # `kill` stops the model server too
    try:
        proc.wait()
    except KeyboardInterrupt:
        typer.echo("stopping")
    finally:
        serving.stop(proc)
    if proc.returncode not in (0, None, -15, -2):
        raise typer.Exit(1)

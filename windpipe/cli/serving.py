"""`windpipe serve`: the production model over HTTP, following the alias."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from windpipe.names import alias_uri

app = typer.Typer()


@app.command()
def serve(
    port: Annotated[Optional[int], typer.Option(help="Port on 127.0.0.1 (default: WINDPIPE_SERVE_PORT).")] = None,
    model_uri: Annotated[Optional[str], typer.Option(
        help=f"Model to serve (default {alias_uri('<model>')}); an alias is followed, a version is pinned.")] = None,
    poll: Annotated[Optional[float], typer.Option(
        help="Seconds between two looks at the alias (default: WINDPIPE_SERVE_POLL_SECONDS).")] = None,
) -> None:
    """Serve the production model over HTTP with MLflow's scoring server, following the alias.

    Same requests as `mlflow models serve` (POST /invocations with dataframe_split, dataframe_records or
    inputs); every response names the version that answered (header X-Model-Version). A promotion or a
    rollback is picked up within a few seconds: the new version is loaded beside the old one and swapped in
    without a failed request; a version that fails to load is not swapped in (see GET /health).
    Ctrl-C stops the server.
    """
    from windpipe.deploy import follow, serving
    from windpipe.errors import UsageError
    from windpipe.settings import get_settings
    from windpipe.tracking.client import probe_health

    settings = get_settings()
    if poll is not None and poll <= 0:
        raise UsageError(f"--poll must be a positive number of seconds, got {poll}.", "pass e.g. --poll 3")
    probe_health(settings.effective_tracking_uri)  # (a server: each client gets the URI, no global one is set)
    uri = model_uri or serving.default_model_uri(settings)
    port = port or settings.serve_port
    url = f"http://{settings.host}:{port}"
    seconds = poll or settings.serve_poll_seconds

    def ready(server: follow.FollowingServer) -> None:
        slot = server.current
        columns, tensor = serving.input_spec(settings, uri)
        typer.echo(f"serving {uri} (version {slot.version}, {slot.ref.label}) at {url}, looking at the alias "
                   f"every {seconds:g} s\ntry:\n  {serving.curl_example(url, columns, tensor)}\nhealth: {url}/health   "
                   f"(Ctrl-C stops it)")

    follow.serve(settings, uri, settings.host, port, seconds, say=lambda m: typer.echo(m), ready=ready)
    typer.echo("stopped")

"""`windpipe airflow up | down | status | trigger`: Apache Airflow 3 with the pipelines' DAGs, on this machine."""

from __future__ import annotations

import json
from typing import Annotated

import typer

app = typer.Typer(help="Apache Airflow 3 running the pipelines' DAGs (orchestration/airflow/dags).",
                  no_args_is_help=True)
GROUP = {"name": "airflow"}


@app.command()
def up() -> None:
    """Start Airflow's API server, scheduler and DAG processor (detached, idempotent), bound to 127.0.0.1.

    Needs Airflow's environment (`make airflow`); state in <state folder>/airflow; the admin password
    is generated once and kept in <state folder>/airflow_passwords.json (mode 0600).
    """
    from windpipe.settings import get_settings
    from windpipe.stack import airflow_server

    airflow_server.up(get_settings(), say=typer.echo)


@app.command()
def down() -> None:
    """Stop the Airflow services `windpipe airflow up` started."""
    from windpipe.settings import get_settings
    from windpipe.stack import airflow_server

    airflow_server.down(get_settings(), say=typer.echo)


@app.command()
def status() -> None:
    """Each Airflow service and its health; exit 0 only when all are healthy."""
    from windpipe.settings import get_settings
    from windpipe.stack import airflow_server

    states = airflow_server.status(get_settings())
    for st in states:
        typer.echo(f"{'up  ' if st.healthy else 'DOWN'} airflow {st.name:<14} "
                   f"{'pid ' + str(st.pid) if st.pid else 'no pid':<10} {st.detail}")
    if not all(st.healthy for st in states):
        raise typer.Exit(1)


@app.command()
def trigger(
    dag_id: Annotated[str, typer.Argument(help="windpipe_training or windpipe_prediction.")],
    conf: Annotated[str, typer.Option(help='The DAG run\'s conf as JSON, e.g. \'{"quick": true}\'.')] = "{}",
    wait: Annotated[bool, typer.Option(help="Wait until the DAG run ends; exit 1 when it failed.")] = False,
) -> None:
    """Trigger a DAG run through Airflow's REST API (as the UI's trigger button does)."""
    from windpipe.errors import UsageError
    from windpipe.settings import get_settings
    from windpipe.stack import airflow_server

    try:
        data = json.loads(conf)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--conf is not JSON ({exc.msg}).", 'pass e.g. --conf \'{"quick": true}\'') from None
    settings = get_settings()
    token = airflow_server.token(settings)
    run_id = airflow_server.trigger(settings, dag_id, data, token)
    typer.echo(f"triggered {dag_id} run {run_id}: {settings.airflow_url}/dags/{dag_id}")
    if wait:
        state = airflow_server.wait_for_run(settings, dag_id, run_id, token)
        typer.echo(f"{dag_id} run {run_id}: {state}")
        if state != "success":
            raise typer.Exit(1)

"""`windpipe airflow up | down | status | trigger | worker`: Apache Airflow 3 with the pipelines' DAGs, on this machine
and on remote workers."""

from __future__ import annotations

import json
from typing import Annotated

import typer

app = typer.Typer(help="Apache Airflow 3 running the pipelines' DAGs (orchestration/airflow/dags).",
                  no_args_is_help=True)
GROUP = {"name": "airflow"}


@app.command()
def up(
    executor: Annotated[str | None, typer.Option(
        help="local: tasks run here (LocalExecutor); edge: on remote workers (`windpipe airflow worker`), team stack "
             "only. Default: WINDPIPE_AIRFLOW_EXECUTOR, else local.")] = None,
) -> None:
    """Start Airflow's API server, scheduler and DAG processor (detached, idempotent), bound to WINDPIPE_HOST
    (127.0.0.1).

    Needs Airflow's environment (`make airflow`); state in <state folder>/airflow; the admin password
    is generated once and kept in <state folder>/airflow_passwords.json (mode 0600). With `--executor edge`
    the workers' shared secret is kept in <state folder>/airflow_worker_secret (mode 0600).
    """
    from windpipe.errors import UsageError
    from windpipe.settings import get_settings
    from windpipe.stack import airflow_server

    if executor is not None and executor not in airflow_server.EXECUTORS:
        raise UsageError(f"--executor {executor!r} is not one windpipe runs.",
                         f"use one of {', '.join(airflow_server.EXECUTORS)}")
    airflow_server.up(get_settings(), say=typer.echo, executor=executor)


@app.command()
def worker(
    api_url: Annotated[str | None, typer.Option(
        help="The central Airflow API server, as this machine reaches it, e.g. http://10.0.0.5:8090 "
             "(default: WINDPIPE_AIRFLOW_API_URL).")] = None,
    queues: Annotated[str | None, typer.Option(
        help="Comma-separated queues this worker takes tasks from (default: every queue the step.yaml files name, "
             "and `default`).")] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="Tasks it runs at a time.")] = 2,
    name: Annotated[str | None, typer.Option(
        help="Its name in Airflow (default: this host's name; two workers on one machine need two names).")] = None,
) -> None:
    """Join this machine to the central Airflow (`windpipe airflow up --executor edge`) as an edge worker (detached).

    Needs this checkout's main environment (`make install`) and Airflow's (`make airflow`); its settings are
    URLs and logins only: --api-url, WINDPIPE_AIRFLOW_WORKER_SECRET (the central machine's
    <state folder>/airflow_worker_secret), MLFLOW_TRACKING_URI and, with basic auth, MLFLOW_TRACKING_USERNAME /
    _PASSWORD. Steps run from this checkout's projects/. `windpipe airflow down` stops it.
    """
    from windpipe.errors import UsageError
    from windpipe.settings import get_settings
    from windpipe.stack import airflow_server

    wanted = [q.strip() for q in queues.split(",") if q.strip()] if queues is not None else None
    if wanted is not None and not wanted:
        raise UsageError("--queues names no queue.", "pass e.g. --queues default,heavy (or leave it out: every queue)")
    from windpipe.pipeline.dags import worker_queues

    settings = get_settings()
    airflow_server.worker(settings, wanted or worker_queues(settings.projects_dir), api_url, concurrency, name,
                          say=typer.echo)


@app.command()
def down() -> None:
    """Stop the Airflow services `windpipe airflow up` started, a worker `windpipe airflow worker` started, and
    whatever killed ones left behind (an executor's workers, task processes)."""
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

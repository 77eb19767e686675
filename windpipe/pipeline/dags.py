"""The pipelines as Apache Airflow 3 DAGs, built from the step graph: the one function both DAG files call.

    # orchestration/airflow/dags/windpipe_training.py
    from windpipe.pipeline.dags import build_dag
    dag = build_dag("training")

`dag_layout` (pure, no Airflow needed) turns the step graph into tasks and dependencies:

    training:    open -> each step, after the steps it reads from -> close
    prediction:  open -> inbox -> each step, once per new inbox file (mapped) -> close

Every task runs a `windpipe pipeline ...` command of the main environment by absolute path
(`Settings.windpipe_bin`): `open` checks the DAG run's conf and opens the MLflow pipeline run,
each step task runs its step as an `mlflow run` child of it (the same `Launcher.run` the local
driver calls, so the same cache), `close` ends the pipeline run (and moves each inbox file to
done/ or failed/). Run ids travel by XCom: each command's last output line. Only this module,
the graph and the settings are imported inside Airflow's own environment, so it stays light
(no MLflow, no pandas).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from windpipe.errors import WindpipeError
from windpipe.pipeline.graph import build_graph
from windpipe.pipeline.inbox import pending
from windpipe.pipeline.interfaces import load_interfaces
from windpipe.pipeline.plan import PREDICTION, TRAINING, conf_defaults, config_from_conf
from windpipe.settings import get_settings, projects_dir

if TYPE_CHECKING:
    from airflow.sdk import DAG

DAG_IDS = {TRAINING: "windpipe_training", PREDICTION: "windpipe_prediction"}
SCHEDULES = {TRAINING: "@weekly", PREDICTION: "@daily"}  # cron, UTC
OPEN, INBOX, CLOSE = "open", "inbox", "close"
ALL_SUCCESS, ALL_DONE = "all_success", "all_done"
SKIP_EXIT_CODE = 99  # BashOperator: exit 99 marks the task skipped


@dataclass(frozen=True)
class TaskSpec:
    """One task of a DAG: what it does (open, inbox, step, close), after which tasks, mapped over the files or not."""

    task_id: str
    kind: str
    upstream: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()  # step tasks: the steps whose run ids it gets
    mapped: bool = False
    trigger_rule: str = ALL_SUCCESS


def dag_layout(pipeline: str, projects: Path | str | None = None) -> list[TaskSpec]:
    """The tasks of the `pipeline` DAG and their dependencies, from the step interfaces below `projects`.

    Raises WindpipeError for everything the pipeline itself would refuse (a cycle, an input no
    step produces, a broken step.yaml or MLproject).
    """
    if pipeline not in DAG_IDS:
        raise WindpipeError(f"There is no {pipeline!r} pipeline to build a DAG of.",
                            f"use one of {', '.join(DAG_IDS)}")
    specs = load_interfaces(projects)
    build_graph(specs)  # every interface, as `windpipe steps` checks them: one broken step stops both DAGs
    graph = build_graph(specs, pipeline)
    mapped = pipeline == PREDICTION
    first = INBOX if mapped else OPEN
    tasks = [TaskSpec(OPEN, OPEN)] + ([TaskSpec(INBOX, INBOX, (OPEN,))] if mapped else [])
    for name in graph.order:
        needs = tuple(dict.fromkeys(graph.needs(name)))
        # mapped: a file refused by one step must not stop the other files' next steps (the step skips it)
        rule = ALL_DONE if mapped and needs else ALL_SUCCESS
        tasks.append(TaskSpec(name, "step", needs or (first,), needs, mapped, rule))
    tasks.append(TaskSpec(CLOSE, CLOSE, tuple(graph.order) or (first,), trigger_rule=ALL_DONE))
    return tasks


def task_command(task: TaskSpec, pipeline: str, conf: dict[str, Any], bin_dir: Path | str, dag_run: str = "",
                 pipeline_run: str = "", upstream: dict[str, str] | None = None, file: str | None = None,
                 index: int | None = None, files: list[str] | None = None) -> list[str]:
    """The `windpipe pipeline open | step | close` command line a task runs (the main environment's windpipe)."""
    base = [str(Path(bin_dir) / "windpipe"), "pipeline"]
    common = ["--pipeline", pipeline, "--conf", json.dumps(conf, sort_keys=True)]
    if task.kind == OPEN:
        return [*base, "open", *common, "--dag-run", dag_run]
    if task.kind == CLOSE:
        return [*base, "close", *common, "--pipeline-run", pipeline_run,
                *(["--files", json.dumps(files or [])] if pipeline == PREDICTION else [])]
    per_file = ["--file", str(file), "--index", str(index)] if task.mapped else []
    return [*base, "step", task.task_id, *common, "--pipeline-run", pipeline_run,
            "--upstream", json.dumps(upstream or {}, sort_keys=True), *per_file]


def inbox_files(conf: dict[str, Any]) -> list[str]:
    """The inbox files a prediction DAG run scores (the `inbox` task's XCom)."""
    folder = config_from_conf(PREDICTION, conf).inbox
    return [str(p) for p in pending(folder)] if folder else []


def _params(pipeline: str) -> dict[str, Any]:
    from airflow.sdk import Param

    types = {bool: "boolean", dict: "object", str: "string"}
    return {k: Param(v, type=types[type(v)]) for k, v in conf_defaults(pipeline).items()}


def build_dag(pipeline: str, dag_id: str | None = None, schedule: str | None = "default",
              projects: Path | str | None = None) -> DAG:
    """The Airflow DAG of `pipeline` (training: weekly, prediction: daily by default; None: triggered only).

    The first scheduled run is the next one due (Sunday / midnight UTC), not one for a time already
    past: a DAG appearing (or Airflow starting) does not start a run by itself.

    A broken step interface raises the same WindpipeError the pipeline itself gives, re-raised here
    so that Airflow's import error shows the message, not frames from deep inside windpipe.
    """
    try:
        projects = Path(projects or projects_dir()).resolve()
        layout = dag_layout(pipeline, projects)
        bin_dir = get_settings().windpipe_bin
    except WindpipeError as exc:
        raise exc.with_traceback(None) from None
    import datetime

    from airflow.sdk import DAG, CronTriggerTimetable

    cron = SCHEDULES[pipeline] if schedule == "default" else schedule
    timetable = CronTriggerTimetable(cron, timezone="UTC", run_immediately=datetime.timedelta(0)) if cron else None
    env = {"WINDPIPE_PROJECTS": str(projects), "MLFLOW_DISABLE_TELEMETRY": "true"}
    with DAG(dag_id=dag_id or DAG_IDS[pipeline], schedule=timetable, catchup=False, max_active_runs=1,
             tags=["windpipe", pipeline], params=_params(pipeline), doc_md=_doc(pipeline, projects)) as dag:
        tasks: dict[str, Any] = {}
        for spec in layout:
            tasks[spec.task_id] = _task(spec, pipeline, bin_dir, env, tasks)
        for spec in layout:
            for up in spec.upstream:
                tasks[up] >> tasks[spec.task_id]
    return dag


def _task(spec: TaskSpec, pipeline: str, bin_dir: Path, env: dict[str, str], made: dict[str, Any]) -> Any:
    """The Airflow task for `spec`: a @task.bash whose command is built when it runs (conf and XComs known)."""
    from airflow.sdk import task

    if spec.kind == INBOX:
        @task(task_id=INBOX)
        def inbox(**context: Any) -> list[str]:
            return inbox_files(dict(context["dag_run"].conf or {}))

        return inbox()

    @task.bash(task_id=spec.task_id, trigger_rule=spec.trigger_rule, env=env, append_env=True,
               doc_md=f"`windpipe pipeline {spec.kind}`" + (f" of the {spec.task_id} step" if spec.kind == "step"
                                                             else ""))
    def command(file: str | None = None, **context: Any) -> str:
        ti, dag_run = context["ti"], context["dag_run"]
        conf = dict(dag_run.conf or {})
        run = f"{dag_run.dag_id}/{dag_run.run_id}"
        if spec.kind == OPEN:
            return shlex.join(task_command(spec, pipeline, conf, bin_dir, dag_run=run))
        pipeline_run = ti.xcom_pull(task_ids=OPEN)
        if not pipeline_run:  # (close, all_done) the DAG run failed before it began: fail, so the run does too
            return "echo 'the pipeline run was never opened: see the log of the open task' >&2; exit 1"
        if spec.kind == CLOSE:
            files = ti.xcom_pull(task_ids=INBOX) if pipeline == PREDICTION else None
            return shlex.join(task_command(spec, pipeline, conf, bin_dir, pipeline_run=pipeline_run,
                                           files=list(files or [])))
        index = ti.map_index if spec.mapped else None
        upstream = {n: ti.xcom_pull(task_ids=n, map_indexes=index) for n in spec.needs}
        if any(not v for v in upstream.values()):  # (mapped) this file failed in a step before: nothing to do
            return f"echo 'skipped: {' '.join(n for n, v in upstream.items() if not v)} did not finish'; " \
                   f"exit {SKIP_EXIT_CODE}"
        return shlex.join(task_command(spec, pipeline, conf, bin_dir, pipeline_run=pipeline_run, upstream=upstream,
                                       file=file, index=index))

    if spec.mapped:
        return command.expand(file=made[INBOX])
    return command()


def _doc(pipeline: str, projects: Path) -> str:
    example = '{"quick": true, "params": {"rf.max_depth": "8,12"}}' if pipeline == TRAINING else \
        '{"params": {"predict.drop_invalid": "true"}}'
    what = ("process -> the trainers -> compare -> promote" if pipeline == TRAINING else
            "each new parquet file in the inbox is scored with the production model into the data marts; "
            "scored files move to done/, refused ones to failed/ with the reason beside them")
    return (f"windpipe's {pipeline} pipeline, built from the step interfaces in `{projects}` "
            f"(`windpipe steps` lists them): {what}. Each step task is an `mlflow run` of its project, a child "
            f"of one MLflow pipeline run; finished steps are reused from the cache. Conf, e.g. `{example}`.")

"""The pipelines as Apache Airflow 3 DAGs, built from the step graph: the one function both DAG files call.

    # orchestration/airflow/dags/windpipe_training.py
    from windpipe.pipeline.dags import build_dag
    from windpipe.settings import get_settings
    dag = build_dag("training", settings=get_settings())

`dag_layout` (pure, no Airflow needed) turns the step graph into tasks and dependencies:

    training:    open -> each step, after the steps it reads from -> close
    prediction:  open -> inbox -> each step, once per new inbox file (mapped) -> close

Every task is a Python task that runs a `windpipe pipeline ...` command of the main environment by
absolute path (`Settings.windpipe_bin` of the settings the DAG file passes: Airflow parses the DAG file again
in each task's process, so they are the settings of the machine that runs the task) with an argument list,
and hands it
the DAG run's conf, the inbox file and the run ids as JSON on its stdin: no user-controlled text is
ever part of a shell command or an Airflow template (a conf value or a file name with `{{ }}` arrives
as written). `open` checks the conf and opens the MLflow pipeline run, `inbox` claims the new inbox
files for it (a folder or an S3 prefix: windpipe.pipeline.inbox), each step task runs its step as an
`mlflow run` child of it (the same `Launcher.run` the local driver calls, so the same cache), `close`
ends the pipeline run (and settles each claimed file: done/ or failed/). Run ids and the claimed files
travel by XCom: each command's last output line. Only this module, the graph and the settings are
imported inside Airflow's own environment, so it stays light (no MLflow, no pandas, no S3 client).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from windpipe.errors import WindpipeError
from windpipe.pipeline.graph import build_graph
from windpipe.pipeline.interfaces import load_interfaces
from windpipe.pipeline.plan import PREDICTION, TRAINING, conf_defaults
from windpipe.settings import TELEMETRY_OFF

if TYPE_CHECKING:
    from airflow.sdk import DAG

    from windpipe.settings import Settings

DAG_IDS = {TRAINING: "windpipe_training", PREDICTION: "windpipe_prediction"}
SCHEDULES = {TRAINING: "@weekly", PREDICTION: "@daily"}  # cron, UTC
OPEN, INBOX, CLOSE = "open", "inbox", "close"
ALL_SUCCESS, ALL_DONE = "all_success", "all_done"
# a task whose worker died (kill -9, a lost machine) is tried again, on any worker of its queue; a step that
# failed by itself is not (the task fails for good: AirflowFailException)
RETRIES, RETRY_DELAY_SECONDS = 2, 5
DEFAULT_QUEUE = "default"  # Airflow's [operators] default_queue: tasks of steps whose step.yaml names none
FILES_KEY = "files"  # the inbox task's XCom of the files it claimed (its return value: their indexes)


@dataclass(frozen=True)
class TaskSpec:
    """One task of a DAG: what it does (open, inbox, step, close), after which tasks, mapped over the files or not."""

    task_id: str
    kind: str
    upstream: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()  # step tasks: the steps whose run ids it gets
    mapped: bool = False
    trigger_rule: str = ALL_SUCCESS
    queue: str | None = None  # the worker queue its step.yaml names (None: Airflow's default queue)


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
        tasks.append(TaskSpec(name, "step", needs or (first,), needs, mapped, rule, graph.specs[name].queue))
    tasks.append(TaskSpec(CLOSE, CLOSE, tuple(graph.order) or (first,), trigger_rule=ALL_DONE))
    return tasks


@dataclass(frozen=True)
class TaskCommand:
    """A task's `windpipe pipeline open | step | close` call: the argument list and the JSON it reads on stdin.

    Everything that comes from a user (the DAG run's conf, inbox file names, the run ids of XComs) travels
    in `stdin`, never in the argument list: nothing a user writes reaches a shell, a template or `ps`,
    and a conf is not bounded by the kernel's argument size (128 KB per argument).
    """

    argv: list[str]
    stdin: str


def task_command(task: TaskSpec, pipeline: str, conf: dict[str, Any], bin_dir: Path | str, dag_run: str = "",
                 pipeline_run: str = "", upstream: dict[str, str] | None = None, file: str | None = None,
                 index: int | None = None, files: list[str] | None = None) -> TaskCommand:
    """The `windpipe pipeline open | inbox | step | close` call a task makes (the main environment's windpipe)."""
    argv = [str(Path(bin_dir) / "windpipe"), "pipeline", task.kind, *([task.task_id] if task.kind == "step" else []),
            "--pipeline", pipeline, "--stdin"]
    data: dict[str, Any] = {"conf": conf}
    if task.kind == OPEN:
        data["dag_run"] = dag_run
    elif task.kind == INBOX:
        data["pipeline_run"] = pipeline_run
    elif task.kind == CLOSE:
        data["pipeline_run"] = pipeline_run
        if pipeline == PREDICTION:
            data["files"] = list(files or [])
    else:
        data.update(pipeline_run=pipeline_run, upstream=dict(upstream or {}))
        if task.mapped:
            data.update(file=file, index=index)
    return TaskCommand(argv, json.dumps(data, sort_keys=True))


def run_command(command: TaskCommand, env: dict[str, str]) -> str:
    """Run a task's command with an argument list (no shell, no template), its output streamed into the task's
    log; return its last line (a run id: the task's XCom). Raises RuntimeError naming the exit code when it
    fails. The command dies with the task's process (a killed worker leaves no step running on its own)."""
    import subprocess

    proc = subprocess.Popen(command.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, **env}, text=True, encoding="utf-8", errors="replace",
                            preexec_fn=_die_with_parent)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(command.stdin)
        proc.stdin.close()
    except BrokenPipeError:  # it stopped before reading: its output says why
        pass
    last = ""
    for line in proc.stdout:
        print(line, end="", flush=True)
        last = line.strip() or last
    code = proc.wait()
    if code:
        raise RuntimeError(f"`windpipe pipeline {command.argv[2]}` exited with code {code}: see the lines above")
    return last


def _die_with_parent() -> None:
    """(In the child, before exec) Linux: SIGTERM when the task's process dies, even by kill -9."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # not Linux: the task's own signal handling stops it
        pass


def worker_queues(projects: Path | str | None = None) -> list[str]:
    """Every queue the step interfaces name, and Airflow's default one: a worker listening on all of them can run
    every task of both DAGs."""
    return sorted({DEFAULT_QUEUE} | {s.queue for s in load_interfaces(projects) if s.queue})


def _params(pipeline: str, inbox: str) -> dict[str, Any]:
    from airflow.sdk import Param

    # params: {"rf.max_depth": "8,12"} or ["rf.max_depth=8,12"], both forms the docs show
    types: dict[type, Any] = {bool: "boolean", dict: ["object", "array"], str: "string"}
    return {k: Param(v, type=types[type(v)]) for k, v in conf_defaults(pipeline, inbox).items()}


def build_dag(pipeline: str, dag_id: str | None = None, schedule: str | None = "default",
              projects: Path | str | None = None, *, settings: Settings) -> DAG:
    """The Airflow DAG of `pipeline` (training: weekly, prediction: daily by default; None: triggered only).

    `settings` (the DAG file passes them) name the step folders (unless `projects` does), the environment
    whose `windpipe` the tasks run and the default inbox.

    The first scheduled run is the next one due (Sunday / midnight UTC), not one for a time already
    past: a DAG appearing (or Airflow starting) does not start a run by itself.

    A broken step interface raises the same WindpipeError the pipeline itself gives, re-raised here
    so that Airflow's import error shows the message, not frames from deep inside windpipe.
    """
    explicit = projects is not None
    try:
        projects = Path(projects or settings.projects_dir).resolve()
        layout = dag_layout(pipeline, projects)
    except WindpipeError as exc:
        raise exc.with_traceback(None) from None
    import datetime

    from airflow.sdk import DAG, CronTriggerTimetable

    cron = SCHEDULES[pipeline] if schedule == "default" else schedule
    timetable = CronTriggerTimetable(cron, timezone="UTC", run_immediately=datetime.timedelta(0)) if cron else None
    # the step projects are read where the task runs (its worker's own checkout), unless the caller named a folder
    env = {**TELEMETRY_OFF, **({"WINDPIPE_PROJECTS": str(projects)} if explicit else {})}
    with DAG(dag_id=dag_id or DAG_IDS[pipeline], schedule=timetable, catchup=False, max_active_runs=1,
             tags=["windpipe", pipeline], params=_params(pipeline, settings.inbox_uri),
             doc_md=_doc(pipeline, projects)) as dag:
        tasks: dict[str, Any] = {}
        for spec in layout:
            tasks[spec.task_id] = _task(spec, pipeline, env, tasks, settings.windpipe_bin)
        for spec in layout:
            for up in spec.upstream:
                tasks[up] >> tasks[spec.task_id]
    return dag


def _task(spec: TaskSpec, pipeline: str, env: dict[str, str], made: dict[str, Any], bin_dir: Path) -> Any:
    """The Airflow task for `spec`: a Python task that builds its command when it runs (conf and XComs known) and
    runs it with an argument list. No value is ever rendered as a template: mapped tasks get an index, and
    read their file from the inbox task's XCom. `bin_dir`: the environment whose `windpipe` it runs."""
    import datetime

    from airflow.sdk import task

    retry = {"retries": RETRIES, "retry_delay": datetime.timedelta(seconds=RETRY_DELAY_SECONDS)}
    if spec.kind == INBOX:
        @task(task_id=INBOX, doc_md="`windpipe pipeline inbox`: claim the new inbox files for this DAG run", **retry)
        def inbox(**context: Any) -> list[int]:
            ti, conf = context["ti"], dict(context["dag_run"].conf or {})
            command = task_command(spec, pipeline, conf, bin_dir, pipeline_run=ti.xcom_pull(task_ids=OPEN))
            files = json.loads(_final(command, env))  # (its last line: the claimed files, as JSON)
            ti.xcom_push(key=FILES_KEY, value=files)
            return list(range(len(files)))

        return inbox()

    doc = f"`windpipe pipeline {spec.kind}`" + (f" of the {spec.task_id} step" if spec.kind == "step" else "")

    @task(task_id=spec.task_id, trigger_rule=spec.trigger_rule, doc_md=doc, **retry,
          **({"queue": spec.queue} if spec.queue else {}))
    def command(index: int | None = None, **context: Any) -> str:
        from airflow.sdk.exceptions import AirflowSkipException

        ti, dag_run = context["ti"], context["dag_run"]
        conf = dict(dag_run.conf or {})
        if spec.kind == OPEN:
            run = f"{dag_run.dag_id}/{dag_run.run_id}"
            return _final(task_command(spec, pipeline, conf, bin_dir, dag_run=run), env)
        pipeline_run = ti.xcom_pull(task_ids=OPEN)
        if not pipeline_run:  # (close, all_done) the DAG run failed before it began: fail, so the run does too
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException("the pipeline run was never opened: see the log of the open task")
        files = list(ti.xcom_pull(task_ids=INBOX, key=FILES_KEY) or []) if pipeline == PREDICTION else []
        if spec.kind == CLOSE:
            return _final(task_command(spec, pipeline, conf, bin_dir, pipeline_run=pipeline_run, files=files), env)
        upstream = {n: ti.xcom_pull(task_ids=n, map_indexes=index) for n in spec.needs}
        if any(not v for v in upstream.values()):  # (mapped) this file failed in a step before: nothing to do
            raise AirflowSkipException(f"skipped: {' '.join(n for n, v in upstream.items() if not v)} did not finish")
        file = files[index] if spec.mapped and index is not None else None
        return _final(task_command(spec, pipeline, conf, bin_dir, pipeline_run=pipeline_run, upstream=upstream,
                                   file=file, index=index), env)

    if spec.mapped:
        return command.expand(index=made[INBOX])
    return command()


def _final(command: TaskCommand, env: dict[str, str]) -> str:
    """run_command, and a command that ran and failed fails its task for good: trying it again would fail the
    same way (only a task whose worker died is retried)."""
    from airflow.sdk.exceptions import AirflowFailException

    try:
        return run_command(command, env)
    except RuntimeError as exc:
        raise AirflowFailException(str(exc)) from None


def _doc(pipeline: str, projects: Path) -> str:
    example = '{"quick": true, "params": {"rf.max_depth": "8,12"}}' if pipeline == TRAINING else \
        '{"params": {"predict.drop_invalid": "true"}}'
    what = ("process -> the trainers -> compare -> promote" if pipeline == TRAINING else
            "each new parquet file in the inbox (a folder or an S3 prefix) is claimed by one DAG run and scored "
            "once with the production model into the data marts; scored files move to done/, refused ones to "
            "failed/ with the reason beside them")
    return (f"windpipe's {pipeline} pipeline, built from the step interfaces in `{projects}` "
            f"(`windpipe steps` lists them): {what}. Each step task is an `mlflow run` of its project, a child "
            f"of one MLflow pipeline run; finished steps are reused from the cache. Conf, e.g. `{example}`.")

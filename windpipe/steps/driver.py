"""The pipeline driver: open the pipeline run and run the steps of a pipeline inside it.

`windpipe pipeline run` and `mlflow run projects/pipeline` run every step in one process
(`driver`, steps side by side). An orchestrator runs the same steps one task each, with the same
library calls: `open_pipeline` (the DAG run's first task: check the conf, open the pipeline run),
`run_task` (one step, its producers' run ids from the tasks before it), `close_pipeline` (the
last task: end the run, and for the prediction pipeline move each inbox file to done/ or
failed/); for the prediction pipeline `claim_inbox` between the first two (the inbox task: the
files this DAG run scores, windpipe.pipeline.inbox). The steps and their wiring come from the step
interfaces (windpipe.pipeline), each step an `mlflow run` of its project.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from windpipe import names
from windpipe.errors import UsageError, WindpipeError
from windpipe.pipeline.cache import StepResult
from windpipe.pipeline.inbox import Inbox
from windpipe.pipeline.launcher import Launcher, resolve_git_version, step_environment
from windpipe.pipeline.plan import PREDICTION, PipelineConfig, Plan, plan_for
from windpipe.pipeline.runner import run_pipeline
from windpipe.settings import get_settings, projects_dir
from windpipe.stack import objects
from windpipe.steps.cli import flag
from windpipe.tracking.client import connect, mlflow_client
from windpipe.tracking.runs import code_version, mark_killed_runs, step_run

LOCAL, AIRFLOW = "local", "airflow"
RUN_ID_LENGTH = 32


def driver(config: PipelineConfig, step_dir: Path | None = None) -> list[StepResult]:
    """Open the pipeline run (or join the one `mlflow run` made) and run every step inside it."""
    import mlflow
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)  # no wrapped run ids in logs
    under_mlflow_run = bool(os.environ.get("MLFLOW_RUN_ID"))  # step_run consumes the variable
    # native_log=False: the step processes inherit this process's stderr, which must stay the console
    with step_run("pipeline", "main", step_dir=step_dir, run_name="pipeline", native_log=False) as run:
        if under_mlflow_run and not config.env_manager:
            # under `mlflow run projects/pipeline --env-manager X`: pass X on to every step
            tags = mlflow_client().get_run(run.info.run_id).data.tags
            config.env_manager = tags.get(names.MLFLOW_PROJECT_ENV_TAG, "local")
        config.env_manager = config.env_manager or "local"
        mlflow.set_tags(pipeline_tags(config, LOCAL))
        console.print(f"pipeline run {run.info.run_id} (env manager {config.env_manager}, {config.workers} jobs)")
        for run_id in mark_killed_runs(mlflow_client(), [run.info.experiment_id]):  # left by a kill
            console.print(f"run {run_id}: marked KILLED (it was RUNNING, its process is gone)")
        return run_pipeline(get_settings(), config, console=console)


def project_main(raw_dir: str, quick: str, force: str, env_manager: str, jobs: str = "0",
                 step_dir: Path | None = None) -> list[StepResult]:
    """Run the whole training pipeline as child runs of this run (`mlflow run projects/pipeline`)."""
    try:
        workers = int(float(jobs))
    except ValueError:
        raise UsageError(f"jobs must be a whole number, got {jobs!r}.", "pass -P jobs=2 (0: one per core)") from None
    config = PipelineConfig(external={"raw": raw_dir}, preset="quick" if flag(quick) else "full", force=flag(force),
                            env_manager=env_manager, jobs=workers)
    return driver(config, step_dir=step_dir)


def pipeline_tags(config: PipelineConfig, orchestrator: str) -> dict[str, str]:
    return {names.QUICK_TAG: str(config.quick), names.FORCE_TAG: str(config.force),
            names.ENV_MANAGER_TAG: config.env_manager or "local", names.PIPELINE_NAME_TAG: config.pipeline,
            names.ORCHESTRATOR_TAG: orchestrator}


# ---------------------------------------------------------------------------------------------- orchestrators


def check_config(config: PipelineConfig) -> Plan:
    """Plan once to refuse a bad conf before anything runs (a prediction plan with a stand-in file)."""
    if config.pipeline != PREDICTION:
        return plan_for(config, projects_dir())
    sample = objects.join(_inbox(config).uri, "<new file>.parquet")
    return plan_for(dataclasses.replace(config, external={**_file_inputs(config, sample), **config.external},
                                        outputs=_file_outputs(config, lambda _entity: "<output>")), projects_dir())


def _inbox(config: PipelineConfig) -> Inbox:
    _check_worker_marts(get_settings())
    return Inbox(config.inbox or get_settings().inbox_uri)


def _check_worker_marts(settings: Any) -> None:
    """On a remote Airflow worker the data marts (the batches, and the inbox's claims) are the central ones: its own
    SQLite marts, in its state folder, nobody would read, and claims there would not stop another worker."""
    if settings.worker and not settings.marts_url:
        raise UsageError(f"The Airflow worker {settings.worker} has no data marts of the team's to write to: its "
                         "own SQLite marts, in its state folder, nobody would read.",
                         "set WINDPIPE_MARTS_URL on the worker to the central marts (postgresql+psycopg://marts@"
                         "<central host>:<port>/marts, the password in PGPASSWORD or ~/.pgpass)")


def _file_inputs(config: PipelineConfig, file: str) -> dict[str, str]:
    """The prediction pipeline's external table inputs (the features) all come from the inbox file."""
    from windpipe.pipeline.graph import build_graph
    from windpipe.pipeline.interfaces import load_interfaces

    graph = build_graph(load_interfaces(config.projects or projects_dir()), config.pipeline)
    kinds = {p.entity: p.kind for s in graph.specs.values() for p in s.inputs}
    return {e: file for e in graph.external if kinds.get(e) == "table"}


def _file_outputs(config: PipelineConfig, where: Callable[[str], str]) -> dict[str, str]:
    """Each output a prediction step writes where its parameter says: beside the scored file (`where(entity)`)."""
    from windpipe.pipeline.interfaces import load_interfaces

    specs = [s for s in load_interfaces(config.projects or projects_dir()) if s.pipeline == config.pipeline
             and not s.driver]
    return {p.entity: where(p.entity) for s in specs for p in s.outputs if p.parameter}


def file_config(config: PipelineConfig, parent: Any, file: str) -> PipelineConfig:
    """The prediction config for one claimed inbox file: its features, its output paths (named by its content),
    the DAG run's production model. A file that is gone is a WindpipeError."""
    settings = get_settings()
    box = _inbox(config)
    if not objects.exists(file, settings):
        raise WindpipeError(f"The inbox file {file} is gone: it disappeared after the inbox task claimed it.",
                            "put the file into the inbox again")
    claim = box.claim_of(file)
    name, sha = (claim.name, claim.sha256) if claim else (objects.name_of(file), objects.sha256(file, settings))
    production = parent.data.tags.get(names.entity_tag(names.PRODUCTION))
    external = {**_file_inputs(config, file), **({names.PRODUCTION: production} if production else {})}
    return dataclasses.replace(config, external=external,
                               outputs=_file_outputs(config, lambda entity: box.output_uri(name, sha, entity)))


def open_pipeline(config: PipelineConfig, dag_run: str) -> str:
    """An orchestrator's first task: check the conf, open the pipeline run (again on a retry); return its id.

    The prediction pipeline pins the production model here, so every file of the DAG run is scored
    with the same version (tag windpipe.entity.production on the pipeline run); with files waiting and
    no production model it stops here, leaving them in the inbox.
    """

    from windpipe.models import loading

    check_config(config)
    settings = get_settings()
    connect(settings)
    client = mlflow_client()
    experiment = client.get_experiment_by_name(settings.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(settings.experiment)
    same = client.search_runs([experiment_id], f"tags.`{names.DAG_RUN_TAG}` = '{dag_run}' and "
                                               "attributes.status = 'RUNNING'", max_results=1)
    if same:
        return same[0].info.run_id
    tags = {names.STEP_TAG: "pipeline", names.ENTRY_TAG: "main", names.DAG_RUN_TAG: dag_run,
            names.CODE_VERSION_TAG: code_version(projects_dir() / "pipeline"), **pipeline_tags(config, AIRFLOW)}
    if config.git_uri:  # one commit for every task of the DAG run, on whichever worker it runs
        tags[names.GIT_COMMIT_TAG] = resolve_git_version(config.git_uri, config.git_version)
    if config.pipeline == PREDICTION and _inbox(config).has_work():
        # (an empty inbox needs no model: a daily DAG run before the first promotion is no failure)
        tags[names.entity_tag(names.PRODUCTION)] = loading.resolve(None, settings, client).load_uri
    run = client.create_run(experiment_id, tags=tags, run_name=f"{config.pipeline} {dag_run}")
    return run.info.run_id


def _run_id(value: str, what: str) -> str:
    value = (value or "").strip()
    if len(value) != RUN_ID_LENGTH or not all(c in "0123456789abcdef" for c in value):
        raise UsageError(f"{what} is not an MLflow run id: {value[:80]!r}.",
                         "the task before it must print its run id as its last line (see the task's log)")
    return value


def claim_inbox(config: PipelineConfig, pipeline_run: str, say: Callable[[str], None] = print) -> list[str]:
    """The prediction DAG's inbox task: claim the new inbox files for the pipeline run (and what earlier runs left);
    return the claimed files it scores (windpipe.pipeline.inbox)."""
    return _inbox(config).claim(_run_id(pipeline_run, "the pipeline run"), say)


def run_task(config: PipelineConfig, pipeline_run: str, step: str, upstream: dict[str, str],
             file: str | None = None, index: int | None = None) -> StepResult:
    """An orchestrator's task: run (or reuse) one step inside the pipeline run, its producers' runs given by id."""

    settings = get_settings()
    if config.pipeline == PREDICTION:
        _check_worker_marts(settings)
    connect(settings, experiment=False)
    client = mlflow_client(settings)
    parent = client.get_run(_run_id(pipeline_run, "the pipeline run"))
    tag = f"{step}.{index}" if index is not None else None
    if config.git_uri and parent.data.tags.get(names.GIT_COMMIT_TAG):
        config = dataclasses.replace(config, git_version=parent.data.tags[names.GIT_COMMIT_TAG])
    if config.pipeline == PREDICTION:
        if not file:
            raise UsageError(f"The prediction step {step!r} needs the inbox file it scores.", "pass --file PATH")
        try:
            config = file_config(config, parent, file)
        except WindpipeError as exc:  # the file fails alone, with its reason (close settles it)
            client.set_tag(parent.info.run_id, names.pipeline_step_tag(tag or step), f"- failed {exc.problem[:2000]}")
            raise
    plan = plan_for(config, projects_dir())
    if step not in plan.names:
        raise UsageError(f"The {config.pipeline} pipeline has no step {step!r} (steps: {', '.join(plan.names)}).",
                         "the DAG is older than the step interfaces: let Airflow parse the DAG files again")
    planned = plan.step(step)
    missing = sorted(set(planned.needs) - set(upstream))
    if missing:
        raise UsageError(f"Step {step!r} reads from {', '.join(missing)}, whose run ids the task did not get.",
                         "the DAG is older than the step interfaces: let Airflow parse the DAG files again")
    results = {n: StepResult.of_run(n, client.get_run(_run_id(upstream[n], f"the run of {n}")), True, 0.0,
                                    plan.step(n).spec.key_metric) for n in planned.needs}
    end_earlier_attempts(client, parent, tag or step)
    _plain_shell_for_steps()
    with step_environment():
        return Launcher(config, plan, parent.info.run_id).run(planned, results, tag_as=tag)


def end_earlier_attempts(client: Any, parent: Any, task: str) -> list[str]:
    """End KILLED the step runs of this pipeline run's `task` that are still RUNNING; return their ids.

    An orchestrator starts a task again only once its earlier attempt is over: a run that attempt left RUNNING
    lost its process (a worker killed with kill -9, a machine gone), on whichever machine it ran. Its
    nested runs (a grid's children) end with it.
    """
    from windpipe.tracking.runs import fail_run

    filter_ = (f"tags.`{names.PIPELINE_RUN_TAG}` = '{parent.info.run_id}' and tags.`{names.TASK_TAG}` = '{task}' "
               "and attributes.status = 'RUNNING'")
    ended = []
    for run in client.search_runs([parent.info.experiment_id], filter_, max_results=100):
        children = client.search_runs([parent.info.experiment_id], f"tags.`{names.MLFLOW_PARENT_RUN_TAG}` = "
                                      f"'{run.info.run_id}' and attributes.status = 'RUNNING'", max_results=1000)
        host = run.data.tags.get(names.PROCESS_TAG, "").split(" ")[0] or "an unknown host"
        reason = f"killed: an earlier attempt of the task {task} (on {host}) died; the orchestrator tried it again"
        for run_ in (*children, run):
            fail_run(run_.info.run_id, reason, "KILLED", client)
            ended.append(run_.info.run_id)
        print(f"{task}: run {run.info.run_id} of an earlier attempt (on {host}) ended KILLED", flush=True)
    return ended


def _plain_shell_for_steps() -> None:
    """The step's `mlflow run` starts `bash -c "python step.py"`. Under an orchestrator the task's stdin may be a
    socket (Airflow 3's supervisor), and bash then reads ~/.bashrc, whose PATH (pyenv's shims, say) can pick
    another python: the steps get stdin from /dev/null (and `step_environment` puts this environment's bin/
    first on PATH)."""
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)


def close_pipeline(config: PipelineConfig, pipeline_run: str, files: Sequence[str] = (),
                   say: Callable[[str], None] = print) -> list[str]:
    """An orchestrator's last task: end the pipeline run FINISHED, or FAILED naming what did not finish; for the
    prediction pipeline first settle each claimed file: its outcome recorded, then moved to done/ (every step
    finished for it) or failed/ (with the reasons); claims the run did not score are released.
    Returns the problems, one line per file (or one for the training pipeline); empty when all finished."""

    from windpipe.tracking.runs import fail_run

    connect(get_settings(), experiment=False)
    client = mlflow_client()
    parent = client.get_run(_run_id(pipeline_run, "the pipeline run"))
    steps = check_config(config).names
    outcome = {k.removeprefix(names.PIPELINE_STEP_TAG_PREFIX): v for k, v in parent.data.tags.items()
               if k.startswith(names.PIPELINE_STEP_TAG_PREFIX)}
    items: list[int | None] = list(range(len(files))) if config.pipeline == PREDICTION else [None]
    problems: dict[int | None, list[str]] = {}
    for item in items:
        for step in steps:
            run_id, how, detail = _outcome(outcome.get(step if item is None else f"{step}.{item}"))
            if how in ("ran", "reused"):
                continue
            reason = (client.get_run(run_id).data.tags.get(names.FAILURE_TAG) if run_id != "-" else None) or detail
            problems.setdefault(item, []).append(f"{step} {how}" + (f" (run {run_id})" if run_id != "-" else "")
                                                 + (f": {reason}" if reason else ""))
    lines = ["; ".join(v) if item is None else f"{objects.name_of(files[item])}: {'; '.join(v)}"
             for item, v in problems.items()]
    if config.pipeline == PREDICTION:
        lines += _settle_files(_inbox(config), parent.info.run_id, files, problems, say)
    client.log_batch(parent.info.run_id, metrics=_metrics([_outcome(v)[1] for v in outcome.values()]))
    if lines:
        fail_run(parent.info.run_id, "\n".join(lines))
    else:
        client.set_terminated(parent.info.run_id, "FINISHED")
    return lines


def _settle_files(box: Inbox, holder: str, files: Sequence[str], problems: dict[int | None, list[str]],
                  say: Callable[[str], None]) -> list[str]:
    """Settle each claimed file (outcome first, then the move); a store that is down leaves the move to the next DAG
    run's inbox task, and is a problem of this one."""
    lines = []
    for i, file in enumerate(files):
        reasons = problems.get(i)
        try:
            box.settle(file, holder, "\n".join(reasons) if reasons else None, say)
        except WindpipeError as exc:
            lines.append(f"{objects.name_of(file)}: not settled ({exc.problem}); the next DAG run settles it "
                         f"({exc.fix})")
    try:
        box.release(holder, list(files), say)
    except WindpipeError as exc:
        lines.append(f"the claims this run did not score are not released ({exc.problem}); the lease frees them")
    return lines


def _outcome(value: str | None) -> tuple[str, str, str]:
    """A pipeline run's step tag `<run id> ran|reused|failed [reason]` as (run id, how, reason); no tag: not run."""
    if not value:
        return "-", "did not run", ""
    run_id, how, detail = (value + "  ").split(" ", 2)
    return run_id, how, detail.strip()


def _metrics(how: list[str]) -> list[Any]:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    counts = {"steps_reused": how.count("reused"), "steps_ran": how.count("ran"), "steps_failed": how.count("failed")}
    return [Metric(k, float(v), now, 0) for k, v in counts.items()]


def announce(result: StepResult) -> None:
    """The last line of an orchestrator task's output is the step's run id (Airflow pushes it as XCom)."""
    print(f"{result.name}: {'reused' if result.reused else 'ran'} run {result.run_id} in {result.seconds:.1f} s")
    print(result.run_id, flush=True)

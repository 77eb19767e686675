"""`windpipe pipeline run`, the commands an orchestrator's tasks run (`windpipe pipeline open | inbox | step |
close`), and `windpipe demo`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

if TYPE_CHECKING:
    from windpipe.pipeline.plan import PipelineConfig
    from windpipe.settings import Settings

app = typer.Typer()
DEFAULT_RAW = Path("data/raw")
PROCESSED_FILE = "processed_file"  # the process step's external input for --processed (projects/process/step.yaml)
pipeline_app = typer.Typer(help="Run the training pipeline built from the step interfaces (projects/*/step.yaml).",
                           no_args_is_help=True)
app.add_typer(pipeline_app, name="pipeline")


def run_training(raw: Path | None, quick: bool = False, force: bool = False, env_manager: str = "local",
                 params: list[str] | None = None, from_git: str | None = None,
                 git_version: str | None = None, processed: Path | None = None, jobs: int = 0) -> list:
    """The training pipeline over the raw folder (or a processed file), everything checked before the
    first run starts."""
    from windpipe.data.process import check_processed, read_processed
    from windpipe.errors import UsageError
    from windpipe.pipeline.cache import content_hash
    from windpipe.pipeline.plan import PipelineConfig, parse_overrides, plan_for
    from windpipe.settings import get_settings, projects_dir
    from windpipe.steps.driver import driver
    from windpipe.tracking.client import connect

    if jobs < 0:
        raise UsageError(f"--jobs must be 1 or more (0: one per core), got {jobs}.", "pass e.g. --jobs 2")
    if processed is not None and raw is not None:
        raise UsageError("--raw and --processed both given.",
                         "pass --raw DIR (raw files to process) or --processed FILE (already processed), not both")
    external = {PROCESSED_FILE: str(processed)} if processed is not None else {"raw": str(raw or DEFAULT_RAW)}
    overrides = parse_overrides(params)
    config = PipelineConfig(external=external, preset="quick" if quick else "full", force=force,
                            env_manager=env_manager, overrides=overrides, git_uri=from_git,
                            git_version=git_version, jobs=jobs)
    plan_for(config, projects_dir())  # a bad -P, a broken interface: said before any run is created
    if processed is not None:  # a bad file: said before any run is created (the process step checks it again)
        check_processed(read_processed(processed), f"The processed file {processed}",
                        overrides.get("process", {}).get("duplicates", "error"))
    content_hash(Path(next(iter(external.values()))))  # missing raw files: said before any run is created
    connect(get_settings())
    return driver(config, step_dir=projects_dir() / "pipeline")


@pipeline_app.command("run")
def pipeline_run(
    raw: Annotated[Optional[Path], typer.Option(help="Folder with the raw OPSD-shaped CSV files [default: data/raw].")
                   ] = None,
    processed: Annotated[Optional[Path], typer.Option(
        help="A processed CSV or parquet file (shaped like germany.csv) to train on instead of raw files.")] = None,
    quick: Annotated[bool, typer.Option(help="The quick presets of the step.yaml files (small grid, few epochs).")
                     ] = False,
    force: Annotated[bool, typer.Option(help="Rerun every step, ignoring the cache.")] = False,
    env_manager: Annotated[str, typer.Option(help="Environment of each step run: local, virtualenv or uv.")] = "local",
    param: Annotated[Optional[list[str]], typer.Option(
        "--param", "-P", help="Override a step parameter: STEP.NAME=VALUE (e.g. rf.max_depth=8,12); repeatable.")
    ] = None,
    from_git: Annotated[Optional[str], typer.Option(
        help="Run the step projects from this git repository (<uri>#projects/<step>) instead of this checkout.")
    ] = None,
    git_version: Annotated[Optional[str], typer.Option(help="Branch, tag or commit for --from-git.")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Steps that run side by side (0: one per core).")] = 0,
) -> None:
    """Run every step of the training pipeline; reuse steps whose inputs did not change.

    Reads RAW/*.csv (or the PROCESSED file, which the process step checks and logs as the processed
    entity); each step is `mlflow run projects/<step>` as a child of one pipeline run, wired and
    ordered by the step interfaces (process -> lr, rf, keras -> compare -> promote); steps whose
    inputs are ready run side by side (--jobs). Each step's output goes to
    <state folder>/logs/pipeline/<pipeline run id>/<step>.log.
    """
    run_training(raw, quick, force, env_manager, param, from_git, git_version, processed, jobs)


# ------------------------------------------------------------------ what an orchestrator's tasks run

ConfOption = Annotated[str, typer.Option(help="The DAG run's conf as JSON, e.g. '{\"quick\": true}'.")]
PipelineOption = Annotated[str, typer.Option(help="training or prediction.")]


def _config(pipeline: str, conf: str) -> PipelineConfig:
    from windpipe.errors import UsageError
    from windpipe.pipeline.plan import config_from_conf
    from windpipe.settings import get_settings

    try:
        data = json.loads(conf or "{}")
    except json.JSONDecodeError as exc:
        raise UsageError(f"The conf is not JSON ({exc.msg}): {conf[:200]!r}.", 'pass e.g. {"quick": true}') from None
    if not isinstance(data, dict):
        raise UsageError(f"The conf must be a JSON object, got {conf[:200]!r}.", 'pass e.g. {"quick": true}')
    return config_from_conf(pipeline, data, get_settings().inbox_uri)  # (this machine's, unless the conf names one)


def _json(text: str, what: str) -> Any:
    from windpipe.errors import UsageError

    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} is not JSON ({exc.msg}): {text[:200]!r}.", "see the task before this one") from None


StdinOption = Annotated[bool, typer.Option(
    "--stdin", help="Read the values (conf, run ids, files) as one JSON object from stdin, as the Airflow tasks do.")]


def _task_input(use_stdin: bool, **given: Any) -> dict[str, Any]:
    """The options of an orchestrator's command; with --stdin, a JSON object on stdin overrides them (what a
    task gets from a user never passes through a command line)."""
    from windpipe.errors import UsageError

    if not use_stdin:
        return given
    data = _json(sys.stdin.read(), "The JSON on stdin")
    if not isinstance(data, dict) or set(data) - set(given):
        raise UsageError(f"stdin must hold a JSON object with keys among {', '.join(given)}.",
                         "let the DAG's task call it, or pass the values as options")
    if "conf" in data:
        data["conf"] = json.dumps(data["conf"])
    for key in ("upstream", "files"):
        if key in data:
            data[key] = json.dumps(data[key])
    return {**given, **data}


def pipeline_open(
    dag_run: Annotated[str, typer.Option(help="The orchestrator's run, e.g. <dag id>/<run id>.")] = "",
    pipeline: PipelineOption = "training",
    conf: ConfOption = "{}",
    stdin: StdinOption = False,
) -> None:
    """An orchestrator's first task: check the conf, open the pipeline run; the last line is its run id."""
    from windpipe.errors import UsageError
    from windpipe.steps.driver import open_pipeline

    given = _task_input(stdin, dag_run=dag_run, conf=conf)
    if not given["dag_run"]:
        raise UsageError("No --dag-run given.", "pass --dag-run <dag id>/<run id>")
    run_id = open_pipeline(_config(pipeline, given["conf"]), given["dag_run"])
    typer.echo(f"{pipeline} pipeline run {run_id} for {given['dag_run']}")
    typer.echo(run_id)


def pipeline_inbox(
    pipeline_run: Annotated[str, typer.Option(help="The run id `windpipe pipeline open` printed.")] = "",
    pipeline: PipelineOption = "prediction",
    conf: ConfOption = "{}",
    stdin: StdinOption = False,
) -> None:
    """The prediction DAG's inbox task: claim the new inbox files (and what earlier runs left) for the pipeline run;
    the last line is the JSON list of the claimed files the step tasks score."""
    from windpipe.errors import UsageError
    from windpipe.steps.driver import claim_inbox

    if pipeline != "prediction":
        raise UsageError(f"Only the prediction pipeline has an inbox, not {pipeline!r}.", "pass --pipeline prediction")
    given = _task_input(stdin, pipeline_run=pipeline_run, conf=conf)
    files = claim_inbox(_config(pipeline, given["conf"]), given["pipeline_run"], say=typer.echo)
    typer.echo(f"{len(files)} file(s) to score")
    typer.echo(json.dumps(files))


def pipeline_step(
    step: Annotated[str, typer.Argument(help="The step to run, e.g. lr.")],
    pipeline_run: Annotated[str, typer.Option(help="The run id `windpipe pipeline open` printed.")] = "",
    upstream: Annotated[str, typer.Option(help="JSON: the run id of each step it reads from.")] = "{}",
    pipeline: PipelineOption = "training",
    conf: ConfOption = "{}",
    file: Annotated[Optional[str], typer.Option(help="prediction: the inbox file this task scores.")] = None,
    index: Annotated[Optional[int], typer.Option(help="prediction: the file's place in the DAG run's list.")] = None,
    stdin: StdinOption = False,
) -> None:
    """An orchestrator's task: run (or reuse) one step as a child of the pipeline run; the last line is its run id."""
    from windpipe.steps.driver import announce, run_task

    given = _task_input(stdin, pipeline_run=pipeline_run, upstream=upstream, conf=conf, file=file, index=index)
    announce(run_task(_config(pipeline, given["conf"]), given["pipeline_run"], step,
                      _json(given["upstream"], "--upstream"), given["file"], given["index"]))


def pipeline_close(
    pipeline_run: Annotated[str, typer.Option(help="The run id `windpipe pipeline open` printed.")] = "",
    pipeline: PipelineOption = "training",
    conf: ConfOption = "{}",
    files: Annotated[str, typer.Option(help="prediction: JSON list of the inbox files of this DAG run.")] = "[]",
    stdin: StdinOption = False,
) -> None:
    """An orchestrator's last task: end the pipeline run (FAILED naming what did not finish; exit 1);
    prediction: move each file to done/ or failed/ with the reason."""
    from windpipe.steps.driver import close_pipeline

    given = _task_input(stdin, pipeline_run=pipeline_run, conf=conf, files=files)
    problems = close_pipeline(_config(pipeline, given["conf"]), given["pipeline_run"],
                              _json(given["files"], "--files") or [], say=typer.echo)
    for line in problems:
        typer.echo(f"not finished: {line}", err=True)
    typer.echo(f"pipeline run {given['pipeline_run']}: {'FAILED' if problems else 'FINISHED'}")
    if problems:
        raise typer.Exit(1)


# the commands an orchestrator's tasks run (windpipe.pipeline.dags), one per kind of task
for _name, _command in (("open", pipeline_open), ("inbox", pipeline_inbox), ("step", pipeline_step),
                         ("close", pipeline_close)):
    pipeline_app.command(_name)(_command)


def _demo_batch_and_report(raw: Path, settings: Settings) -> None:
    """Score the last four weeks as a batch (marts + drift), score it against their recorded power
    (`windpipe monitor`) and write the weekly report."""
    import pandas as pd

    from windpipe.data.process import process, read_raw
    from windpipe.fileio import atomic_path
    from windpipe.names import FEATURES, TARGETS, TIMESTAMP
    from windpipe.steps.monitor import main as monitor_main
    from windpipe.steps.predict import main as predict_main
    from windpipe.views.report import create_report

    df = process(*read_raw(raw))
    batch = df[df[TIMESTAMP] > df[TIMESTAMP].max() - pd.Timedelta(days=28)][[TIMESTAMP, *FEATURES]]
    features = settings.paths.output_dir("demo", "last_4_weeks_features.parquet")
    with atomic_path(features) as tmp:
        batch.to_parquet(tmp, index=False)
    predict_main(str(features), str(features.with_name("last_4_weeks_predictions.parquet")), None, True, False,
                 source="cli")
    # the recorded power of those hours "arrives": the production model's error on them, in the marts
    actuals = features.with_name("last_4_weeks_recorded.parquet")
    with atomic_path(actuals) as tmp:
        df.loc[batch.index, [TIMESTAMP, *TARGETS]].to_parquet(tmp, index=False)
    monitor_main(str(actuals), settings=settings, say=typer.echo)
    path, rep = create_report(settings)
    typer.echo(f"report: week {rep.week} -> {path}")


@app.command()
def demo(
    raw: Annotated[Path, typer.Option(help="Raw data folder; generated (4 years) if missing.")] = Path("data/raw"),
    quick: Annotated[bool, typer.Option(help="Small grid and few epochs.")] = False,
) -> None:
    """Generate raw data if needed, run the whole pipeline and promote, score the last four weeks
    as a prediction batch, write the weekly report, start JupyterLab and the dashboard in the background."""
    from windpipe.settings import get_settings
    from windpipe.views.dashboard import serve

    if not raw.exists() or not any(raw.glob("*.csv")):
        from windpipe.data.synth import write_raw

        typer.echo(f"generating raw data in {raw} ...")
        write_raw(raw)
    run_training(raw, quick)
    settings = get_settings()
    uri = settings.effective_tracking_uri
    typer.echo(
        "\nnext:\n"
        f"  open the MLflow UI:     {uri}  (experiment {settings.experiment})\n"
        f"  serve the model:        windpipe serve --port {settings.serve_port}\n"
        f"  rerun (all cached):     windpipe pipeline run --raw {raw}\n"
        f"  change a step:          windpipe pipeline run --raw {raw} -P rf.max_depth=8,12\n"
    )
    _demo_batch_and_report(raw, settings)
    _demo_lab(settings)
    pid, url = serve.start(settings)
    typer.echo(f"dashboard: running (pid {pid}) at {url}   (stop: windpipe dashboard --stop)")


def _demo_lab(settings: Settings) -> None:
    """Start JupyterLab for the notebooks; a lab that cannot start (its port taken) does not stop the demo."""
    from windpipe.cli.workbench import describe
    from windpipe.errors import WindpipeError
    from windpipe.workbench import lab

    try:
        pid, url = lab.start(settings)
    except WindpipeError as exc:
        typer.echo(f"lab: not started: {exc}")
        return
    typer.echo(describe(settings, pid, url))

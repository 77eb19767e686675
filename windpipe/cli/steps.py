"""`windpipe steps | graph | run | new-step | export-step`: the step interfaces, and one step's run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer()


@app.command("new-step")
def new_step(
    name: Annotated[str, typer.Argument(help="Step name: lower-case letters, digits and _, e.g. clean_weather.")],
    inputs: Annotated[Optional[str], typer.Option(
        help="Entities it reads, comma-separated (e.g. processed); each becomes a <entity>_uri parameter.")] = None,
    outputs: Annotated[Optional[str], typer.Option(
        help="Entities it writes, comma-separated (default: one named after the step).")] = None,
    dest: Annotated[Optional[Path], typer.Option(help="Folder of step folders (default: projects/).")] = None,
    description: Annotated[Optional[str], typer.Option(help="One line on what the step does.")] = None,
    pipeline: Annotated[str, typer.Option(
        help="The pipeline (and Airflow DAG) that runs it: training, prediction or none.")] = "training",
    family: Annotated[bool, typer.Option(
        "--family", help="A model family: its module in windpipe/training/families/ and its training step.")] = False,
    family_dir: Annotated[Optional[Path], typer.Option(
        help="With --family: the folder of family modules (default: windpipe/training/families/).")] = None,
) -> None:
    """Create DEST/NAME: MLproject, python_env.yaml, step.py, step.yaml, README.md, test_step.py.

    Reads the interfaces of the existing steps (to find the schema of each input) and writes
    nothing unless the new step fits the pipeline. The step runs at once:
    `mlflow run projects/NAME --env-manager local`. With --family: a model family, the module
    windpipe/training/families/NAME.py (a Ridge regression to start from) and DEST/NAME, a trainer
    that joins the training pipeline, its Airflow DAG and compare's candidates as it is.
    """
    from windpipe.errors import UsageError
    from windpipe.pipeline import scaffold

    if family:
        if inputs or outputs or pipeline != "training":
            raise UsageError("--family makes a trainer: it reads processed and writes model in the training "
                             "pipeline, so --inputs, --outputs and --pipeline do not apply.",
                             f"run `windpipe new-step {name} --family` alone")
        folder, module = scaffold.new_family(name, dest, family_dir, description)
        typer.echo(f"created {module} (the model: fit, Params) and {folder}")
    else:
        folder = scaffold.new_step(name, inputs, outputs, dest, description, pipeline)
        typer.echo(f"created {folder}")
    typer.echo(f"run it:  mlflow run {folder} --env-manager local")

@app.command("export-step")
def export_step(
    step_dir: Annotated[Path, typer.Argument(help="The step folder, e.g. projects/lr.")],
    dest: Annotated[Path, typer.Argument(help="A new (or empty) folder for the repository.")],
) -> None:
    """Make STEP_DIR a standalone git repository at DEST (windpipe vendored, one initial commit).

    Run it with `mlflow run DEST --version <commit> --env-manager local`; the run records the
    commit as `mlflow.source.git.commit`.
    """
    from windpipe.pipeline.export import export_step as export

    result = export(step_dir, dest)
    typer.echo(f"exported step {result.step} -> {result.dest} (commit {result.commit})")
    typer.echo(f"run it:  mlflow run {result.dest} --version {result.commit} --env-manager local")

@app.command("graph")
def graph(
    out: Annotated[Path, typer.Option(help="HTML file to write (plotly.js inlined: opens offline).")] = Path(
        "pipeline.html"),
    projects: Annotated[Optional[Path], typer.Option(help="Folder of step folders (default: projects/).")] = None,
    statuses: Annotated[bool, typer.Option(help="Colour steps by their latest run (needs the platform).")] = True,
) -> None:
    """Draw the pipeline from the step interfaces (steps, entities, latest run of each step) as HTML.

    Reads projects/*/step.yaml; writes OUT. Without a running platform the graph is drawn
    anyway and says the run statuses are unavailable.
    """
    from windpipe.pipeline.figure import pipeline_figure, statuses_or_note, write_pipeline_html
    from windpipe.pipeline.graph import build_graph
    from windpipe.pipeline.interfaces import load_interfaces, missing_interfaces
    from windpipe.settings import projects_dir

    projects = projects or projects_dir()
    g = build_graph(load_interfaces(projects))
    found, note = statuses_or_note([*g.order, *g.drivers]) if statuses else (None, "run statuses not fetched")
    path = write_pipeline_html(pipeline_figure(g, found, note=note), out)
    typer.echo(f"wrote {path}: {len(g.order)} steps in run order {' -> '.join(g.order)}")
    typer.echo(note)
    for folder in missing_interfaces(projects):
        typer.echo(f"note: {folder} has an MLproject but no step.yaml, so it is not drawn", err=True)

@app.command("steps")
def steps(
    projects: Annotated[Optional[Path], typer.Option(help="Folder of step folders (default: projects/).")] = None,
) -> None:
    """List the steps of each pipeline in run order with the entities they read and write; check every interface."""
    from windpipe.pipeline.graph import build_graph
    from windpipe.pipeline.interfaces import PIPELINES, load_interfaces, missing_interfaces
    from windpipe.settings import projects_dir

    projects = projects or projects_dir()
    specs = load_interfaces(projects)
    build_graph(specs)  # the whole graph: a cycle or an unproduced input is an error here
    for pipeline in PIPELINES:
        names = [s.name for s in specs if s.pipeline == pipeline and not s.driver]
        if not names:
            continue
        g = build_graph(specs, None if pipeline == "none" else pipeline)
        typer.echo(f"{pipeline} pipeline:" if pipeline != "none" else "run by hand:")
        for name in [n for n in g.order if n in names]:
            spec = g.specs[name]
            ins = ", ".join(p.entity for p in spec.inputs) or "-"
            outs = ", ".join(p.entity for p in spec.outputs) or "-"
            typer.echo(f"  {name:<12} {ins:<22} -> {outs:<22} runs {spec.entry_point} "
                       f"(entry points: {', '.join(spec.entry_points)})")
    for spec in specs:
        if spec.driver:
            typer.echo(f"driver: {spec.name} (runs the training pipeline)")
    missing = missing_interfaces(projects)
    for folder in missing:
        typer.echo(f"{folder.name:<12} no step.yaml (interface missing)", err=True)
    if missing:
        raise typer.Exit(1)


@app.command("run")
def run(
    step: Annotated[str, typer.Argument(help="The step folder's name, e.g. lr.")],
    entry_point: Annotated[str, typer.Option("--entry-point", "-e", help="The MLproject entry point.")] = "main",
    param: Annotated[Optional[list[str]], typer.Option(
        "--param", "-P", help="A parameter: NAME=VALUE (e.g. data=processed.parquet); repeatable.")] = None,
    projects: Annotated[Optional[Path], typer.Option(help="Folder of step folders (default: projects/).")] = None,
) -> None:
    """Run one step's MLflow project in this process: the run `mlflow run projects/STEP -e ENTRY
    --env-manager local` makes, with Python and MLflow started once instead of twice.

    Parameters are checked against the step's MLproject before the run exists; exit 1 when the step fails.
    """
    from windpipe.errors import UsageError
    from windpipe.pipeline.interfaces import read_mlproject
    from windpipe.settings import get_settings, projects_dir

    project = read_mlproject((projects or projects_dir()) / step)
    entry_points = project.entry_points
    if entry_point not in entry_points:
        raise UsageError(f"The step {step!r} has no entry point {entry_point!r}.",
                         f"use one of {', '.join(entry_points)}")
    params = {}
    for item in param or []:
        name, sep, value = item.partition("=")
        if not sep or name not in entry_points[entry_point]:
            raise UsageError(f"-P {item!r}: the {entry_point} entry point of {step} takes "
                             f"{', '.join(entry_points[entry_point]) or 'no parameters'}.",
                             "write -P NAME=VALUE with one of those names")
        params[name] = value
    import mlflow

    from windpipe.pipeline.project_run import run_here
    from windpipe.tracking.client import connect

    settings = get_settings()
    connect(settings, experiment=False)
    run = run_here(project, entry_point, params, mlflow.set_experiment(settings.experiment).experiment_id)
    typer.echo(f"{step} {entry_point}: run {run.info.run_id} {run.info.status}")
    if run.info.status != "FINISHED":
        raise typer.Exit(1)

"""`windpipe` commands for steps: new-step, export-step, graph, steps (registered by windpipe.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `windpipe` app."""

    @app.command("new-step")
    def new_step(
        name: Annotated[str, typer.Argument(help="Step name: lower-case letters, digits and _, e.g. clean_weather.")],
        inputs: Annotated[Optional[str], typer.Option(
            help="Entities it reads, comma-separated (e.g. processed); each becomes a <entity>_uri parameter.")] = None,
        outputs: Annotated[Optional[str], typer.Option(
            help="Entities it writes, comma-separated (default: one named after the step).")] = None,
        dest: Annotated[Optional[Path], typer.Option(help="Folder of step folders (default: projects/).")] = None,
        description: Annotated[Optional[str], typer.Option(help="One line on what the step does.")] = None,
    ) -> None:
        """Create DEST/NAME: MLproject, python_env.yaml, step.py, step.yaml, README.md, test_step.py.

        Reads the interfaces of the existing steps (to find the schema of each input) and writes
        nothing unless the new step fits the pipeline. The step runs at once:
        `mlflow run projects/NAME --env-manager local`.
        """
        from windpipe.scaffold import new_step as make

        folder = make(name, inputs, outputs, dest, description)
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
        from windpipe.export import export_step as export

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
        from windpipe.stepgraph import pipeline_figure, statuses_or_note, write_pipeline_html
        from windpipe.stepspec import build_graph, load_specs, missing_interfaces

        g = build_graph(load_specs(projects))
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
        """List the steps in run order with the entities each reads and writes; check every interface."""
        from windpipe.stepspec import build_graph, interface_disagreements, load_specs, missing_interfaces

        g = build_graph(load_specs(projects))
        bad = 0
        for name in [*g.order, *g.drivers]:
            spec = g.specs[name]
            ins = ", ".join(p.entity for p in spec.inputs) or "-"
            outs = ", ".join(p.entity for p in spec.outputs) or "-"
            eps = ", ".join(spec.entry_points)
            typer.echo(f"{name:<12} {ins:<22} -> {outs:<22} entry points: {eps}" + (" (driver)" if spec.driver else ""))
            for diff in interface_disagreements(spec):
                bad += 1
                typer.echo(f"  disagrees with MLproject: {diff}", err=True)
        for folder in missing_interfaces(projects):
            bad += 1
            typer.echo(f"{folder.name:<12} no step.yaml (interface missing)", err=True)
        if bad:
            raise typer.Exit(1)

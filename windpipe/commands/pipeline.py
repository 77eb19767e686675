"""`windpipe pipeline run` and `windpipe demo` (registered by windpipe.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

pipeline_app = typer.Typer(help="Run the whole pipeline (process -> lr, rf, keras -> compare -> promote).",
                           no_args_is_help=True)


def _run(raw: Path, quick: bool, force: bool, env_manager: str, params: list[str] | None,
         from_git: str | None, git_version: str | None) -> list:
    from windpipe.pipeline import PipelineConfig, parse_overrides, raw_hash
    from windpipe.settings import get_settings
    from windpipe.steps.pipeline import driver
    from windpipe.tracking import connect

    raw_hash(raw)  # a clear error about missing raw files before any run is created
    connect(get_settings())
    config = PipelineConfig(raw_dir=raw, quick=quick, force=force, env_manager=env_manager,
                            overrides=parse_overrides(params), git_uri=from_git, git_version=git_version)
    return driver(config, step_dir=Path(__file__).resolve().parents[2] / "projects" / "pipeline")


@pipeline_app.command("run")
def run(
    raw: Annotated[Path, typer.Option(help="Folder with the raw OPSD-shaped CSV files.")] = Path("data/raw"),
    quick: Annotated[bool, typer.Option(help="Small rf grid and few keras epochs (demos, tests).")] = False,
    force: Annotated[bool, typer.Option(help="Rerun every step, ignoring the cache.")] = False,
    env_manager: Annotated[str, typer.Option(help="Environment of each step run: local, virtualenv or uv.")] = "local",
    param: Annotated[Optional[list[str]], typer.Option(
        "--param", "-P", help="Override a step parameter: STEP.NAME=VALUE (e.g. rf.max_depth=8,12); repeatable.")
    ] = None,
    from_git: Annotated[Optional[str], typer.Option(
        help="Run the step projects from this git repository (<uri>#projects/<step>) instead of this checkout.")
    ] = None,
    git_version: Annotated[Optional[str], typer.Option(help="Branch, tag or commit for --from-git.")] = None,
) -> None:
    """Run process -> lr, rf grid, keras -> compare -> promote; reuse steps whose inputs did not change.

    Reads RAW/*.csv; each step is `mlflow run projects/<step>` as a child of one pipeline run.
    """
    _run(raw, quick, force, env_manager, param, from_git, git_version)


def _demo_batch_and_report(raw: Path, settings) -> None:  # noqa: ANN001
    """Score the last four weeks as a batch (marts + drift) and write the weekly report."""
    import pandas as pd

    from windpipe.data.process import process, read_raw
    from windpipe.entities import FEATURES, TIMESTAMP
    from windpipe.fileio import atomic_path
    from windpipe.report import create_report
    from windpipe.steps.predict import main as predict_main

    df = process(*read_raw(raw))
    batch = df[df[TIMESTAMP] > df[TIMESTAMP].max() - pd.Timedelta(days=28)][[TIMESTAMP, *FEATURES]]
    out_dir = settings.home / "demo"
    features = out_dir / "last_4_weeks_features.parquet"
    with atomic_path(features) as tmp:
        batch.to_parquet(tmp, index=False)
    predict_main(str(features), str(out_dir / "last_4_weeks_predictions.parquet"), None, True, False, source="cli")
    path, rep = create_report(settings)
    typer.echo(f"report: week {rep.week} -> {path}")


def _demo_finale(settings) -> None:  # noqa: ANN001
    """What `windpipe demo` does last: the dashboard in the background."""
    from windpipe.dashboard import serve

    pid, url = serve.start(settings)
    typer.echo(f"dashboard: running (pid {pid}) at {url}   (stop: windpipe dashboard --stop)")


def register(app: typer.Typer) -> None:
    """Add `windpipe pipeline ...` and `windpipe demo`."""
    app.add_typer(pipeline_app, name="pipeline")

    @app.command()
    def demo(
        raw: Annotated[Path, typer.Option(help="Raw data folder; generated (4 years) if missing.")] = Path("data/raw"),
        quick: Annotated[bool, typer.Option(help="Small grid and few epochs.")] = False,
    ) -> None:
        """Generate raw data if needed, run the whole pipeline and promote, score the last four weeks
        as a prediction batch, write the weekly report and start the dashboard in the background."""
        from windpipe.settings import get_settings

        if not raw.exists() or not any(raw.glob("*.csv")):
            from windpipe.data.synth import write_raw

            typer.echo(f"generating raw data in {raw} ...")
            write_raw(raw)
        _run(raw, quick, False, "local", None, None, None)
        settings = get_settings()
        uri = settings.effective_tracking_uri
        typer.echo(
            "\nnext:\n"
            f"  open the MLflow UI:     {uri}  (experiment {settings.experiment})\n"
            f"  serve the model:        windpipe serve --port {settings.serve_port}\n"
            f"  rerun (all cached):     windpipe pipeline run --raw {raw}\n"
            f"  change a step:          windpipe pipeline run --raw {raw} --param rf.max_depth=8,12\n"
        )
        _demo_batch_and_report(raw, settings)
        _demo_finale(settings)

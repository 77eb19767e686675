"""`windpipe compare | promote | rollback | models | package`: the registry and its runs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from windpipe.names import PRODUCTION

if TYPE_CHECKING:
    from windpipe.settings import Settings

app = typer.Typer()


def _fmt(metrics: dict[str, float] | None, keys: tuple[str, ...] = ("rmse", "mae", "r2")) -> str:
    if not metrics:
        return "-"
    return "  ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)


@app.command()
def compare(
    experiment: Annotated[Optional[str], typer.Option(help="Experiment (default: settings.experiment).")] = None,
    metric: Annotated[str, typer.Option(help="Sort by this metric (rmse, mae: lower is better; r2: higher).")]
    = "rmse",
    filter: Annotated[str, typer.Option(
        "--filter", help="MLflow search filter, e.g. \"params.split_by = 'time'\".")] = "",
    top: Annotated[Optional[int], typer.Option(help="Show only the best N runs.")] = None,
    format: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
) -> None:
    """Finished runs with a model, side by side with params and metrics, best first.

    Reads the runs of the experiment (tags windpipe.model_uri, windpipe.model_family).
    """
    from windpipe.errors import UsageError
    from windpipe.models.compare import FORMATS, compare_runs, format_runs

    if format not in FORMATS:
        raise UsageError(f"Unknown format {format!r}.", f"use --format {' | '.join(FORMATS)}")
    df = compare_runs(experiment=experiment, metric=metric, filter_string=filter, top=top)
    typer.echo(format_runs(df, metric, format))

@app.command()
def promote(
    metric: Annotated[str, typer.Option(help="Gate metric, scored on the holdout (rmse, mae, r2, ...).")] = "rmse",
    run_id: Annotated[Optional[str], typer.Option(help="Promote this run instead of the best one.")] = None,
    margin: Annotated[float, typer.Option(
        help="Relative improvement the challenger needs over production (0.02 = 2 % better).")] = 0.0,
    force: Annotated[bool, typer.Option("--force", help="Move production even if the gate fails.")] = False,
) -> None:
    """Register the best run as `challenger`; move `production` if it beats production on the same holdout.

    Reads the runs of the experiment and their processed entity; writes a version of the
    registered model with tags and the aliases challenger / production.
    """
    from windpipe.models.promotion import promote as do_promote
    from windpipe.settings import get_settings

    settings = get_settings()
    res = do_promote(settings, metric=metric, run_id=run_id, margin=margin, force=force, say=typer.echo)
    name = settings.model_name
    typer.echo(f"challenger: {name} v{res.version} ({res.instance_name}) from run {res.run_id}")
    typer.echo(f"  challenger        {_fmt(res.challenger_metrics)}")
    if res.previous is not None and res.production_metrics is not None:
        typer.echo(f"  production v{res.previous:<4} {_fmt(res.production_metrics)}")
    if res.promoted:
        was = f" (was v{res.previous})" if res.previous is not None else ""
        typer.echo(f"promoted: {name}@{PRODUCTION} -> v{res.version}{was}: {res.reason}")
    else:
        now = f"v{res.production}" if res.production is not None else "none"
        typer.echo(f"not promoted: {name}@{PRODUCTION} stays {now}: {res.reason}")

@app.command()
def rollback() -> None:
    """Point `production` back at the version it replaced."""
    from windpipe.models.registry import rollback as do_rollback
    from windpipe.settings import get_settings

    settings = get_settings()
    res = do_rollback(settings, say=typer.echo)
    typer.echo(f"rolled back: {settings.model_name}@{PRODUCTION} -> v{res.version} ({res.instance_name}), "
               f"was v{res.from_version}")

@app.command()
def models(
    format: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    history: Annotated[bool, typer.Option(
        "--history", help="List every move of the production and challenger aliases instead: when, from which "
        "version to which, by whom, why, from which pipeline run.")] = False,
) -> None:
    """List the versions of the registered model: instance name, aliases, holdout metrics, run, status."""
    from windpipe.errors import UsageError
    from windpipe.settings import get_settings

    if format not in ("table", "csv", "json"):
        raise UsageError(f"Unknown format {format!r}.", "use --format table | csv | json")
    settings = get_settings()
    if history:
        _history(settings, format)
        return
    from windpipe.models.registry import list_versions

    df = list_versions(settings)
    if format == "csv":
        typer.echo(df.to_csv(index=False), nl=False)
    elif format == "json":
        typer.echo(df.to_json(orient="records", date_format="iso", indent=2))
    elif format == "table":
        if df.empty:
            typer.echo(f"{settings.model_name} has no versions yet (run `windpipe promote`).")
            return
        cols = ["version", "instance_name", "aliases", "holdout_rmse", "holdout_r2", "family", "run_id", "status"]
        typer.echo(df[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    else:
        raise UsageError(f"Unknown format {format!r}.", "use --format table | csv | json")

def _history(settings: Settings, format: str) -> None:
    import pandas as pd

    from windpipe.models.history import history

    df = history(settings)
    if format == "csv":
        typer.echo(df.to_csv(index=False), nl=False)
    elif format == "json":
        typer.echo(df.to_json(orient="records", date_format="iso", indent=2))
    elif df.empty:
        typer.echo(f"{settings.model_name} has no alias moves recorded yet (run `windpipe promote`).")
    else:
        def version(v: object) -> str:
            return "-" if pd.isna(v) else f"v{v}"

        for row in df.itertuples():
            when = "noticed now" if pd.isna(row.at) else row.at.strftime("%Y-%m-%d %H:%M:%S")
            who = f"{row.user}@{row.host}" if row.user else "?"
            run = f"  pipeline run {row.pipeline_run}" if row.pipeline_run else ""
            typer.echo(f"{when}  {row.alias:<10} {version(row.from_version):>4} -> {version(row.to_version):<4} "
                       f"{row.action:<8} {who}: {row.reason}{run}")


@app.command()
def package(
    registry: Annotated[str, typer.Option(help="Image registry, e.g. registry.example.com/team.")],
    env: Annotated[str, typer.Option(help="Environment part of the image name, e.g. dev.")],
    zone: Annotated[str, typer.Option(help="Zone part of the image name, e.g. eu-west.")],
    out: Annotated[Optional[Path], typer.Option(help="Build context folder (default: <home>/docker/<instance>).")]
    = None,
) -> None:
    """Write a Docker build context for models:/<model>@production and print the image name.

    Writes OUT/Dockerfile, OUT/model_dir (MLmodel, requirements), OUT/build.sh, OUT/image.txt;
    the image is <registry>/<env>.windpipe.<zone>.<step>:<run_id>.
    """
    from windpipe.deploy.packaging import package as do_package

    res = do_package(registry, env, zone, out)
    typer.echo(f"build context for {res.instance_name} ({res.model_uri}): {res.path}", err=True)
    typer.echo(f"build it with: docker build -t {res.image} {res.path}", err=True)
    typer.echo(res.image)

"""`windpipe data ...`: make and inspect data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Make and inspect data.", no_args_is_help=True)
GROUP = {"name": "data"}


@app.command("synth")
def synth(
    out: Annotated[Path, typer.Option(help="Folder to write the raw OPSD-shaped CSV files into.")],
    seed: Annotated[int, typer.Option(min=0, help="Random seed (0 or more); the same seed gives the same files.")] = 42,
    start: Annotated[int, typer.Option(help="First year.")] = 2013,
    years: Annotated[int, typer.Option(help="Number of years (hourly rows).")] = 4,
) -> None:
    """Write raw files shaped like the Open Power System Data downloads.

    Writes OUT/time_series_60min_singleindex.csv and OUT/weather_data.csv.
    """
    from windpipe.data.synth import write_raw

    for p in write_raw(out, seed=seed, start_year=start, years=years):
        typer.echo(f"wrote {p}")

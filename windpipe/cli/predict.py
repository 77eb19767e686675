"""`windpipe predict`: score a parquet batch with the production model; `windpipe monitor`: its error
once the recorded power arrives."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from windpipe.names import alias_uri

app = typer.Typer()


@app.command("predict")
def predict(
    input: Annotated[str, typer.Option("--input", help="Parquet with windspeed, temperature, rad_horizontal, "
                                       "rad_diffuse (utc_timestamp optional; other columns ignored): a path or "
                                       "s3://<bucket>/<key> (the S3 settings' store).")],
    output: Annotated[str, typer.Option("--output", help="Parquet to write: row_no, utc_timestamp, "
                                        "solar_GW_pred, wind_GW_pred, model_name, model_version, batch_id; a path "
                                        "or s3://<bucket>/<key>.")],
    model_uri: Annotated[Optional[str], typer.Option(
        help=f"Model to use (default {alias_uri('<model>')}).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace OUTPUT if it exists.")] = False,
    drop_invalid: Annotated[bool, typer.Option(help="Skip rows with missing values instead of refusing.")]
    = False,
) -> None:
    """Score INPUT with the production model; write OUTPUT, the data marts and drift, in an MLflow run.

    Reads INPUT (parquet) and the model; writes OUTPUT atomically, one batch in the marts
    (WINDPIPE_MARTS_URL, default SQLite in the state folder) and a run tagged windpipe.step=predict.
    """
    from windpipe.steps.predict import main

    main(input, output, model_uri, overwrite, drop_invalid, source="cli")


@app.command("monitor")
def monitor(
    actuals: Annotated[Path, typer.Option("--actuals", help="CSV or parquet with utc_timestamp, solar_GW, wind_GW "
                                          "(recorded, GW); other columns ignored.")],
    threshold: Annotated[Optional[float], typer.Option(
        help="A batch is degraded when its rmse passes this many times the model's rmse at promotion "
             "(default: WINDPIPE_DEGRADED_RATIO, 1.5).")] = None,
) -> None:
    """Score the predictions already served against the recorded power: the error per batch.

    Reads ACTUALS and the scored rows of the data marts in its hours (batches of `windpipe predict`);
    writes one row per batch into the marts' performance table and a run tagged windpipe.step=monitor.
    Warns about every batch whose error degraded past the threshold.
    """
    from windpipe.steps.monitor import main

    main(str(actuals), threshold, say=typer.echo)

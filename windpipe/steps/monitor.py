"""Performance monitoring: score the served predictions against the recorded power, per batch.

Reads:  ACTUALS (CSV or parquet: utc_timestamp, solar_GW, wind_GW; germany.csv-shaped files work),
        the scored rows of the data marts in the actuals' time range (batches from `windpipe predict`
        and `mlflow run projects/predict`), and each batch's model version's error at promotion
        (its `holdout_rmse` tag).
Writes: one row per batch with actuals in the marts' `performance` table (replaced when more actuals
        arrive), and a run tagged windpipe.step=monitor with the error per batch (metric history,
        step = batch id), the table as `performance.json` and a warning tag when a batch degraded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from windpipe import names
from windpipe.errors import WindpipeError
from windpipe.names import TIMESTAMP
from windpipe.scoring.monitor import batch_errors, read_actuals
from windpipe.settings import Settings, get_settings
from windpipe.tracking.client import mlflow_client
from windpipe.tracking.runs import log_batch, step_run


@dataclass
class MonitorResult:
    rows: pd.DataFrame  # one row per batch with actuals (windpipe.scoring.monitor.COLUMNS)
    actuals: int  # hours of recorded power read
    run_id: str

    @property
    def degraded(self) -> pd.DataFrame:
        return self.rows[self.rows["status"] == "degraded"]


def promotion_errors(client: Any, model_name: str, versions: list[str]) -> dict[str, float | None]:
    """version -> its holdout rmse at promotion (the `holdout_rmse` version tag), None when not on record."""
    out: dict[str, float | None] = {}
    for version in versions:
        try:
            tags = client.get_model_version(model_name, version).tags or {}
            out[version] = float(tags[f"{names.HOLDOUT_PREFIX}rmse"])
        except Exception:  # no such version (another registry), no tag, or not a number
            out[version] = None
    return out


def main(actuals: str, ratio_limit: float | None = None, settings: Settings | None = None,
         say: Any = print) -> MonitorResult:
    """Join the recorded power with the scored rows, compute each batch's error, keep it in the marts, log it."""
    import mlflow

    from windpipe.marts.queries import scored_rows
    from windpipe.marts.tables import get_engine
    from windpipe.marts.writers import record_performance

    settings = settings or get_settings()
    limit = settings.degraded_ratio if ratio_limit is None else float(ratio_limit)
    if not limit > 0:
        raise WindpipeError(f"The degradation ratio must be greater than 0, got {limit}.",
                            "pass e.g. --threshold 1.5 (rmse 50 % above the error at promotion)")
    with step_run("monitor") as run:
        recorded = read_actuals(actuals)
        engine = get_engine(settings=settings)
        ts = recorded[TIMESTAMP].dt.tz_convert("UTC").dt.tz_localize(None)
        # a second of slack: SQLite compares the stored times as text ("... 00:00:00" < "... 00:00:00.000000");
        # the join on utc_timestamp below is exact
        second = pd.Timedelta(seconds=1)
        scored = scored_rows(engine, (ts.min() - second).to_pydatetime(), (ts.max() + second).to_pydatetime())
        if scored.empty:
            raise WindpipeError(f"No scored rows fall in the actuals' hours ({ts.min():%Y-%m-%d %H:%M} to "
                                f"{ts.max():%Y-%m-%d %H:%M} UTC).",
                                "score those hours first (`windpipe predict --input ...` with utc_timestamp), "
                                "or pass the recorded power of hours that were scored")
        client = mlflow_client()
        promotion: dict[tuple[str, str], float | None] = {}
        for name, part in scored.groupby("model_name"):
            versions = sorted(part["model_version"].astype(str).unique())
            promotion.update({(str(name), v): e for v, e in promotion_errors(client, str(name), versions).items()})
        rows = batch_errors(scored, recorded, promotion, limit)
        rows["actuals_path"] = str(Path(actuals).resolve())
        rows["run_id"] = run.info.run_id
        record_performance(engine, rows, settings)
        for r in rows.itertuples():
            mlflow.log_metrics({"rmse": r.rmse, "ratio": r.ratio} if pd.notna(r.ratio) else {"rmse": r.rmse},
                               step=int(r.batch_id))
        bad = rows[rows["status"] == "degraded"]
        log_batch({"actuals_path": str(Path(actuals).resolve()), "degraded_ratio": limit},
                  {"batches": len(rows), "degraded_batches": len(bad), "actual_hours": len(recorded)},
                  {names.MONITOR_STATUS_TAG: "degraded" if len(bad) else "ok"})
        mlflow.log_text(rows.to_json(orient="records", date_format="iso", indent=1), "performance.json")
        for r in rows.itertuples():
            at = f"{r.promotion_rmse:.3f}" if pd.notna(r.promotion_rmse) else "-"
            say(f"batch {r.batch_id} ({r.model_name} v{r.model_version}, {r.rows_with_actuals}/{r.rows_scored} rows "
                f"with actuals): rmse {r.rmse:.3f} GW, at promotion {at}: {r.status}")
        for r in bad.itertuples():
            say(f"warning: batch {r.batch_id}: rmse {r.rmse:.3f} GW is {r.ratio:.2f}x the error at promotion "
                f"({r.promotion_rmse:.3f}), past the limit {limit:g}x: retrain or check the inputs")
        return MonitorResult(rows, len(recorded), run.info.run_id)

"""Performance monitoring: the model's error on scored hours once their recorded power arrives (pure).

    actuals = read_actuals("recorded.csv")            # utc_timestamp, solar_GW, wind_GW (CSV or parquet)
    rows = batch_errors(scored, actuals, promotion)   # one row per scored batch with actuals

`scored` are the marts' output rows in the actuals' time range (windpipe.marts.queries.scored_rows),
`promotion` maps (model name, version) to its holdout rmse when it was promoted (the `holdout_rmse`
version tag). A batch is `degraded` when its rmse exceeds `ratio_limit` times that rmse, `unknown`
when the version has none on record. `windpipe monitor` (windpipe.steps.monitor) does the I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from windpipe.errors import WindpipeError, first_line
from windpipe.names import PRED_COLUMNS, TARGETS, TIMESTAMP
from windpipe.training.features import as_utc
from windpipe.training.metrics import regression_metrics

COLUMNS = ["batch_id", "computed_at", "model_name", "model_version", "rows_scored", "rows_with_actuals",
           "first_time", "last_time", "rmse", "mae", "r2", *[f"{m}_{t}" for m in ("rmse", "bias") for t in TARGETS],
           "promotion_rmse", "ratio", "status"]


def read_actuals(path: Path | str) -> pd.DataFrame:
    """Recorded power: utc_timestamp and both targets (GW) from a CSV or parquet file; other columns ignored.

    Refuses a missing or unreadable file, missing columns, unreadable times and duplicate hours;
    rows with a missing value are dropped (a gap in the recording is not an error).
    """
    path = Path(path)
    if not path.is_file():
        raise WindpipeError(f"The actuals file {path} does not exist.",
                            f"pass a CSV or parquet file with {TIMESTAMP}, {', '.join(TARGETS)} (GW)")
    try:
        df = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # pandas/pyarrow raise many types for a bad file
        raise WindpipeError(f"Cannot read {path} ({first_line(exc)}).",
                            "pass a CSV (.csv) or parquet file") from None
    missing = [c for c in (TIMESTAMP, *TARGETS) if c not in df.columns]
    if missing:
        raise WindpipeError(f"The actuals file {path} lacks column(s) {', '.join(missing)}; it has "
                            f"{', '.join(map(str, df.columns))}.",
                            f"write {TIMESTAMP} (UTC) and the recorded {', '.join(TARGETS)} in GW")
    out = pd.DataFrame({TIMESTAMP: as_utc(df[TIMESTAMP])})
    for t in TARGETS:
        out[t] = pd.to_numeric(df[t], errors="coerce")
    out = out.dropna().reset_index(drop=True)
    if out.empty:
        raise WindpipeError(f"The actuals file {path} has no complete row.", "fill in the recorded values")
    dupes = out[TIMESTAMP].duplicated()
    if dupes.any():
        raise WindpipeError(f"The actuals file {path} records {int(dupes.sum())} hour(s) twice (e.g. "
                            f"{out[TIMESTAMP][dupes].iloc[0]:%Y-%m-%d %H:%M} UTC).",
                            "keep one value per hour")
    return out


def batch_errors(scored: pd.DataFrame, actuals: pd.DataFrame, promotion: Mapping[tuple[str, str], float | None],
                 ratio_limit: float, now: datetime | None = None) -> pd.DataFrame:
    """One row per batch of `scored` with actuals for some of its hours: rmse, mae, r2, per-target rmse
    and bias, the error at promotion, their ratio and the status (ok, degraded, unknown)."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    if scored.empty:
        return pd.DataFrame(columns=COLUMNS)
    left = scored.assign(**{TIMESTAMP: as_utc(scored[TIMESTAMP])})
    joined = left.merge(actuals[[TIMESTAMP, *TARGETS]], on=TIMESTAMP, how="inner")
    rows = []
    for batch_id, part in joined.groupby("batch_id", sort=True):
        m = regression_metrics(part[TARGETS].to_numpy(), part[PRED_COLUMNS].to_numpy())
        if len(part) < 2:
            m["r2"] = float("nan")  # r2 of one row is undefined
        name, version = str(part["model_name"].iloc[0]), str(part["model_version"].iloc[0])
        at_promotion = promotion.get((name, version))
        ratio = m["rmse"] / at_promotion if at_promotion else float("nan")
        status = "unknown" if not at_promotion else ("degraded" if ratio > ratio_limit else "ok")
        rows.append({"batch_id": int(batch_id), "computed_at": now, "model_name": name,
                     "model_version": version, "rows_scored": int(part["row_count"].iloc[0]),
                     "rows_with_actuals": len(part), "first_time": part[TIMESTAMP].min(),
                     "last_time": part[TIMESTAMP].max(), "rmse": m["rmse"], "mae": m["mae"], "r2": m["r2"],
                     **{f"{k}_{t}": m[f"{k}_{t}"] for k in ("rmse", "bias") for t in TARGETS},
                     "promotion_rmse": at_promotion if at_promotion else float("nan"), "ratio": ratio,
                     "status": status})
    return pd.DataFrame(rows, columns=COLUMNS)


"""Frames behind the dashboard and the report (pure: frames in, frames out)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from windpipe.entities.schema import FEATURES_ENTITY
from windpipe.errors import WindpipeError
from windpipe.names import FEATURES, QUANTILE_COLUMNS, TARGETS, TIMESTAMP


def index_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The processed entity indexed by its UTC timestamp, sorted, features as float64."""
    out = df.copy()
    if TIMESTAMP in out.columns:
        out[TIMESTAMP] = pd.to_datetime(out[TIMESTAMP], utc=True)
        out = out.set_index(TIMESTAMP)
    elif out.index.tz is None:
        out.index = out.index.tz_localize("UTC")
    out = out.sort_index()
    out[FEATURES] = out[FEATURES].astype("float64")
    return out


def weekly_rolling(df: pd.DataFrame) -> pd.DataFrame:
    """7-day rolling mean of both targets, one row per day: columns year, day_of_year, solar_GW, wind_GW."""
    hourly = df[TARGETS].rolling("7D", min_periods=24).mean()
    daily = hourly.resample("1D").last().dropna(how="all")
    daily["year"] = daily.index.year
    daily["day_of_year"] = daily.index.dayofyear
    return daily


@dataclass
class DateRange:
    start: pd.Timestamp
    end: pd.Timestamp  # exclusive


def parse_range(start: str | None, end: str | None, df: pd.DataFrame) -> DateRange:
    """Check a user's date range (YYYY-MM-DD, end inclusive) against the data; WindpipeError says why not."""
    if not start or not end:
        raise WindpipeError("Enter a start and an end date (YYYY-MM-DD).")
    try:
        t0 = pd.Timestamp(str(start).strip()[:10]).tz_localize("UTC")
        t1 = pd.Timestamp(str(end).strip()[:10]).tz_localize("UTC") + pd.Timedelta(days=1)
    except (ValueError, TypeError):
        raise WindpipeError(f"{start!r} to {end!r} is not a date range.", "write dates as YYYY-MM-DD") from None
    if t1 <= t0:
        raise WindpipeError(f"The range is reversed: {str(end)[:10]} is before {str(start)[:10]}.",
                            "put the earlier date first")
    first, last = df.index.min(), df.index.max()
    if t1 <= first or t0 > last:
        raise WindpipeError(f"No data from {str(start)[:10]} to {str(end)[:10]}: the data covers "
                            f"{first:%Y-%m-%d} to {last:%Y-%m-%d}.", "choose dates inside that range")
    return DateRange(t0, t1)


def default_range(df: pd.DataFrame, days: int = 31) -> tuple[str, str]:
    """The last `days` full days of the data (31 days = 744 hourly rows)."""
    last = (df.index.max() + pd.Timedelta(hours=1)).normalize() - pd.Timedelta(days=1)  # last full day
    first = last - pd.Timedelta(days=days - 1)
    return f"{max(first, df.index.min()):%Y-%m-%d}", f"{last:%Y-%m-%d}"


def predict_frame(model: object, df: pd.DataFrame) -> pd.DataFrame:
    """Recorded targets beside the model's predictions (`pred_<target>`) and, for a model that gives them, its
    quantiles (`pred_solar_GW_p10`, ...) for the rows of `df`."""
    from windpipe.models.loading import predict_quantiles

    # (the time, for models of the trend)
    pred, quantiles = predict_quantiles(model, df[FEATURES].astype("float64"), df.index)
    out = df[TARGETS].copy()
    for i, target in enumerate(TARGETS):
        out[f"pred_{target}"] = pred[:, i]
    if quantiles is not None:
        for i, column in enumerate(QUANTILE_COLUMNS):
            out[f"pred_{column}"] = quantiles.reshape(len(df), -1)[:, i]
    return out


def errors(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """RMSE and MAE per target of a `predict_frame` result."""
    out: dict[str, dict[str, float]] = {}
    for target in TARGETS:
        diff = frame[f"pred_{target}"].to_numpy() - frame[target].to_numpy()
        out[target] = {"rmse": float(np.sqrt(np.mean(diff ** 2))), "mae": float(np.mean(np.abs(diff)))}
    return out


def whatif(model: object, values: dict[str, float | None], when: object = None) -> dict[str, float]:
    """Predict both targets for one set of weather values at the UTC time `when` (models that follow the
    trend need it: the same weather gives more wind power in 2016 than in 2013), and their quantiles
    (solar_GW_p10, ...) when the model gives them; WindpipeError for missing/invalid ones."""
    missing = [f for f in FEATURES if values.get(f) is None or values.get(f) == ""]
    if missing:
        raise WindpipeError(f"Enter a value for {', '.join(missing)}.")
    try:
        row = pd.DataFrame([{f: float(values[f]) for f in FEATURES}], dtype="float64")
    except (TypeError, ValueError):
        raise WindpipeError("Weather values must be numbers.") from None
    if row["windspeed"].iloc[0] < 0 or (row[["rad_horizontal", "rad_diffuse"]] < 0).any(axis=None):
        raise WindpipeError("Wind speed and radiation cannot be negative.")
    for f in FEATURES:
        value = row[f].to_numpy()
        if not np.isfinite(value).all() or FEATURES_ENTITY.out_of_range(f, value).any():
            raise WindpipeError(f"{f} must be a finite number in {FEATURES_ENTITY.range_text(f)}, "
                                f"got {value[0]:g}.")
    from windpipe.models.loading import predict_quantiles, quantile_frame

    stamp = utc_time(when)
    point, quantiles = predict_quantiles(model, row, None if stamp is None else [stamp])
    return {k: float(v) for k, v in quantile_frame(point, quantiles).iloc[0].items()}


def utc_time(when: object) -> pd.Timestamp | None:
    """The what-if page's time (YYYY-MM-DD HH:MM, UTC when it names no zone); None when blank."""
    if when is None or not str(when).strip():
        return None
    try:
        stamp = pd.Timestamp(str(when).strip())
    except ValueError:
        raise WindpipeError(f"{when!r} is not a time.", "write it as YYYY-MM-DD HH:MM (UTC)") from None
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def response_curves(model: object, values: dict[str, float | None], when: object = None,
                    points: int = 51) -> dict[str, pd.DataFrame]:
    """How the predicted power responds to wind speed and to radiation: for each swept feature, `points` rows
    over its range with the other inputs held at `values` (checked as `whatif` checks them), predicted in one
    call. Columns: the swept feature, solar_GW, wind_GW. The sweep is the promotion gate's
    (windpipe.training.physics.response_curves), over the page's ranges."""
    from windpipe.models.loading import predictor
    from windpipe.training.physics import response_curves as sweep

    whatif(model, values, when)  # one check of the values and the time, with its messages
    return sweep(predictor(model), {f: float(values[f]) for f in FEATURES}, utc_time(when), points=points)


def backtest_frame(metrics: dict[str, float]) -> pd.DataFrame:
    """One row per backtest fold (fold, r2, rmse, r2_<target>, bias_<target>) from a run's metrics;
    empty when the run has no backtest."""
    from windpipe.training.backtest import folds_from_metrics

    return folds_from_metrics(metrics)


def performance_frame(history: pd.DataFrame) -> pd.DataFrame:
    """The marts' performance rows (windpipe.marts.queries.performance_history) with UTC times, in time order."""
    out = history.copy()
    for c in ("first_time", "last_time", "computed_at"):
        if c in out:
            out[c] = pd.to_datetime(out[c], utc=True)
    return out.sort_values(["last_time", "batch_id"], kind="stable").reset_index(drop=True)


def data_summary(df: pd.DataFrame) -> dict:
    """Rows, time span and per-column mean/min/max of a processed frame."""
    cols = TARGETS + FEATURES
    stats = {c: {"mean": float(df[c].mean()), "min": float(df[c].min()), "max": float(df[c].max())} for c in cols}
    return {"rows": int(len(df)), "first": df.index.min(), "last": df.index.max(), "columns": stats}

"""Time features derived from `utc_timestamp` (pure): the one place they are computed.

Models that follow the trend read, beside the weather, five columns known in advance for any hour:

    hour     = ts.hour + ts.minute / 60                 (UTC)
    doy      = (ts.day_of_year - 1) + hour / 24
    hour_sin = sin(2 pi hour / 24)        hour_cos = cos(2 pi hour / 24)
    doy_sin  = sin(2 pi doy / 365.25)     doy_cos  = cos(2 pi doy / 365.25)
    trend    = (ts - 2013-01-01T00:00Z) in years of 365.25 days

Training, `windpipe.models.loading.predict` (every prediction: batches, the dashboard, the gate,
`evaluate`) and anyone calling `mlflow models serve` derive them with this formula, so a model sees
the same numbers wherever it runs. The formula is short on purpose: docs/predict.md repeats it for
callers without windpipe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from windpipe.errors import WindpipeError
from windpipe.names import FEATURES, TIME_FEATURES, TIMESTAMP

if TYPE_CHECKING:
    from collections.abc import Iterable

TREND_EPOCH = pd.Timestamp("2013-01-01T00:00:00Z")
YEAR_SECONDS = 365.25 * 86400.0
CALENDAR = [c for c in TIME_FEATURES if c != "trend"]  # hour and day-of-year cycles
WEATHER_AND_CALENDAR = [*FEATURES, *CALENDAR]
MODEL_COLUMNS = [*FEATURES, *TIME_FEATURES]  # the input of every model that follows the trend
# the derivation in one line, stored in each such model's MLmodel metadata for callers without windpipe
TIME_FEATURES_FORMULA = ("hour = utc hour + minute/60; doy = day_of_year - 1 + hour/24; "
                         "hour_sin, hour_cos = sin, cos(2 pi hour/24); doy_sin, doy_cos = sin, cos(2 pi doy/365.25); "
                         "trend = (utc_timestamp - 2013-01-01T00:00Z) in days / 365.25")


def as_utc(timestamps: Iterable | pd.Series | pd.Index) -> pd.Series:
    """Timestamps as a tz-aware UTC series (naive values are read as UTC); WindpipeError if unparseable."""
    values = timestamps if isinstance(timestamps, pd.Series) else pd.Series(np.asarray(timestamps))
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC")
    try:
        return pd.to_datetime(values, utc=True, format="ISO8601" if values.dtype == object else None)
    except (ValueError, TypeError) as exc:
        raise WindpipeError(f"{TIMESTAMP} holds values that are not times ({exc}).",
                            f"write {TIMESTAMP} as UTC times, e.g. 2016-12-01T13:00:00Z") from None


def time_features(timestamps: Iterable | pd.Series | pd.Index) -> pd.DataFrame:
    """The TIME_FEATURES columns (float64) for each timestamp, index 0..n-1."""
    ts = as_utc(timestamps).reset_index(drop=True)
    if ts.isna().any():
        rows = np.flatnonzero(ts.isna().to_numpy())[:5].tolist()
        raise WindpipeError(f"{TIMESTAMP} is missing in {int(ts.isna().sum())} row(s) (rows, counted from 0: {rows}).",
                            f"give every row its UTC time in {TIMESTAMP}")
    hour = ts.dt.hour.to_numpy() + ts.dt.minute.to_numpy() / 60.0
    doy = (ts.dt.dayofyear.to_numpy() - 1) + hour / 24.0
    trend = (ts - TREND_EPOCH).dt.total_seconds().to_numpy() / YEAR_SECONDS
    out = pd.DataFrame({
        "hour_sin": np.sin(2 * np.pi * hour / 24.0), "hour_cos": np.cos(2 * np.pi * hour / 24.0),
        "doy_sin": np.sin(2 * np.pi * doy / 365.25), "doy_cos": np.cos(2 * np.pi * doy / 365.25),
        "trend": trend,
    })
    return out[TIME_FEATURES].astype("float64")


def needs_time(columns: Iterable[str]) -> list[str]:
    """The derived time columns among a model's input `columns` (empty: the model reads the weather only)."""
    return [c for c in columns if c in TIME_FEATURES]


def model_input(features: pd.DataFrame, columns: list[str],
                timestamps: Iterable | pd.Series | pd.Index | None = None) -> pd.DataFrame:
    """`features` as the model reads it: `columns` in order, float64, time columns derived when missing.

    The timestamps come from `timestamps`, else from a `utc_timestamp` column of `features`.
    """
    derived = [c for c in needs_time(columns) if c not in features.columns]
    if not derived and list(features.columns) == list(columns) and (features.dtypes == "float64").all():
        return features  # already the model's input (scoring.validate makes it so): no copy of a big batch
    out = pd.DataFrame({c: features[c].to_numpy(dtype="float64") for c in columns if c not in derived})
    if derived:
        if timestamps is None:
            if TIMESTAMP not in features.columns:
                raise WindpipeError(
                    f"The model reads {', '.join(derived)}, which are derived from {TIMESTAMP}, but the rows have "
                    f"no {TIMESTAMP}.",
                    f"add a {TIMESTAMP} column (the UTC hour each row is for)")
            timestamps = features[TIMESTAMP]
        if len(timestamps) != len(features):
            raise WindpipeError(f"{len(timestamps)} timestamps for {len(features)} rows.", "pass one time per row")
        tf = time_features(timestamps)
        for c in derived:
            out[c] = tf[c].to_numpy()
    return out[columns]

"""The time columns a model reads beside the weather, by name (pure).

Models that follow the trend read, beside the weather, five columns known in advance for any hour:
hour_sin, hour_cos, doy_sin, doy_cos and trend, derived from `utc_timestamp` by the formula in
windpipe.training.inputs (`time_columns`, the one place it lives). Models logged since the natural
inputs derive them themselves (their first step is windpipe.training.inputs.NaturalInputs); models
logged before wanted them in their input, and `windpipe.models.loading.predict` still derives them
for those with `model_input`, so old versions keep scoring and serving.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from windpipe.errors import WindpipeError
from windpipe.names import FEATURES, TIME_FEATURES, TIMESTAMP

if TYPE_CHECKING:
    from collections.abc import Iterable

    from windpipe.training.inputs import Times

CALENDAR = [c for c in TIME_FEATURES if c != "trend"]  # hour and day-of-year cycles
WEATHER_AND_CALENDAR = [*FEATURES, *CALENDAR]
MODEL_COLUMNS = [*FEATURES, *TIME_FEATURES]  # the input of every model that follows the trend


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


def checked_times(timestamps: Iterable | pd.Series | pd.Index) -> Times:
    """The timestamps read as UTC (windpipe.training.inputs.Times); WindpipeError naming the rows that have no time
    or one that does not parse (repeats are the model's to refuse, or not)."""
    from windpipe.training.inputs import Times

    times = Times(timestamps)
    problem = times.problem(TIMESTAMP, unique=False)
    if problem:
        raise WindpipeError(*problem)
    return times


def time_features(timestamps: Iterable | pd.Series | pd.Index) -> pd.DataFrame:
    """The TIME_FEATURES columns (float64) for each timestamp, index 0..n-1 (windpipe.training.inputs' formula)."""
    from windpipe.training.inputs import time_columns

    return pd.DataFrame(time_columns(checked_times(timestamps).utc), columns=TIME_FEATURES)


def needs_time(columns: Iterable[str]) -> list[str]:
    """The derived time columns among a model's input `columns` (models logged before the natural inputs)."""
    return [c for c in columns if c in TIME_FEATURES]


def reads_time(columns: Iterable[str]) -> bool:
    """True when a model with these input columns needs utc_timestamp: it takes it (natural inputs) or, for a
    model logged before, windpipe derives its time columns from it."""
    columns = list(columns)
    return TIMESTAMP in columns or bool(needs_time(columns))


def model_input(features: pd.DataFrame, columns: list[str],
                timestamps: Iterable | pd.Series | pd.Index | None = None) -> pd.DataFrame:
    """`features` as the model reads it: `columns` in order, float64; utc_timestamp as naive UTC times (MLflow's
    datetime type takes no time zone); the time columns of a model logged before the natural inputs derived.

    The timestamps come from `timestamps`, else from a `utc_timestamp` column of `features`, else from its
    DatetimeIndex.
    """
    derived = [c for c in needs_time(columns) if c not in features.columns]
    natural = TIMESTAMP in columns
    if (not derived and not natural and list(features.columns) == list(columns)
            and (features.dtypes == "float64").all()):
        return features  # already the model's input (scoring.validate makes it so): no copy of a big batch
    out = pd.DataFrame({c: features[c].to_numpy(dtype="float64") for c in columns
                        if c not in derived and c != TIMESTAMP})
    if derived or natural:
        from windpipe.training.inputs import time_columns

        times = checked_times(_timestamps(features, timestamps, derived or [TIMESTAMP]))
        if derived:
            tf = pd.DataFrame(time_columns(times.utc), columns=TIME_FEATURES)
            for c in derived:
                out[c] = tf[c].to_numpy()
        if natural:
            out[TIMESTAMP] = times.utc.tz_localize(None).as_unit("ns")
    return out[columns]


def _timestamps(features: pd.DataFrame, timestamps: object, wanted: list[str]) -> object:
    if timestamps is None:
        if TIMESTAMP in features.columns:
            timestamps = features[TIMESTAMP]
        elif isinstance(features.index, pd.DatetimeIndex) or features.index.name == TIMESTAMP:
            timestamps = features.index
        else:
            raise WindpipeError(
                f"The model reads {', '.join(wanted)}, which {'are' if len(wanted) > 1 else 'is'} derived from "
                f"{TIMESTAMP}, but the rows have no {TIMESTAMP}." if wanted != [TIMESTAMP] else
                f"The model takes {TIMESTAMP}, but the rows have none (no such column, no DatetimeIndex).",
                f"add a {TIMESTAMP} column (the UTC hour each row is for)")
    if len(timestamps) != len(features):
        raise WindpipeError(f"{len(timestamps)} timestamps for {len(features)} rows.", "pass one time per row")
    return timestamps

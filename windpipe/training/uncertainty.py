"""How sure a forecast is, and the benchmark it is judged against (pure: numpy and pandas).

`climatology` is GEFCom's benchmark for probabilistic forecasts: for each hour, the quantiles of the
training data at the same hour of day within +-15 days of the same day of the year, over every training
year. A forecast's pinball loss (windpipe.training.metrics.quantile_metrics) is compared with its.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from windpipe.names import QUANTILES


def climatology(train_times: pd.Series | pd.DatetimeIndex, train_values: np.ndarray,
                times: pd.Series | pd.DatetimeIndex, quantiles: Sequence[float] = QUANTILES,
                window_days: int = 15) -> np.ndarray:
    """GEFCom's climatology benchmark: for each of `times`, the `quantiles` of `train_values` (rows, targets) at
    the same UTC hour of day and within +-`window_days` of the same day of the year (circular), over every
    training year. Returns (len(times), targets, quantiles); NaN where the training data has no such hour."""
    train = pd.DatetimeIndex(pd.to_datetime(train_times, utc=True))
    when = pd.DatetimeIndex(pd.to_datetime(times, utc=True))
    values = np.asarray(train_values, dtype="float64").reshape(len(train), -1)
    q = np.asarray(quantiles, dtype="float64")
    out = np.full((len(when), values.shape[1], len(q)), np.nan)
    doy_train = np.minimum(train.dayofyear.to_numpy(), 365) - 1  # (29 Feb and 31 Dec of a leap year: day 365)
    doy_when = np.minimum(when.dayofyear.to_numpy(), 365) - 1
    hour_train, hour_when = train.hour.to_numpy(), when.hour.to_numpy()
    for hour in np.unique(hour_when):
        of_hour = hour_train == hour
        days, vals = doy_train[of_hour], values[of_hour]
        for doy in np.unique(doy_when[hour_when == hour]):
            distance = np.abs(days - doy)
            near = np.minimum(distance, 365 - distance) <= window_days
            if near.any():
                table = np.quantile(vals[near], q, axis=0).T  # (targets, quantiles)
                out[(hour_when == hour) & (doy_when == doy)] = table
    return out

"""How sure a forecast is, and the benchmark it is judged against (pure: numpy and pandas).

`climatology` is GEFCom's benchmark for probabilistic forecasts: for each hour, the quantiles of the
training data at the same hour of day within +-15 days of the same day of the year, over every training
year. A forecast's pinball loss (windpipe.training.metrics.quantile_metrics) is compared with its.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from windpipe.names import QUANTILES, quantile_column


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


# at least this many calibration residuals make a cell's quantiles; a thinner cell takes its level's (all hours),
# then its hour's (all levels), then every row's
MIN_CELL_ROWS = 30
CALIBRATION_FRACTION = 0.2  # the newest share of the training rows the conformal intervals are calibrated on


def conformal_intervals(X: pd.DataFrame, y: np.ndarray, point: np.ndarray, head: dict,
                        quantiles: Sequence[float] = QUANTILES, min_rows: int = MIN_CELL_ROWS) -> dict:
    """Split-conformal intervals (the `intervals` of windpipe.training.inputs.Head's spec) from calibration rows a
    model never fitted on: `X` their core input, `y` (rows, targets) what was recorded, `point` (rows, targets)
    the model's finished forecast.

    Per target, UTC hour of day (when the core reads the hour cycle) and level of the forecast (the nearest of
    LEVEL_CENTRES), the `quantiles` of the residuals (y - point) / ceiling; a cell with fewer than `min_rows`
    residuals falls back to its level over all hours, then to its hour over all levels, then to all rows.
    Along the levels each quantile's offset falls by at most the distance between the centres, so the
    interpolated quantile never falls as its point forecast rises (the physics gate's rules hold for it too)."""
    from windpipe.training.inputs import INTERVALS_KEY, LEVEL_CENTRES, Head

    q = [float(v) for v in quantiles]
    centres = np.asarray(LEVEL_CENTRES, dtype="float64")
    hour_columns = ["hour_sin", "hour_cos"] if {"hour_sin", "hour_cos"} <= set(X.columns) else None
    spec = {"quantiles": q, "hour": hour_columns, "level_centres": centres.tolist(), "offsets": [],
            "columns": [[quantile_column(t, v) for v in q] for t in head["targets"]]}
    head_ = Head({**head, INTERVALS_KEY: spec})
    point = np.asarray(point, dtype="float64").reshape(len(X), -1)
    ceiling = head_.ceiling(X)
    residuals = np.divide(np.asarray(y, dtype="float64").reshape(len(X), -1) - point, ceiling,
                          out=np.zeros_like(point), where=ceiling > 0)
    hours = head_.hours(X)
    levels = np.abs(head_.share(point, ceiling)[:, :, None] - centres[None, None, :]).argmin(axis=2)
    n_hours = 24 if hour_columns else 1
    offsets = np.zeros((point.shape[1], n_hours, len(centres), len(q)))
    for t in range(point.shape[1]):
        r, lv = residuals[:, t], levels[:, t]
        overall = np.quantile(r, q) if len(r) else np.zeros(len(q))
        for h in range(n_hours):
            for level in range(len(centres)):
                for rows in (lv == level) & (hours == h), lv == level, hours == h:
                    if rows.sum() >= min_rows:
                        offsets[t, h, level] = np.quantile(r[rows], q)
                        break
                else:
                    offsets[t, h, level] = overall
            for level in range(1, len(centres)):  # never steeper than -1 along the level: monotone quantiles
                floor = offsets[t, h, level - 1] - (centres[level] - centres[level - 1])
                offsets[t, h, level] = np.maximum(offsets[t, h, level], floor)
    # an array, not nested lists: skops saves an array as one .npy entry, a list as a JSON node per number (1 s a
    # save for these 720 numbers); a Keras model's inputs.json writes it as lists
    spec["offsets"] = np.round(offsets, 6)
    return spec

"""Holdout metrics: rmse, mae, r2 averaged over both targets, and per target; the bias per target; the quantiles'
pinball loss, the 80 % interval's coverage and width; the share of predictions clipped to [0, capacity]."""

from __future__ import annotations

import numpy as np
import pandas as pd

from windpipe.names import CLIPPED, COVERAGE, INTERVAL, PINBALL, QUANTILES, TARGETS, WIDTH


def regression_metrics(y_true: pd.DataFrame | np.ndarray, y_pred: pd.DataFrame | np.ndarray,
                       targets: list[str] = TARGETS, prefix: str = "") -> dict[str, float]:
    """`rmse`, `mae`, `r2` (uniform average over targets) and `rmse_<target>`, ... per target.

    `bias_<target>` is the mean error, mean(predicted - recorded) in GW (per target only: averaged
    over the targets, opposite biases would cancel): a model that misses a trend shows it here first.
    """
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    yt = np.asarray(y_true, dtype="float64").reshape(len(y_true), -1)
    yp = np.asarray(y_pred, dtype="float64").reshape(len(y_pred), -1)
    if yt.shape != yp.shape or yt.shape[1] != len(targets):
        raise ValueError(f"shapes differ: recorded {yt.shape}, predicted {yp.shape}, targets {len(targets)}")
    rmse = root_mean_squared_error(yt, yp, multioutput="raw_values")
    mae = mean_absolute_error(yt, yp, multioutput="raw_values")
    r2 = r2_score(yt, yp, multioutput="raw_values")
    bias = (yp - yt).mean(axis=0)
    out = {"rmse": float(rmse.mean()), "mae": float(mae.mean()), "r2": float(r2.mean())}
    for i, t in enumerate(targets):
        out.update({f"rmse_{t}": float(rmse[i]), f"mae_{t}": float(mae[i]), f"r2_{t}": float(r2[i]),
                    f"bias_{t}": float(bias[i])})
    return {f"{prefix}{k}": v for k, v in out.items()}


def pinball(recorded: np.ndarray, predicted: np.ndarray, q: float) -> np.ndarray:
    """The pinball (quantile) loss of quantile `q` per row: q (y - p) when y >= p, (1 - q) (p - y) below."""
    diff = np.asarray(recorded, dtype="float64") - np.asarray(predicted, dtype="float64")
    return np.maximum(q * diff, (q - 1.0) * diff)


def quantile_metrics(y_true: pd.DataFrame | np.ndarray, quantiles: np.ndarray, targets: list[str] = TARGETS,
                     levels: tuple[float, ...] = QUANTILES, prefix: str = "") -> dict[str, float]:
    """`pinball` (the mean over `levels`, rows and targets, GW), `coverage80` (the share of recorded values inside
    [P10, P90]) and `width80` (the mean P90 - P10, GW), averaged over the targets and per target
    (`pinball_wind_GW`, ...). `quantiles`: (rows, targets, len(levels)) in the order of `levels`.

    Coverage leaves out the hours that are certain: recorded 0 inside an interval of [0, 0] (solar at night),
    which any method covers; counted, they would lift solar's coverage towards 1 whatever the day's intervals do.
    """
    yt = np.asarray(y_true, dtype="float64").reshape(len(y_true), -1)
    qs = np.asarray(quantiles, dtype="float64").reshape(len(yt), len(targets), len(levels))
    low, high = levels.index(INTERVAL[0]), levels.index(INTERVAL[1])
    inside = (yt >= qs[:, :, low]) & (yt <= qs[:, :, high])
    uncertain = ~((yt == 0.0) & (qs[:, :, low] == 0.0) & (qs[:, :, high] == 0.0))
    per: dict[str, np.ndarray] = {
        PINBALL: np.mean([pinball(yt, qs[:, :, j], q).mean(axis=0) for j, q in enumerate(levels)], axis=0),
        COVERAGE: np.divide((inside & uncertain).sum(axis=0), uncertain.sum(axis=0),
                            out=np.ones(len(targets)), where=uncertain.sum(axis=0) > 0),
        WIDTH: (qs[:, :, high] - qs[:, :, low]).mean(axis=0),
    }
    out: dict[str, float] = {}
    for name, values in per.items():
        out[name] = float(values.mean())
        out.update({f"{name}_{t}": float(values[i]) for i, t in enumerate(targets)})
    return {f"{prefix}{k}": v for k, v in out.items()}


def clipped_metrics(clipped: np.ndarray, targets: list[str] = TARGETS, prefix: str = "") -> dict[str, float]:
    """`clipped_share`: the share of raw point predictions the model clipped to [0, capacity] (over both targets),
    and per target (`clipped_share_wind_GW`). `clipped`: bool (rows, targets)."""
    share = np.asarray(clipped, dtype=bool).reshape(-1, len(targets)).mean(axis=0)
    out = {CLIPPED: float(share.mean()), **{f"{CLIPPED}_{t}": float(share[i]) for i, t in enumerate(targets)}}
    return {f"{prefix}{k}": v for k, v in out.items()}

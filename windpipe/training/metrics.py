"""Holdout metrics: rmse, mae, r2 averaged over both targets, and per target; the bias per target."""

from __future__ import annotations

import numpy as np
import pandas as pd

from windpipe.names import TARGETS


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

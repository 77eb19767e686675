"""Rolling-origin backtest: refit on everything before each window, score the window (pure, no MLflow).

    folds = run_backtest(df, fit, folds=4, holdout_weeks=13)   # one row per fold, oldest first
    summary(folds)                                              # backtest_r2, backtest_bias_wind_GW, ...

`fit(train_frame) -> model` is the family's fit (windpipe.steps.train builds it from the run's
parameters), so a fold trains exactly the model the run logs, only on less data; the model predicts
from the fold's natural inputs (utc_timestamp and the weather), as the logged one does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pandas as pd

from windpipe.names import TARGETS, TIMESTAMP
from windpipe.training.families import predict_fitted
from windpipe.training.metrics import regression_metrics
from windpipe.training.split import backtest_splits

PREFIX = "backtest_"
FOLD_METRICS = ("r2", "rmse", "r2_solar_GW", "r2_wind_GW", "bias_solar_GW", "bias_wind_GW")
WINDOW_COLUMNS = ["fold", "start", "end", "train_rows", "test_rows", "fit_seconds"]


def run_backtest(df: pd.DataFrame, fit: Callable[[pd.DataFrame], object], folds: int, holdout_weeks: float,
                 say: Callable[[str], None] | None = None) -> pd.DataFrame:
    """One row per fold: fold (1 = oldest), window start/end, row counts, fit seconds and every holdout metric."""
    rows = []
    for k, (start, end, train, test) in enumerate(backtest_splits(df, folds, holdout_weeks), 1):
        started = time.perf_counter()
        model = fit(train)
        seconds = time.perf_counter() - started
        metrics = regression_metrics(test[TARGETS], predict_fitted(model, test))
        rows.append({"fold": k, "start": start, "end": min(end, test[TIMESTAMP].max()), "train_rows": len(train),
                     "test_rows": len(test), "fit_seconds": seconds, **metrics})
        if say:
            say(f"backtest fold {k}/{folds} ({start:%Y-%m-%d} .. {rows[-1]['end']:%Y-%m-%d}, {len(train)} training "
                f"rows): r2 {metrics['r2']:.4f}, wind bias {metrics['bias_wind_GW']:+.2f} GW ({seconds:.1f} s)")
        del model
    return pd.DataFrame(rows)


def summary(folds: pd.DataFrame) -> dict[str, float]:
    """The mean over folds of every metric, as `backtest_<metric>`, plus `backtest_folds`."""
    metrics = [c for c in folds.columns if c not in WINDOW_COLUMNS]
    out = {f"{PREFIX}{m}": float(folds[m].mean()) for m in metrics}
    out[f"{PREFIX}folds"] = float(len(folds))
    return out


def fold_metrics(folds: pd.DataFrame) -> dict[str, float]:
    """Per fold `backtest_fold<k>_<metric>` for the headline metrics (what `windpipe compare --format csv` lists)."""
    return {f"{PREFIX}fold{int(r.fold)}_{m}": float(getattr(r, m)) for r in folds.itertuples() for m in FOLD_METRICS}


def folds_from_metrics(metrics: dict[str, float]) -> pd.DataFrame:
    """The per-fold frame (fold, r2, rmse, ...) back from a run's `backtest_fold<k>_<metric>` metrics."""
    rows: dict[int, dict[str, float]] = {}
    for key, value in metrics.items():
        if not key.startswith(f"{PREFIX}fold"):
            continue
        number, _, metric = key[len(PREFIX) + 4:].partition("_")
        if number.isdigit() and metric:
            rows.setdefault(int(number), {"fold": int(number)})[metric] = float(value)
    frame = pd.DataFrame(sorted(rows.values(), key=lambda r: r["fold"]))
    return frame if not frame.empty else pd.DataFrame(columns=["fold", *FOLD_METRICS])


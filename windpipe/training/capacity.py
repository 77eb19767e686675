"""Installed capacity as a straight line in time, estimated from the training window only (pure).

Output is roughly capacity(t) x capacity factor(weather): the weather response is stable from year
to year while the fleet grows (Germany's wind output rose from 5.4 GW in 2013 to 8.8 GW in 2016 at
similar wind speeds). The forest and the Keras families learn the capacity factor y / cap(t) and
multiply by cap(t) = a + b * trend; this module estimates a and b per target:

- wind: per month, mean(wind_GW) / mean(windspeed^3) (output per unit of wind power available);
- solar: per month, the 99th percentile of solar_GW (the output of a clear noon);

each regressed on [1, t, sin 2 pi t, cos 2 pi t] (t in years; the season terms absorb the yearly
cycle and are dropped), then scaled so that cap(t) averages 1 over the training rows. Less than
two years of data cannot tell growth from the season: the capacity is then constant (a=1, b=0).
`capacity_model` puts a capacity-factor model per target in front of the line (every scikit-learn family).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from windpipe.names import FEATURES, TARGETS
from windpipe.training.inputs import capacity_line  # cap(t) per row and target: the formula a logged model carries

MIN_YEARS = 2.0  # shorter windows: growth and season cannot be told apart
MONTH = 1.0 / 12.0  # a month as a fraction of the trend's year
# the capacity-factor models weigh each training hour by 0.5 ** (its age before the newest hour / this, in years):
# the fleet's response to the weather drifts as turbines and panels are added and replaced, so the newest year
# says most about the next (germany.csv, 2016 Q1-Q4 backtest r2: gbm 0.860 unweighted, 0.866 at one year, 0.865
# at two; lr 0.859, 0.861, 0.860)
RECENT_HALF_LIFE = 1.0


def _seasonal_line(t: np.ndarray, r: np.ndarray) -> tuple[float, float]:
    """Least squares r ~ a + b t + c sin(2 pi t) + d cos(2 pi t); returns (a, b)."""
    design = np.column_stack([np.ones_like(t), t, np.sin(2 * np.pi * t), np.cos(2 * np.pi * t)])
    coef, *_ = np.linalg.lstsq(design, r, rcond=None)
    return float(coef[0]), float(coef[1])


def capacity_lines(trend: np.ndarray, windspeed: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(a, b) per target in TARGETS order, shape (targets, 2): cap_k(t) = a_k + b_k * t, mean 1 on the rows.

    `trend` in years (windpipe.training.features), `y` the targets (rows, len(TARGETS)).
    """
    trend = np.asarray(trend, dtype="float64")
    y = np.asarray(y, dtype="float64").reshape(len(trend), -1)
    out = np.tile([1.0, 0.0], (y.shape[1], 1))
    if len(trend) == 0 or trend.max() - trend.min() < MIN_YEARS:
        return out
    frame = pd.DataFrame({"month": np.floor(trend / MONTH), "t": trend,
                          "ws3": np.asarray(windspeed, dtype="float64") ** 3})
    for i, target in enumerate(TARGETS[: y.shape[1]]):
        frame["y"] = y[:, i]
        monthly = frame.groupby("month")
        if target == "wind_GW":
            level = (monthly["y"].mean() / monthly["ws3"].mean().where(lambda s: s > 0)).to_numpy()
        else:
            level = monthly["y"].quantile(0.99).to_numpy()
        t = monthly["t"].mean().to_numpy()
        ok = np.isfinite(level)
        a, b = _seasonal_line(t[ok], level[ok])
        scale = a + b * trend.mean()  # mean of a + b t over the rows
        if not np.isfinite(scale) or scale <= 0 or np.any(a + b * np.array([trend.min(), trend.max()]) <= 0):
            continue  # no sensible line (e.g. a target that is always 0): constant capacity
        out[i] = (a / scale, b / scale)
    return out


def recency_weights(trend: np.ndarray, half_life: float = RECENT_HALF_LIFE) -> np.ndarray:
    """Each row's weight in the capacity-factor fit: 1 for the newest row, halved every `half_life` years before it."""
    trend = np.asarray(trend, dtype="float64")
    return 0.5 ** ((trend.max() - trend) / half_life) if len(trend) else trend


def head_spec(X: pd.DataFrame, y: pd.DataFrame | np.ndarray, targets: Sequence[str] = TARGETS) -> dict:
    """The head a model fitted on the core input `X` and targets `y` carries (windpipe.training.inputs.Head):
    its output names, and per target the capacity line of these rows (`capacity_lines`; constant
    without a trend column) and the largest capacity factor they recorded, so that the ceiling is the most the
    fleet has given, grown as the fleet grows."""
    target = np.asarray(y, dtype="float64").reshape(len(X), -1)
    trend = "trend" in X.columns
    lines = (capacity_lines(X["trend"], X["windspeed"], target) if trend
             else np.tile([1.0, 0.0], (target.shape[1], 1)))
    cap = capacity_line(lines, X["trend"] if trend else np.zeros(len(X)))
    ratio = np.divide(target, cap, out=np.zeros_like(target), where=cap > 0)
    factor = ratio.max(axis=0) if len(X) else np.ones(target.shape[1])
    return {"targets": list(targets), "trend": "trend" if trend else None, "lines": lines.tolist(),
            "factor": [float(max(f, 0.0)) for f in factor]}


@dataclass(frozen=True)
class FactorRows:
    """What each target's estimator of a capacity model fits on: `inputs` (the base columns: weather and calendar
    with the trend, else the four weather features; each target reads `inputs_for` of them), `lines` (the
    capacity line per target; (1, 0) without the trend), `factor` (the targets divided by their line, rows x
    targets) and `weights` (`recency_weights`, or None without the trend)."""

    X: pd.DataFrame
    inputs: list[str]
    lines: np.ndarray
    factor: np.ndarray
    weights: np.ndarray | None
    trend: str | None

    @classmethod
    def of(cls, X: pd.DataFrame, y: pd.DataFrame | np.ndarray) -> FactorRows:
        from windpipe.training.features import WEATHER_AND_CALENDAR

        target = np.asarray(y, dtype="float64").reshape(len(X), -1)
        if "trend" in X.columns:
            lines = capacity_lines(X["trend"], X["windspeed"], target)
            return cls(X, WEATHER_AND_CALENDAR, lines, target / capacity_line(lines, X["trend"]),
                       recency_weights(X["trend"]), "trend")
        return cls(X, list(FEATURES), np.tile([1.0, 0.0], (target.shape[1], 1)), target, None, None)

    def columns(self, target: str) -> list[str]:
        """The inputs a model of `target` may read (windpipe.training.physics.inputs_for)."""
        from windpipe.training.physics import inputs_for

        return inputs_for(target, self.inputs)

    def fit(self, k: int, estimator: object) -> object:
        """`estimator` fitted on target k's columns and capacity factor (weighted when its fit takes weights: a
        family's estimator made by `new-step --family` may not)."""
        from sklearn.utils.validation import has_fit_parameter

        weighted = ({"sample_weight": self.weights}
                    if self.weights is not None and has_fit_parameter(estimator, "sample_weight") else {})
        return estimator.fit(self.X[self.columns(TARGETS[k])], self.factor[:, k], **weighted)

    def model(self, estimators: Sequence[object]) -> object:
        """The fitted `estimators` (one per target) as windpipe_inputs.CapacityModel. Fitted estimators with
        `n_jobs` predict single-threaded: summing trees in thread order changes the last bits between processes."""
        from windpipe.training.features import MODEL_COLUMNS
        from windpipe.training.inputs import CapacityModel

        for e in estimators:
            if hasattr(e, "n_jobs"):
                e.n_jobs = 1
        return CapacityModel(estimators=tuple(estimators),
                             columns=tuple(tuple(self.columns(t)) for t in TARGETS[: len(estimators)]),
                             lines=tuple((float(a), float(b)) for a, b in self.lines), trend=self.trend,
                             inputs=tuple(MODEL_COLUMNS if self.trend else FEATURES))


def capacity_model(X: pd.DataFrame, y: pd.DataFrame, estimator: Callable[[str, list[str]], object]) -> object:
    """cap_k(t) x estimator_k(weather, calendar) per target (windpipe_inputs.CapacityModel), on MODEL_COLUMNS; on
    the four weather features without the time columns (the capacity then constant).

    A tree model cannot extrapolate a trend (it repeats the last level it saw), so each target's estimator
    (`estimator(target, base columns)`: a fresh, unfitted one, fed only the inputs the target may read) learns the
    capacity factor y_k / cap_k(t) (`capacity_lines`, from these rows only), the newer rows weighing more
    (`recency_weights`), and the model multiplies back."""
    rows = FactorRows.of(X, y)
    return rows.model([rows.fit(k, estimator(name, rows.inputs)) for k, name in enumerate(TARGETS)])

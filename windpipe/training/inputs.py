"""What a logged model carries of windpipe: it takes its natural inputs and derives the rest itself.

A model's natural inputs are `utc_timestamp` (a column, or the DatetimeIndex) and the four weather
columns. The fitted model inside reads the weather and, to follow the trend, five columns derived
from the time; this module holds that formula (the one place it lives) and the two wrappers that put
it in front of a fitted model:

    hour     = ts.hour + ts.minute / 60                 (UTC)
    doy      = (ts.day_of_year - 1) + hour / 24
    hour_sin = sin(2 pi hour / 24)        hour_cos = cos(2 pi hour / 24)
    doy_sin  = sin(2 pi doy / 365.25)     doy_cos  = cos(2 pi doy / 365.25)
    trend    = (ts - 2013-01-01T00:00Z) in years of 365.25 days

- `NaturalInputs`: a scikit-learn transformer, the first step of every scikit-learn family's Pipeline;
- `Forecast`: the last step of that Pipeline: the fitted core's forecast clipped to [0, the installed
  capacity the model knows] (`Head`);
- `CapacityModel`: the scikit-learn families' core: each target's fitted estimator on the inputs it may read,
  times its capacity line (`capacity_line`);
- `KerasForecaster`: the same inputs and head around a Keras model, the `python_function` flavor of a Keras
  family's logged model (`_load_pyfunc`; its `keras` flavor still loads the bare network).
- `MonotoneRidge`: the lr family's core per target, a Ridge on `MonotoneDesign` (monotone spline ramps) that
  predicts from folded coefficients without building the design; models logged before it hold
  Pipeline(MonotoneDesign, Ridge), which still loads.

The head (`Head.finish`) is physics every consumer gets:

    ceiling_k(t) = factor_k x (a_k + b_k trend)         the capacity line of the training rows, times the
                                                       largest capacity factor they recorded
    point_k      = clip(core_k, 0, ceiling_k)

It imports numpy and pandas (scikit-learn when `NaturalInputs` is first used: its base classes take
seconds to import, and reading timestamps needs none of it; threadpoolctl, a dependency of scikit-learn, when
`MonotoneRidge` predicts; Keras when a network is loaded) and
nothing of windpipe: windpipe.steps.train logs it beside every model (`code_paths`) as the top-level
module `windpipe_inputs`, so a model loads and predicts where windpipe is not installed (a model image,
another team's notebook, `mlflow models serve` in a fresh environment). Its classes are named
`windpipe_inputs.<class>` (what skops and pickle record), and importing this module registers it
under that name too: inside windpipe the saved names resolve to this module, elsewhere to the copy in
the model. The column names are parameters of the transformer (windpipe.names owns them), so nothing
here depends on windpipe's version but the formula, which is a contract: change it and old models
derive other numbers.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np
import pandas as pd

MODULE = "windpipe_inputs"  # the name the logged copy of this file has, and that saved models record
sys.modules.setdefault(MODULE, sys.modules[__name__])

TREND_EPOCH = pd.Timestamp("2013-01-01T00:00:00Z")
YEAR_SECONDS = 365.25 * 86400.0
ROWS_SHOWN = 10
KERAS_FILE = "model.keras"  # in the model's data folder, beside INPUTS_FILE
INPUTS_FILE = "inputs.json"
HEAD_KEY = "head"  # in INPUTS_FILE: a Keras model's head (Head's spec)
INTERVALS_KEY = "intervals"  # in a head's spec: the conformal quantiles (Head's docstring)
# the levels of the point forecast (shares of the ceiling) the intervals are kept at: calm or night, low, middling,
# high, near the capacity
LEVEL_CENTRES = (0.0, 0.05, 0.15, 0.35, 0.6)


# ---------------------------------------------------------------------------------------------- the time

def time_columns(times: pd.DatetimeIndex) -> np.ndarray:
    """The formula above for UTC `times` (tz-aware): float64 array (rows, 5)."""
    hour = np.asarray(times.hour, dtype="float64") + np.asarray(times.minute, dtype="float64") / 60.0
    doy = (np.asarray(times.dayofyear, dtype="float64") - 1) + hour / 24.0
    trend = np.asarray((times - TREND_EPOCH).total_seconds(), dtype="float64") / YEAR_SECONDS
    return np.column_stack([np.sin(2 * np.pi * hour / 24.0), np.cos(2 * np.pi * hour / 24.0),
                            np.sin(2 * np.pi * doy / 365.25), np.cos(2 * np.pi * doy / 365.25), trend])


def row_list(rows: np.ndarray) -> str:
    """Row positions (from 0) as `3, 7, 9, ...` (at most ROWS_SHOWN)."""
    shown = ", ".join(str(int(r)) for r in rows[:ROWS_SHOWN])
    return shown + (", ..." if len(rows) > ROWS_SHOWN else "")


class Times:
    """Timestamps read as UTC (naive ones are UTC), with the rows that have none, that are not a time and
    that repeat an earlier row's time (positions counted from 0)."""

    def __init__(self, values: Any) -> None:
        raw = (values if isinstance(values, pd.Series) else pd.Series(values)).reset_index(drop=True)
        self.numbers = pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_bool_dtype(raw)
        given = raw.notna().to_numpy()
        if isinstance(raw.dtype, pd.DatetimeTZDtype):
            utc = raw.dt.tz_convert("UTC")
        elif self.numbers:  # nanoseconds since 1970 would pass silently: refuse them
            utc = pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns, UTC]")
        else:
            utc = _parse(raw)
        self.utc = pd.DatetimeIndex(utc)
        self.missing = np.flatnonzero(~given)
        self.unparseable = np.flatnonzero(given & self.utc.isna())
        self.repeated = np.flatnonzero(self.utc.duplicated() & ~self.utc.isna())

    def problem(self, column: str, unique: bool = True) -> tuple[str, str] | None:
        """(problem, fix) naming the first kind of bad rows, or None when every row has its own time."""
        if self.numbers:
            return (f"{column} holds numbers, not times (pandas would read them as nanoseconds since 1970).",
                    f"send {column} as UTC times, e.g. 2016-12-01T13:00:00")
        if len(self.unparseable):
            return (f"{column} is not a time in {len(self.unparseable)} row(s) (rows, counted from 0: "
                    f"{row_list(self.unparseable)}).", f"write {column} as UTC times, e.g. 2016-12-01T13:00:00")
        if len(self.missing):
            return (f"{column} is missing in {len(self.missing)} row(s) (rows, counted from 0: "
                    f"{row_list(self.missing)}).", f"give every row its UTC time in {column}")
        if unique and len(self.repeated):
            return (f"{column} repeats an earlier row's time in {len(self.repeated)} row(s) (rows, counted from 0: "
                    f"{row_list(self.repeated)}; e.g. {self.utc[self.repeated[0]]}).",
                    f"send one row per hour (pandas: df.drop_duplicates(subset=[{column!r}]))")
        return None


def _parse(raw: pd.Series) -> pd.Series:
    """Each value as a UTC time, NaT where it is none (one pass for clean input, value by value otherwise)."""
    if pd.api.types.is_datetime64_dtype(raw):
        return raw.dt.tz_localize("UTC")
    try:
        return pd.to_datetime(raw, utc=True, format="ISO8601")
    except (ValueError, TypeError, OverflowError):
        return pd.Series([_one(v) for v in raw], index=raw.index, dtype="datetime64[ns, UTC]")


def _one(value: object) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError):
        return pd.NaT
    if stamp is pd.NaT:
        return pd.NaT
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def input_error(problem: str, fix: str) -> Exception:
    """The error a model raises for bad input. Inside MLflow an MlflowException (INVALID_PARAMETER_VALUE), so
    `mlflow models serve` answers HTTP 400 with this message instead of a generic one; else a ValueError."""
    message = f"{problem} Fix: {fix}."
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:  # (a model is loaded by MLflow; a bare transformer may be used without it)
        return ValueError(message)
    return MlflowException.invalid_parameter_value(message)


# ---------------------------------------------------------------------------------------------- the head

def capacity_line(lines: Any, trend: Any) -> np.ndarray:
    """The capacity line a_k + b_k trend per row and target (`lines`: (a, b) per target): float64 (rows, targets)."""
    lines = np.asarray(lines, dtype="float64").reshape(-1, 2)
    t = np.asarray(trend, dtype="float64").reshape(-1, 1)
    return lines[:, 0][None, :] + lines[:, 1][None, :] * t


class Head:
    """Physical bounds on a core's raw output (the formula in the module docstring), and how sure the forecast
    is. `spec` is plain JSON (but `offsets`, a numpy array):

        targets          the output columns, in order
        trend            the core input column holding the trend, or null (a model without the time)
        lines, factor    per target (a, b) of the capacity line, and the largest capacity factor recorded
        intervals        (optional) conformal quantiles: `quantiles` (e.g. [0.1, 0.5, 0.9]), `hour` (the two
                         core columns of the hour cycle, or null), `level_centres` (levels of the forecast, as
                         shares of the ceiling) and `offsets` (targets x hours x levels x quantiles, shares of
                         the ceiling): the residual quantiles of calibration rows never fitted on, per UTC hour
                         of day and level of the forecast;
                         `columns`: per target, its quantiles' output columns (windpipe.names.quantile_column)

    With intervals the model's output is a table: the point forecast per target, then each target's quantiles
    (`solar_GW_p10`, ...): quantile_k = clip(point + offset_k(hour, level) x ceiling, 0, ceiling), the offset
    interpolated between the level centres; P10 <= P50 <= P90, and a quantile never falls as its point rises.
    """

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        self.targets = list(spec["targets"])

    def ceiling(self, X: pd.DataFrame) -> np.ndarray:
        """The installed capacity per row and target, float64 (rows, targets)."""
        factor = np.asarray(self.spec["factor"], dtype="float64")
        trend = self.spec.get("trend")
        t = np.asarray(X[trend], dtype="float64") if trend else np.zeros(len(X))
        return np.maximum(factor[None, :] * capacity_line(self.spec["lines"], t), 0.0)

    def finish(self, X: pd.DataFrame, raw: np.ndarray, ceiling: np.ndarray | None = None) -> np.ndarray:
        """The core's output `raw` for the core input `X`, clipped to [0, ceiling]: float64 (rows, targets).
        `ceiling`: `self.ceiling(X)` when the caller has it already."""
        raw = np.asarray(raw, dtype="float64").reshape(len(X), len(self.targets))
        return np.clip(raw, 0.0, self.ceiling(X) if ceiling is None else ceiling)

    def clipped(self, X: pd.DataFrame, raw: np.ndarray, ceiling: np.ndarray | None = None) -> np.ndarray:
        """Which raw predictions `finish` changes (below 0 or above the ceiling): bool (rows, targets).
        `ceiling`: `self.ceiling(X)` when the caller has it already."""
        raw = np.asarray(raw, dtype="float64").reshape(len(X), len(self.targets))
        return (raw < 0.0) | (raw > (self.ceiling(X) if ceiling is None else ceiling))

    @property
    def intervals(self) -> dict | None:
        return self.spec.get(INTERVALS_KEY)

    def hours(self, X: pd.DataFrame) -> np.ndarray:
        """Each row's UTC hour of day (int, rows) from the core's hour cycle; 0 for a model without the time."""
        hour_columns = (self.intervals or {}).get("hour")
        if not hour_columns:
            return np.zeros(len(X), dtype=int)
        angle = np.arctan2(np.asarray(X[hour_columns[0]], dtype="float64"),
                           np.asarray(X[hour_columns[1]], dtype="float64"))
        return np.rint(angle * 24.0 / (2 * np.pi)).astype(int) % 24

    @staticmethod
    def share(point: np.ndarray, ceiling: np.ndarray) -> np.ndarray:
        """The point forecast as a share of the ceiling (the level the intervals vary with): (rows, targets)."""
        return np.divide(point, ceiling, out=np.zeros_like(ceiling), where=ceiling > 0)

    def quantiles(self, X: pd.DataFrame, point: np.ndarray, ceiling: np.ndarray | None = None) -> np.ndarray | None:
        """The quantiles around the (finished) `point` forecast: float64 (rows, targets, quantiles), clipped to
        [0, ceiling]; None for a head without intervals. The offsets (shares of the ceiling) are interpolated
        between the level centres, so a quantile moves with its point forecast without steps."""
        spec = self.intervals
        if not spec:
            return None
        offsets = np.asarray(spec["offsets"], dtype="float64")  # (targets, hours, levels, quantiles)
        centres = np.asarray(spec["level_centres"], dtype="float64")
        hours = np.minimum(self.hours(X), offsets.shape[1] - 1)
        ceiling = self.ceiling(X) if ceiling is None else ceiling
        share = self.share(point, ceiling)
        out = np.empty((len(X), len(self.targets), offsets.shape[3]))
        for t in range(len(self.targets)):
            s = np.clip(share[:, t], centres[0], centres[-1])
            upper = np.clip(np.searchsorted(centres, s, side="right"), 1, len(centres) - 1)
            lower = upper - 1
            span = centres[upper] - centres[lower]
            w = np.divide(s - centres[lower], span, out=np.zeros_like(s), where=span > 0)[:, None]
            offset = offsets[t, hours, lower, :] * (1 - w) + offsets[t, hours, upper, :] * w
            out[:, t, :] = point[:, t, None] + offset * ceiling[:, t, None]
        return np.clip(out, 0.0, ceiling[:, :, None])

    def columns(self) -> list[str]:
        """The output's columns: the targets, then (with intervals) each target's quantiles."""
        spec = self.intervals
        if not spec:
            return list(self.targets)
        return [*self.targets, *(c for per_target in spec["columns"] for c in per_target)]

    def forecast(self, X: pd.DataFrame, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """(the finished point forecast, its quantiles or None without intervals, the ceiling that bounds both) for
        the core's output `raw`; the ceiling is computed once: the clip and the quantiles both need it."""
        ceiling = self.ceiling(X)
        point = self.finish(X, raw, ceiling)
        return point, self.quantiles(X, point, ceiling), ceiling

    def output(self, X: pd.DataFrame, raw: np.ndarray) -> np.ndarray | pd.DataFrame:
        """What the model returns for the core input `X`: the finished point forecast (rows, targets) and, with
        intervals, a frame of `columns()` (the point, then each target's quantiles)."""
        point, q, _ceiling = self.forecast(X, raw)
        if q is None:
            return point
        return pd.DataFrame(np.hstack([point, q.reshape(len(X), -1)]), columns=self.columns())


def split_output(out: Any, targets: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """A model's output -> (the point forecast (rows, targets), the quantiles (rows, targets, quantiles) or None):
    a frame with quantile columns (a model with intervals), or the bare point forecast."""
    if isinstance(out, pd.DataFrame) and all(t in out.columns for t in targets) and out.shape[1] > len(targets):
        point = out[targets].to_numpy(dtype="float64")
        rest = [c for c in out.columns if c not in targets]
        q = out[rest].to_numpy(dtype="float64").reshape(len(out), len(targets), len(rest) // len(targets))
        return point, q
    if isinstance(out, pd.DataFrame) and all(t in out.columns for t in targets):
        return out[targets].to_numpy(dtype="float64"), None
    arr = np.asarray(out.to_numpy() if hasattr(out, "to_numpy") else out, dtype="float64")
    return arr, None


# ---------------------------------------------------------------------------------------------- the wrappers

def __getattr__(name: str) -> Any:
    """`NaturalInputs`, `Forecast`, `CapacityModel`, `MonotoneDesign` and `MonotoneRidge` are made on first use
    (PEP 562): scikit-learn's base classes take seconds to import."""
    makers = {"NaturalInputs": _natural_inputs_class, "Forecast": _forecast_class,
              "CapacityModel": _capacity_model_class, "MonotoneDesign": _monotone_design_class,
              "MonotoneRidge": _monotone_ridge_class}
    if name in makers:
        globals()[name] = cls = makers[name]()
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _natural_inputs_class() -> type:
    from sklearn.base import BaseEstimator, TransformerMixin

    class NaturalInputs(TransformerMixin, BaseEstimator):
        """Natural inputs -> the columns the fitted model reads: `weather` (float64, in order), then, when
        `time_features` names them, the formula's five time columns under those names.

        Reads the time from the column `timestamp`, else from the frame's DatetimeIndex. Missing,
        unparseable or (with `unique_times`) repeated times are refused with the rows named. Stateless:
        nothing is learned, so `fit` only returns it.
        """

        def __init__(self, weather: tuple[str, ...] = (), time_features: tuple[str, ...] = (),
                     timestamp: str = "utc_timestamp", unique_times: bool = True) -> None:
            self.weather = weather
            self.time_features = time_features
            self.timestamp = timestamp
            self.unique_times = unique_times

        def fit(self, X: pd.DataFrame, y: object = None) -> Any:
            return self

        def __sklearn_is_fitted__(self) -> bool:
            return True

        def get_feature_names_out(self, input_features: object = None) -> np.ndarray:
            return np.asarray([*self.weather, *self.time_features], dtype=object)

        def times(self, X: pd.DataFrame) -> pd.DatetimeIndex:
            """The rows' UTC times (from the column, else the DatetimeIndex); refuses bad ones, naming the rows."""
            if self.timestamp in X.columns:
                values = X[self.timestamp]
            elif isinstance(X.index, pd.DatetimeIndex) or X.index.name == self.timestamp:
                values = X.index
            else:
                raise input_error(f"The input has no {self.timestamp} column and no DatetimeIndex; the model derives "
                                  f"{', '.join(self.time_features)} from it.",
                                  f"add {self.timestamp} (the UTC hour each row is for, e.g. 2016-12-01T13:00:00) "
                                  f"as a column or as the index")
            times = Times(values)
            problem = times.problem(self.timestamp, self.unique_times)
            if problem:
                raise input_error(*problem)
            return times.utc

        def transform(self, X: pd.DataFrame) -> pd.DataFrame:
            if not isinstance(X, pd.DataFrame):
                raise input_error(f"The model takes a table with columns {', '.join(self._natural())}, got "
                                  f"{type(X).__name__}.", "send a DataFrame (serving: dataframe_split)")
            missing = [c for c in self.weather if c not in X.columns]
            if missing:
                raise input_error(f"The input lacks column(s) {', '.join(missing)}; it has "
                                  f"{', '.join(map(str, X.columns)) or 'none'}.",
                                  f"send {', '.join(self._natural())}")
            out = pd.DataFrame({c: np.asarray(X[c], dtype="float64") for c in self.weather})
            if self.time_features:
                values = time_columns(self.times(X))
                for i, name in enumerate(self.time_features):
                    out[name] = values[:, i]
            return out

        def _natural(self) -> list[str]:
            return [*([self.timestamp] if self.time_features else []), *self.weather]

    NaturalInputs.__module__, NaturalInputs.__qualname__ = MODULE, "NaturalInputs"  # (what skops and pickle record)
    return NaturalInputs


def _forecast_class() -> type:
    from sklearn.base import BaseEstimator, RegressorMixin

    class Forecast(RegressorMixin, BaseEstimator):
        """The last step of a scikit-learn family's Pipeline: `model` (the fitted core) behind the `head` (Head's
        JSON spec): `predict` returns the core's output clipped to [0, capacity], float64 (rows, targets). The
        core is given fitted, not learned here: `fit` only returns it."""

        def __init__(self, model: Any = None, head: dict | None = None) -> None:
            self.model = model
            self.head = head

        def fit(self, X: pd.DataFrame, y: object = None) -> Any:
            return self

        def __sklearn_is_fitted__(self) -> bool:
            return True

        def raw(self, X: pd.DataFrame) -> np.ndarray:
            """The core's own output for the core input `X`, float64."""
            return np.asarray(self.model.predict(X), dtype="float64")

        def predict(self, X: pd.DataFrame) -> np.ndarray | pd.DataFrame:
            return Head(self.head).output(X, self.raw(X))

    Forecast.__module__, Forecast.__qualname__ = MODULE, "Forecast"  # (what skops and pickle record)
    return Forecast


def _capacity_model_class() -> type:
    from sklearn.base import BaseEstimator, RegressorMixin

    class CapacityModel(RegressorMixin, BaseEstimator):
        """Per target a fitted estimator of the capacity factor, times the capacity line: the core of the
        scikit-learn families (windpipe.training.capacity.capacity_model fits it)

            core_k = estimators[k].predict(X[columns[k]]) x (a_k + b_k X[trend])      (lines[k] = (a_k, b_k))

        `columns[k]`: the inputs target k may read; `trend`: the core input's trend column, or None (a model of the
        weather only: the lines are then (1, 0) and the estimators learn the power itself); `inputs`: every column
        of the core input, in order (a bare array is read by position). The estimators are given fitted, each held
        once (a VotingRegressor in a ColumnTransformer held each member six times in the saved file): `fit` only
        returns it."""

        def __init__(self, estimators: tuple = (), columns: tuple = (), lines: tuple = (), trend: str | None = None,
                     inputs: tuple[str, ...] = ()) -> None:
            self.estimators = estimators
            self.columns = columns
            self.lines = lines
            self.trend = trend
            self.inputs = inputs

        def fit(self, X: pd.DataFrame, y: object = None) -> Any:
            return self

        def __sklearn_is_fitted__(self) -> bool:
            return True

        def _frame(self, X: Any) -> pd.DataFrame:
            return X if isinstance(X, pd.DataFrame) else pd.DataFrame(np.asarray(X), columns=list(self.inputs))

        def factors(self, X: Any) -> np.ndarray:
            """Each target's estimator on its own columns of the core input `X`: float64 (rows, targets)."""
            X = self._frame(X)
            return np.column_stack([np.asarray(e.predict(X[list(c)]), dtype="float64").reshape(len(X))
                                    for e, c in zip(self.estimators, self.columns, strict=True)])

        def predict(self, X: Any) -> np.ndarray:
            X = self._frame(X)
            factors = self.factors(X)
            return factors * capacity_line(self.lines, X[self.trend]) if self.trend else factors

    CapacityModel.__module__, CapacityModel.__qualname__ = MODULE, "CapacityModel"  # (what skops and pickle record)
    return CapacityModel


def _monotone_design_class() -> type:
    from sklearn.base import BaseEstimator, TransformerMixin
    from sklearn.preprocessing import SplineTransformer

    class MonotoneDesign(TransformerMixin, BaseEstimator):
        """A linear model's design that is non-decreasing in the `rising` input columns (indices) wherever its
        coefficients on the rising block are >= 0 (Ridge(positive=True)), and free in the rest:

            M_r    = reversed cumulative sums of r's cubic B-splines, without the constant: each a monotone ramp
                     from 0 to 1 (a spline with non-decreasing coefficients is non-decreasing)
            C      = [1, B-splines of the `other` columns, (1 + calendar) / 2]      every column >= 0
            design = [M_r x C for each r] (rising)  |  [C', C'_i C'_j] and their negatives (free, C' = C without 1)

        so the fitted response to each rising input is a sum of non-negative multiples of monotone ramps."""

        def __init__(self, rising: tuple[int, ...] = (), other: tuple[int, ...] = (),
                     calendar: tuple[int, ...] = (), n_knots: int = 8) -> None:
            self.rising = rising
            self.other = other
            self.calendar = calendar
            self.n_knots = n_knots

        def _splines(self) -> Any:
            return SplineTransformer(n_knots=self.n_knots, degree=3, extrapolation="constant")

        def fit(self, X: Any, y: object = None) -> Any:
            X = np.asarray(X, dtype="float64")
            self.rising_splines_ = [self._splines().fit(X[:, [r]]) for r in self.rising]
            self.other_splines_ = self._splines().fit(X[:, list(self.other)]) if self.other else None
            # the design ends in this many free columns, then their negatives (positive_ridge's `signed`)
            self.n_signed_ = self._free(self._context(X[:1])).shape[1]
            return self

        def _context(self, X: np.ndarray) -> np.ndarray:
            parts = [np.ones((len(X), 1))]
            if self.other_splines_ is not None:
                parts.append(self.other_splines_.transform(X[:, list(self.other)]))
            if self.calendar:
                parts.append((1.0 + X[:, list(self.calendar)]) / 2.0)
            return np.hstack(parts)

        def _free(self, context: np.ndarray) -> np.ndarray:
            c = context[:, 1:]
            i, j = np.triu_indices(c.shape[1], k=1)
            return np.hstack([c, c[:, i] * c[:, j]])

        def transform(self, X: Any) -> np.ndarray:
            X = np.asarray(X, dtype="float64")
            context = self._context(X)
            ramps = [np.cumsum(s.transform(X[:, [r]])[:, ::-1], axis=1)[:, ::-1][:, 1:]
                     for r, s in zip(self.rising, self.rising_splines_, strict=True)]
            rising = [(m[:, :, None] * context[:, None, :]).reshape(len(X), -1) for m in ramps]
            free = self._free(context)
            return np.hstack([*rising, free, -free])

    MonotoneDesign.__module__, MonotoneDesign.__qualname__ = MODULE, "MonotoneDesign"
    return MonotoneDesign


def _made(name: str) -> type:
    """The class `name` of this module, made once (calling `__getattr__` again would make a second class)."""
    return globals()[name] if name in globals() else __getattr__(name)


def bspline_basis(x: np.ndarray, knots: np.ndarray, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """The `degree + 1` B-splines on `knots` that can be non-zero at each x, as (index of the first, values (rows,
    degree + 1)): x clamped to the base interval (what SplineTransformer's constant extrapolation gives) and
    evaluated by Cox-de Boor in scipy's order of operations (its _deBoor_D), so the values are scipy's."""
    n = len(knots) - degree - 1
    x = np.clip(x, knots[degree], knots[n])
    # the knot interval [t_span, t_span+1) holding x, the last one for x = t_n (scipy's): counting the few interior
    # knots below x is three times faster than searchsorted on unsorted rows
    span = np.full(len(x), degree)
    for knot in knots[degree + 1:n]:
        span += x >= knot
    near = {o: np.take(knots, span + o) for o in range(1 - degree, degree + 1)}
    distinct = bool(np.all(np.diff(knots) > 0))
    h = [np.ones_like(x)]
    for j in range(1, degree + 1):
        hh, h = h, [np.zeros_like(x), *([None] * j)]
        for m in range(1, j + 1):
            xb, xa = near[m], near[m - j]
            gap = xb - xa
            # (a repeated knot: scipy's 0)
            w = hh[m - 1] / gap if distinct else np.divide(hh[m - 1], gap, out=np.zeros_like(x), where=gap != 0)
            h[m - 1] += w * (xb - x)
            h[m] = w * (x - xa)
    return span - degree, np.column_stack(h)


_BLAS: list[Any] = []  # threadpoolctl's controller, made once: listing the loaded libraries takes milliseconds


def _one_blas_thread() -> Any:
    """BLAS on one thread for a small product (rows x tens of columns): waking a second thread cost 8 ms against
    1 ms on a busy machine, for at best half a millisecond on an idle one (scikit-learn's KMeans.predict does
    the same). The same numbers: BLAS splits a product's rows and columns over threads, never a sum."""
    from threadpoolctl import ThreadpoolController

    if not _BLAS:
        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


def positive_ridge(design: np.ndarray, y: np.ndarray, alpha: float, tol: float = 1e-4,
                   sample_weight: Any = None, signed: int = 0) -> Any:
    """A scikit-learn Ridge(alpha, positive=True) fitted to (design, y) at the exact optimum of its problem

        minimise sum_i s_i (y_i - b - D_i w)^2 + alpha ||w||^2   over w >= 0 and the intercept b   (s: sample_weight)

    Centring on the weighted means removes b; with rows scaled by sqrt(s) and G = Dc'Dc + alpha I = R'R
    (Cholesky) the rest is ||R w - R^-T Dc'yc||^2, a non-negative least squares (scipy's nnls, an active-set
    method that ends at the solution). It reads the rows once, for the Gram, where Ridge's L-BFGS-B reads them on
    each of its hundreds of steps: 0.09 s against 0.48 s for 1,440 rows x 480 columns, and its objective is the
    lower (224.6 against 235.3: L-BFGS-B stops at `tol`).

    `signed`: the design's last 2 x signed columns are `signed` free columns and then their negatives (lr's design:
    a coefficient of either sign as two non-negative ones). At the optimum one of each pair is 0, so the problem is
    the same with one free coefficient f per pair (penalty alpha f^2). With the free columns first in the Gram, its
    Cholesky factor is [[Rff, Rfc], [0, Rcc]]: nnls of Rcc w = t_c for the constrained ones (Rcc'Rcc is the Gram
    with the free ones projected out), then Rff f = t_f - Rfc w; nnls works on the constrained columns only (the
    solar design's 480 columns: 270). The coefficients come back in the design's form (max(f, 0), max(-f, 0)).
    Should nnls not finish, Ridge's own solver fits."""
    from scipy.linalg import solve_triangular
    from scipy.optimize import nnls
    from sklearn.linear_model import Ridge

    ridge = Ridge(alpha=alpha, positive=True, tol=tol)
    constrained = design.shape[1] - 2 * signed
    # the free columns (one of each pair) first, then the constrained ones
    order = np.r_[constrained:constrained + signed, 0:constrained]
    weight = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype="float64")
    mean_x, mean_y = weight @ design[:, order] / weight.sum(), float(weight @ y / weight.sum())
    root = np.sqrt(weight)
    centred = (design[:, order] - mean_x) * root[:, None]
    gram = centred.T @ centred
    gram[np.diag_indices_from(gram)] += alpha
    try:
        # (one thread: the factor and the solves of a few hundred columns take milliseconds, and two BLAS threads
        # waiting on each other beside another process's work took 2 s for the same Cholesky)
        with _one_blas_thread():
            upper = np.linalg.cholesky(gram).T
            target = np.linalg.solve(upper.T, centred.T @ ((y - mean_y) * root))
            w = (nnls(upper[signed:, signed:], target[signed:], maxiter=50 * constrained)[0] if constrained
                 else np.zeros(0))
            free = solve_triangular(upper[:signed, :signed], target[:signed] - upper[:signed, signed:] @ w)
    except (np.linalg.LinAlgError, RuntimeError):  # (not positive definite in floating point; no convergence)
        return ridge.fit(design, y, sample_weight=sample_weight)
    intercept = mean_y - float(mean_x @ np.concatenate([free, w]))
    if signed:
        w = np.concatenate([w, np.maximum(free, 0.0), np.maximum(-free, 0.0)])
    # the attributes Ridge.fit sets and Ridge.predict reads
    ridge.coef_, ridge.intercept_ = w, intercept
    ridge.n_features_in_, ridge.n_iter_, ridge.solver_ = design.shape[1], None, "nnls"
    return ridge


def _monotone_ridge_class() -> type:
    from sklearn.base import BaseEstimator, RegressorMixin

    class MonotoneRidge(RegressorMixin, BaseEstimator):
        """Pipeline(MonotoneDesign, Ridge(positive=True)) fitted the same way, predicting the same numbers without
        building the design (hundreds of columns a row). The design is a quadratic form in

            z = [S_r for each rising r, C]      S_r: r's B-splines, C = [1, B-splines of `other`, (1 + calendar) / 2]

        so the prediction is rowsum((z @ P) * C) + intercept, with P folded from the Ridge's coefficients at fit:

            rising r   M_r @ W_r = S_r @ (T @ W_r)   W_r: the block's coefficients as (ramps, C); T: the ramps'
                                                   reversed cumulative sums, as a matrix
            free       C' @ a + rowsum((C' @ B) * C')     a, B: the coefficients of C' and of C'_i C'_j, each
                                                        positive copy minus its negative one (C's first column is 1)

        `design_` and `ridge_` are the fitted pair (`unfolded()`); input that is empty or not finite goes through
        them, so it is refused with scikit-learn's own message."""

        def __init__(self, rising: tuple[int, ...] = (), other: tuple[int, ...] = (),
                     calendar: tuple[int, ...] = (), n_knots: int = 8, alpha: float = 1.0,
                     tol: float = 1e-4) -> None:
            self.rising = rising
            self.other = other
            self.calendar = calendar
            self.n_knots = n_knots
            self.alpha = alpha
            self.tol = tol

        def fit(self, X: Any, y: Any, sample_weight: Any = None) -> Any:
            X = np.asarray(X, dtype="float64")
            design = _made("MonotoneDesign")(rising=self.rising, other=self.other, calendar=self.calendar,
                                             n_knots=self.n_knots)
            # what Pipeline([("design", design), ("ridge", Ridge(positive=True))]).fit does, solved exactly
            self.design_ = design
            self.ridge_ = positive_ridge(design.fit_transform(X, y), np.asarray(y, dtype="float64"), self.alpha,
                                         self.tol, sample_weight, design.n_signed_)
            self.n_features_in_ = X.shape[1]
            self._fold()
            return self

        def unfolded(self) -> Any:
            """The fitted Pipeline(MonotoneDesign, Ridge) this model folds (the same predictions, slower)."""
            from sklearn.pipeline import Pipeline

            return Pipeline([("design", self.design_), ("ridge", self.ridge_)])

        def _fold(self) -> None:
            design = self.design_
            splines = [*design.rising_splines_, *([design.other_splines_] if design.other_splines_ is not None else [])]
            # one (column, knots) per spline input: the rising ones, then each of `other`
            self.columns_ = (*self.rising, *self.other)
            self.knots_ = tuple(np.asarray(b.t, dtype="float64") for s in splines for b in s.bsplines_)
            self.degree_ = int(splines[0].degree) if splines else 3
            widths = [len(t) - self.degree_ - 1 for t in self.knots_]  # B-splines per input
            n_context = 1 + sum(widths[len(self.rising):]) + len(self.calendar)
            n_rising = sum(widths[: len(self.rising)])
            coef = np.atleast_2d(np.asarray(self.ridge_.coef_, dtype="float64"))
            fold = np.zeros((len(coef), n_rising + n_context, n_context))
            for k, w in enumerate(coef):
                at = row = 0
                for width in widths[: len(self.rising)]:
                    block = w[at: at + (width - 1) * n_context].reshape(width - 1, n_context)
                    # the ramp m is the sum of the B-splines above m: M = S @ T, T[j, m] = 1 for j > m
                    fold[k, row: row + width] = np.tril(np.ones((width, width)), -1)[:, :-1] @ block
                    at, row = at + block.size, row + width
                free = w[at:]
                free = free[: len(free) // 2] - free[len(free) // 2:]  # (each product entered with both signs)
                n_free = n_context - 1
                fold[k, row, 1:] = free[:n_free]  # the linear term: C' times the constant 1 of C
                i, j = np.triu_indices(n_free, k=1)
                fold[k, row + 1 + i, 1 + j] = free[n_free:]
            self.fold_ = fold
            self.intercept_ = np.atleast_1d(np.asarray(self.ridge_.intercept_, dtype="float64"))

        def _z(self, X: np.ndarray) -> np.ndarray:
            """[S_r for each rising r, C] (rows, P's rows): each input's few non-zero B-splines scattered."""
            widths = [len(t) - self.degree_ - 1 for t in self.knots_]
            z = np.zeros((len(X), sum(widths) + 1 + len(self.calendar)))
            starts = np.cumsum([0, *widths])
            starts[len(self.rising):] += 1  # the context C starts with its constant 1
            z[:, starts[len(self.rising)] - 1] = 1.0
            row_starts = np.arange(len(X)) * z.shape[1]
            for column, knots, start in zip(self.columns_, self.knots_, starts, strict=False):
                first, values = bspline_basis(X[:, column], knots, self.degree_)
                # one scatter through the flat array: a quarter of the time of one per B-spline
                z.reshape(-1)[(row_starts + start + first)[:, None] + np.arange(values.shape[1])] = values
            if self.calendar:
                z[:, starts[-1]:] = (1.0 + X[:, list(self.calendar)]) / 2.0
            return z

        def predict(self, X: Any) -> np.ndarray:
            X = np.asarray(X, dtype="float64")
            if X.ndim != 2 or X.shape[1] != self.n_features_in_:
                raise ValueError(f"X has {X.shape[-1] if X.ndim else 0} features, but MonotoneRidge is expecting "
                                 f"{self.n_features_in_} features as input.")
            if not len(X) or not np.isfinite(X).all():
                return self.unfolded().predict(X)
            z = self._z(X)
            context = z[:, -self.fold_.shape[2]:]
            with _one_blas_thread():
                out = np.column_stack([np.einsum("ij,ij->i", z @ p, context) for p in self.fold_]) + self.intercept_
            return out if np.ndim(self.ridge_.coef_) > 1 else out[:, 0]

    MonotoneRidge.__module__, MonotoneRidge.__qualname__ = MODULE, "MonotoneRidge"  # (what skops and pickle record)
    return MonotoneRidge


class KerasForecaster:
    """A Keras model with its natural inputs in front and the head behind: `predict(frame)` -> float64 (rows,
    outputs), clipped to [0, capacity] (a model saved before the head: the network's output as it is).

    The `python_function` flavor of a Keras family's logged model (`_load_pyfunc` builds it);
    `get_raw_model()` is this object, its `.model` the network.
    """

    __module__ = MODULE

    def __init__(self, inputs: Any, model: Any, head: dict | None = None) -> None:
        self.inputs = inputs
        self.model = model
        self.head = head

    def core_input(self, data: pd.DataFrame) -> pd.DataFrame:
        return self.inputs.transform(data)

    def raw(self, X: pd.DataFrame) -> np.ndarray:
        """The network's output for the core input `X`: float64 (rows, targets)."""
        out = self.model.predict(np.asarray(X, dtype="float32"), verbose=0, batch_size=4096)
        return np.asarray(out, dtype="float64").reshape(len(X), -1)

    def predict(self, data: pd.DataFrame, params: dict | None = None) -> np.ndarray | pd.DataFrame:
        X = self.core_input(data)
        raw = self.raw(X)
        return raw if self.head is None else Head(self.head).output(X, raw)

    def get_raw_model(self) -> KerasForecaster:
        return self

    def save(self, data_dir: str) -> None:
        """The network (Keras format) and the inputs' parameters and the head (JSON) into `data_dir`."""
        os.makedirs(data_dir, exist_ok=True)
        self.model.save(os.path.join(data_dir, KERAS_FILE))
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in self.inputs.get_params().items()}
        with open(os.path.join(data_dir, INPUTS_FILE), "w", encoding="utf-8") as f:  # (arrays as lists)
            json.dump({**params, HEAD_KEY: self.head} if self.head is not None else params, f,
                      default=lambda value: value.tolist())


def _load_pyfunc(path: str) -> KerasForecaster:
    """MLflow's hook for the `python_function` flavor (`loader_module: windpipe_inputs`): `path` is the data folder."""
    import keras

    with open(os.path.join(path, INPUTS_FILE), encoding="utf-8") as f:
        params = json.load(f)
    head = params.pop(HEAD_KEY, None)  # (models saved before the head have none)
    inputs = __getattr__("NaturalInputs")(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})
    return KerasForecaster(inputs, keras.saving.load_model(os.path.join(path, KERAS_FILE)), head)


def with_repeated_times(model: Any) -> Any:
    """A copy of a natural-input model (a Pipeline starting with NaturalInputs, or a KerasForecaster) that
    accepts repeated times: a what-if sweep asks one hour many times with different weather. The fitted
    parts are shared, not copied."""
    import copy

    if hasattr(model, "steps"):
        from sklearn.pipeline import Pipeline

        (name, first), rest = model.steps[0], model.steps[1:]
        return Pipeline([(name, copy.copy(first).set_params(unique_times=False)), *rest])
    relaxed = copy.copy(model)
    relaxed.inputs = copy.copy(model.inputs).set_params(unique_times=False)
    return relaxed

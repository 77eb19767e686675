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
- `KerasForecaster`: the same inputs in front of a Keras model, the `python_function` flavor of a Keras
  family's logged model (`_load_pyfunc`; its `keras` flavor still loads the bare network).

It imports numpy and pandas (scikit-learn when `NaturalInputs` is first used: its base classes take
seconds to import, and reading timestamps needs none of it; Keras when a network is loaded) and
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


# ---------------------------------------------------------------------------------------------- the wrappers

def __getattr__(name: str) -> Any:
    """`NaturalInputs` is made on first use (PEP 562): scikit-learn's base classes take seconds to import."""
    if name == "NaturalInputs":
        globals()[name] = cls = _natural_inputs_class()
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


class KerasForecaster:
    """A Keras model with its natural inputs in front: `predict(frame)` -> float64 (rows, outputs).

    The `python_function` flavor of a Keras family's logged model (`_load_pyfunc` builds it);
    `get_raw_model()` is this object, its `.model` the network.
    """

    __module__ = MODULE

    def __init__(self, inputs: Any, model: Any) -> None:
        self.inputs = inputs
        self.model = model

    def predict(self, data: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        X = self.inputs.transform(data)
        out = self.model.predict(np.asarray(X, dtype="float32"), verbose=0, batch_size=4096)
        return np.asarray(out, dtype="float64").reshape(len(X), -1)

    def get_raw_model(self) -> KerasForecaster:
        return self

    def save(self, data_dir: str) -> None:
        """The network (Keras format) and the inputs' parameters (JSON) into `data_dir`."""
        os.makedirs(data_dir, exist_ok=True)
        self.model.save(os.path.join(data_dir, KERAS_FILE))
        with open(os.path.join(data_dir, INPUTS_FILE), "w", encoding="utf-8") as f:
            json.dump({k: list(v) if isinstance(v, tuple) else v for k, v in self.inputs.get_params().items()}, f)


def _load_pyfunc(path: str) -> KerasForecaster:
    """MLflow's hook for the `python_function` flavor (`loader_module: windpipe_inputs`): `path` is the data folder."""
    import keras

    with open(os.path.join(path, INPUTS_FILE), encoding="utf-8") as f:
        params = json.load(f)
    inputs = __getattr__("NaturalInputs")(**{k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})
    return KerasForecaster(inputs, keras.saving.load_model(os.path.join(path, KERAS_FILE)))


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

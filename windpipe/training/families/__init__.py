"""The model families: one module of this package each, registering itself (pure, no MLflow).

A family says what windpipe.steps.train needs to train, log and load it, and nothing else varies:

    register(Family(name="gbm", summary=..., parse=GBMParams.check, fit=fit, log_params=...,
                    skops_trusted=(...)))

- `parse(seed=..., **parameters)`: the step's own parameters (strings from its MLproject) checked,
  before any data is read (WindpipeError naming the bad value);
- `fit(rows, params)`: the fitted core on `rows.xy()` (weather, plus the time columns when the run
  follows the trend); `natural` puts windpipe.training.inputs in front of it, so every logged model
  takes utc_timestamp and the four weather columns;
- `flavor`: how the step logs it (`sklearn`: a Pipeline saved with skops; `keras`: the Keras flavor plus
  a `python_function` flavor that takes the natural inputs), `tensor`: its core reads a float32 array,
  `requirements`: the packages the logged model needs (pinned to the installed versions when logged),
  `skops_trusted`: the types beyond scikit-learn's own that its saved model holds.

Every model ends in the head (windpipe.training.inputs.Head: clipped to [0, capacity]), whose bounds come
from the training rows (windpipe.training.capacity.head_spec). The physics a
family should build in (what each target rises with and ignores) is windpipe.training.physics's; the
promotion gate checks it whatever the family does. Fields added later get defaults, so families that do
not declare them stay as they are. A new family is a module here plus its project folder
(`windpipe new-step --family NAME` writes both); `names()` finds every module of this package's
`__path__` (a folder added to it, as the tests do, contributes its modules too).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from windpipe.errors import WindpipeError
from windpipe.names import FEATURES, TARGETS, TIME_FEATURES, TIMESTAMP
from windpipe.training.features import MODEL_COLUMNS
from windpipe.training.inputs import INTERVALS_KEY
from windpipe.training.split import validation_split, xy

SKLEARN_REQUIREMENTS = ("scikit-learn", "scipy", "numpy", "pandas", "skops")
KERAS_REQUIREMENTS = ("tensorflow", "keras", "scikit-learn", "numpy", "pandas")
FLAVORS = ("sklearn", "keras")


@dataclass(frozen=True)
class TrainingRows:
    """The rows a family fits on, and how: with the time columns (`time_features`) or the weather only;
    `split_by` and `seed` say how a family that holds out rows for early stopping picks them."""

    frame: pd.DataFrame
    time_features: bool = True
    split_by: str = "time"
    seed: int = 42

    def xy(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The core's input (MODEL_COLUMNS or FEATURES, float64) and the targets."""
        return xy(self.frame, self.time_features)

    def head(self) -> dict:
        """The head a model of these rows carries (windpipe.training.capacity.head_spec)."""
        from windpipe.training.capacity import head_spec

        return head_spec(*self.xy())

    def validation(self, fraction: float) -> tuple[TrainingRows, tuple[pd.DataFrame, pd.DataFrame]]:
        """(rows to fit, (X, y) for early stopping), both from these rows (split_by=time: the newest validate)."""
        fit_rows, val_rows = validation_split(self.frame, fraction, self.split_by, self.seed)
        return (TrainingRows(fit_rows, self.time_features, self.split_by, self.seed),
                xy(val_rows, self.time_features))


@dataclass(frozen=True)
class Family:
    """How one model family is checked, fitted and logged (the module docstring has the fields)."""

    name: str
    summary: str
    parse: Callable[..., Any]
    fit: Callable[[TrainingRows, Any], Any]
    log_params: Callable[[Any, bool], dict[str, object]] = lambda params, time_features: {}
    flavor: str = "sklearn"
    tensor: bool = False
    requirements: tuple[str, ...] = SKLEARN_REQUIREMENTS
    skops_trusted: tuple[str, ...] = ()
    # the share of its rows (newest, with split_by=time) the fitted model never trained on, or None: the rows its
    # conformal intervals are calibrated on without a second fit (`calibrate`)
    held_out: Callable[[Any], float] | None = None

    def fit_natural(self, rows: TrainingRows, params: Any, intervals: bool = True) -> Any:
        """Fit on `rows` and return the model as it is logged: it takes the natural inputs and ends in the head
        (bounds from these rows) with, when `intervals`, its conformal quantiles (`calibrate`)."""
        model = natural(self.fit(rows, params), rows.time_features, self.tensor, head=rows.head())
        return self.add_intervals(model, rows, params) if intervals else model

    def add_intervals(self, model: Any, rows: TrainingRows, params: Any) -> Any:
        """`model` (a natural model of `rows`) with its head's conformal quantiles (`calibrate`)."""
        last = forecaster_of(model)
        last.head = {**last.head, INTERVALS_KEY: self.calibrate(rows, params, last.head, model)}
        return model

    def calibrate(self, rows: TrainingRows, params: Any, head: dict, fitted: Any = None) -> dict:
        """Conformal intervals for a model of `rows` (windpipe.training.uncertainty.conformal_intervals) from the
        residuals of rows a model never trained on, per hour of day and level (split conformal). A family whose
        fit holds rows out (`held_out`: keras's early-stopping rows) is calibrated on those, with the `fitted`
        model itself; any other is fitted once more without the newest CALIBRATION_FRACTION of the rows."""
        from windpipe.training.uncertainty import CALIBRATION_FRACTION, conformal_intervals

        share = self.held_out(params) if self.held_out is not None and fitted is not None else 0.0
        if share:
            model, (X_cal, y_cal) = fitted, rows.validation(share)[1]
        else:
            fit_rows, (X_cal, y_cal) = rows.validation(CALIBRATION_FRACTION)
            model = natural(self.fit(fit_rows, params), rows.time_features, self.tensor, head=head)
        return conformal_intervals(X_cal, y_cal.to_numpy(dtype="float64"), point_of(model, X_cal), head)


_REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add `family` (a family module calls this at import); the flavor must be one the step can log."""
    if family.flavor not in FLAVORS:
        raise WindpipeError(f"Family {family.name!r} has the flavor {family.flavor!r}, which windpipe cannot log.",
                            f"use one of {', '.join(FLAVORS)}")
    _REGISTRY[family.name] = family
    return family


def names() -> list[str]:
    """Every registered family (each module of this package is imported once, on first use)."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    return sorted(_REGISTRY)


def get(name: str) -> Family:
    if name not in _REGISTRY and name not in names():
        raise WindpipeError(f"Unknown model family {name!r}.", f"use one of {', '.join(names())}")
    return _REGISTRY[name]


# ---------------------------------------------------------------- what every family shares

def natural(core: Any, time_features: bool, tensor: bool = False, head: dict | None = None) -> Any:
    """`core` (fitted on MODEL_COLUMNS, or FEATURES without the time) between windpipe.training.inputs.NaturalInputs
    and the `head` (Head's spec; None: no head, the core's raw output): a scikit-learn Pipeline ending in
    `Forecast`, or for a tensor core a KerasForecaster. Either predicts from utc_timestamp (column or
    DatetimeIndex) and the weather."""
    from windpipe.training.inputs import KerasForecaster, NaturalInputs

    inputs = NaturalInputs(weather=tuple(FEATURES), time_features=tuple(TIME_FEATURES) if time_features else (),
                           timestamp=TIMESTAMP)
    if tensor:
        return KerasForecaster(inputs, core, head)
    from sklearn.pipeline import Pipeline

    if head is None:
        return Pipeline([("inputs", inputs), ("model", core)])
    from windpipe.training.inputs import Forecast

    return Pipeline([("inputs", inputs), ("model", Forecast(core, head))])


def inputs_of(model: Any) -> Any:
    """The NaturalInputs of a model `natural` made."""
    return model.inputs if hasattr(model, "inputs") else model.steps[0][1]


def forecaster_of(model: Any) -> Any:
    """What holds the head of a model `natural` made: its KerasForecaster, or the Pipeline's Forecast (None
    without a head)."""
    last = model if hasattr(model, "inputs") else model.steps[-1][1]
    return last if getattr(last, "head", None) is not None else None


def clipped_fitted(model: Any, rows: pd.DataFrame) -> np.ndarray:
    """Which of a natural model's raw predictions for processed-entity rows its head clips to [0, capacity]:
    bool (rows, targets); all False for a model without a head."""
    return score_fitted(model, rows).clipped


@dataclass(frozen=True)
class Scored:
    """A natural model's forecast for processed-entity rows: `point` (rows, targets), `quantiles` (rows, targets,
    QUANTILES; None without intervals) as `model.predict` gives them, and which raw predictions the head
    `clipped` to [0, capacity] (bool (rows, targets))."""

    point: np.ndarray
    quantiles: np.ndarray | None
    clipped: np.ndarray


def score_fitted(model: Any, rows: pd.DataFrame) -> Scored:
    """`Scored` from one pass of the core (what a run's metrics need: a forest's 64 trees predict once, not once for
    the forecast and again for the clipped share)."""
    from windpipe.training.inputs import Head

    last = forecaster_of(model)
    if last is None:
        point, q = predict_quantiles_fitted(model, rows)
        return Scored(point, q, np.zeros((len(rows), len(TARGETS)), dtype=bool))
    X = (model.core_input if hasattr(model, "inputs") else model[:-1].transform)(_natural_rows(rows))
    head, raw = Head(last.head), last.raw(X)
    point, quantiles, ceiling = head.forecast(X, raw)
    return Scored(point, quantiles, head.clipped(X, raw, ceiling))


def core_columns(model: Any) -> list[str]:
    """The columns the core of a natural model reads, in order (what the MLmodel metadata records)."""
    return list(inputs_of(model).get_feature_names_out())


def output_columns(model: Any) -> list[str]:
    """What a natural model returns: the targets, then (a model with intervals) each target's quantiles."""
    from windpipe.training.inputs import Head

    last = forecaster_of(model)
    return Head(last.head).columns() if last is not None else list(TARGETS)


def natural_columns(model: Any) -> list[str]:
    """What a natural model takes: utc_timestamp when it derives time columns, then the weather."""
    inputs = inputs_of(model)
    return [*([inputs.timestamp] if inputs.time_features else []), *inputs.weather]


def _natural_rows(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[[c for c in (TIMESTAMP, *FEATURES) if c in rows.columns]]


def predict_fitted(model: Any, rows: pd.DataFrame) -> np.ndarray:
    """The point forecast of a natural model for processed-entity rows (utc_timestamp and the weather): float64
    (rows, targets)."""
    return predict_quantiles_fitted(model, rows)[0]


def predict_quantiles_fitted(model: Any, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """(the point forecast (rows, targets), its quantiles (rows, targets, QUANTILES) or None for a model without
    intervals) of a natural model for processed-entity rows."""
    from windpipe.training.inputs import split_output

    point, q = split_output(model.predict(_natural_rows(rows)), TARGETS)
    return point.reshape(len(rows), -1), q


def point_of(model: Any, X: pd.DataFrame) -> np.ndarray:
    """The finished point forecast of a natural model for its core input `X` (rows, targets), float64."""
    from windpipe.training.inputs import Head

    last = forecaster_of(model)
    return Head(last.head).finish(X, last.raw(X))


def follows_trend(X: pd.DataFrame) -> bool:
    """True when `X` holds the time columns (a core fitted on them follows the trend)."""
    present = [c for c in TIME_FEATURES if c in X.columns]
    if present and len(present) != len(TIME_FEATURES):
        raise WindpipeError(f"Training data has only some of the time columns ({', '.join(present)}).",
                            "derive them all with windpipe.training.split.xy(df, time_features=True)")
    return bool(present)


def per_target(X: pd.DataFrame, y: pd.DataFrame, estimator: Callable[[str, list[str]], Any]) -> Any:
    """One `estimator(target, columns)` per target, each fed only the inputs its target may read: with the time
    columns on the capacity factor from weather and calendar, times the capacity line; without, on the four
    weather features (windpipe.training.capacity.capacity_model)."""
    from windpipe.training.capacity import capacity_model

    follows_trend(X)  # (refuses some of the time columns without the others)
    return capacity_model(X, y, estimator)


def model_columns(X: pd.DataFrame) -> list[str]:
    """The columns a core fits on: MODEL_COLUMNS when `X` follows the trend, else FEATURES."""
    return MODEL_COLUMNS if follows_trend(X) else list(FEATURES)


def check_xy(X: pd.DataFrame, y: pd.DataFrame) -> None:
    if len(X) == 0:
        raise WindpipeError("No training rows.", "train on a non-empty processed entity")
    missing = [c for c in FEATURES if c not in X.columns]
    if missing:
        raise WindpipeError(f"Training data lacks feature column(s) {', '.join(missing)}.",
                            f"pass a frame with {', '.join(FEATURES)}")
    if len(X) != len(y):
        raise WindpipeError(f"{len(X)} feature rows but {len(y)} target rows.", "pass aligned frames")

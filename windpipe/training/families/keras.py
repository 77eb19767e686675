"""The Keras family: per target MLP towers on the capacity factor, times a frozen capacity line (weather
only: the towers on the four features). Built-in layers only; logged with the `keras` flavor and a
`python_function` flavor that takes the natural inputs (windpipe.training.inputs.KerasForecaster)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from windpipe.names import FEATURES, TARGETS
from windpipe.training.families import (
    KERAS_REQUIREMENTS,
    Family,
    TrainingRows,
    check_xy,
    follows_trend,
    model_columns,
    register,
)
from windpipe.training.features import MODEL_COLUMNS, WEATHER_AND_CALENDAR
from windpipe.training.params import MAX_EPOCHS, as_float, as_int, as_int_list

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class KerasParams:
    epochs: int
    batch_size: int
    learning_rate: float
    hidden_units: tuple[int, ...]
    patience: int
    seed: int
    validation_split: float
    ensemble: int
    bins: int

    @classmethod
    def check(cls, epochs: object, batch_size: object, learning_rate: object, hidden_units: object,
              patience: object, seed: object, validation_split: object, ensemble: object,
              bins: object) -> KerasParams:
        return cls(as_int("epochs", epochs, 1, MAX_EPOCHS), as_int("batch_size", batch_size, 1),
                   as_float("learning_rate", learning_rate, 0.0, 10.0),
                   tuple(as_int_list("hidden_units", hidden_units, 1)), as_int("patience", patience, 0),
                   as_int("seed", seed, 0), as_float("validation_split", validation_split, 0.0, 1.0),
                   as_int("ensemble", ensemble, 1), as_int("bins", bins, 0))

    def logged(self) -> dict[str, object]:
        return {"epochs": self.epochs, "batch_size": self.batch_size, "learning_rate": self.learning_rate,
                "hidden_units": ",".join(map(str, self.hidden_units)), "patience": self.patience, "seed": self.seed,
                "validation_split": self.validation_split, "ensemble": self.ensemble, "bins": self.bins}


def build_keras(X_train: pd.DataFrame, y_train: pd.DataFrame, params: KerasParams) -> keras.Model:
    """Per target, `ensemble` MLP towers averaged; input: the normalised features plus their bin encoding.

    One tower per target: solar hangs on radiation, wind on wind speed, and a shared net has to serve
    both (as with the forests). Averaging towers from different initialisations lowers the variance.
    Each tower's last Dense learns a standardised target and a fixed Rescaling turns them back into GW,
    so both targets weigh about the same in the loss (as in the uniform r2 average) and outputs are in GW.

    With the time columns (MODEL_COLUMNS) the towers read weather and calendar and learn the capacity
    factor; a frozen Dense on the trend holds the capacity line cap_k(t) = a_k + b_k t
    (windpipe.training.capacity, from these rows) and `Multiply` gives GW, as the forests do.
    Built-in layers only (column selection by frozen 0/1 Dense layers), so the saved model loads
    without windpipe.
    """
    import keras

    trend = follows_trend(X_train)
    columns = MODEL_COLUMNS if trend else list(FEATURES)
    X = np.asarray(X_train[columns], dtype="float64")
    y = np.asarray(y_train, dtype="float64")
    inputs = keras.Input(shape=(len(columns),), name="features")
    lines = None
    if trend:
        from windpipe.training.capacity import capacity_line, capacity_lines

        lines = capacity_lines(X_train["trend"], X_train["windspeed"], y)
        y = y / capacity_line(lines, X_train["trend"])
        keep = [columns.index(c) for c in WEATHER_AND_CALENDAR]
        weather = _select(inputs, len(columns), keep, "weather_calendar")
        X = X[:, keep]
    else:
        weather = inputs
    norm = keras.layers.Normalization(name="normalize")
    norm.adapt(X.astype("float32"))
    own = [_own_inputs(weather, TARGETS[t], columns if not trend else WEATHER_AND_CALENDAR)
           for t in range(y.shape[1])]
    xs = []
    for t, seen in enumerate(own):  # each target's tower sees the inputs it may read, the others held at 0
        x = norm(seen)
        encoded = _bin_encoding(seen, X[:, : len(FEATURES)], params.bins, f"t{t}_") if params.bins else None
        xs.append(keras.layers.Concatenate(name=f"t{t}_encoded")([x, encoded]) if encoded is not None else x)
    members = []
    for k in range(params.ensemble):
        towers = []
        for t in range(y.shape[1]):
            h = xs[t]
            for i, units in enumerate(params.hidden_units):
                h = keras.layers.Dense(units, activation="relu", name=f"m{k}_t{t}_hidden_{i}")(h)
            towers.append(keras.layers.Dense(1, name=f"m{k}_t{t}_standardised")(h))
        members.append(towers[0] if len(towers) == 1 else keras.layers.Concatenate(name=f"m{k}")(towers))
    x = members[0] if len(members) == 1 else keras.layers.Average(name="standardised")(members)
    mean, std = y.mean(axis=0), y.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    outputs = keras.layers.Rescaling(scale=std.tolist(), offset=mean.tolist(),
                                     name="capacity_factors" if trend else "targets")(x)
    if lines is not None:
        t = _select(inputs, len(columns), [columns.index("trend")], "trend")
        cap = keras.layers.Dense(y.shape[1], trainable=False, name="capacity")
        line = cap(t)
        cap.set_weights([lines[:, 1][None, :].astype("float32"), lines[:, 0].astype("float32")])
        outputs = keras.layers.Multiply(name="targets")([outputs, line])
    model = keras.Model(inputs, outputs, name="wind_solar_mlp")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=params.learning_rate), loss="mse",
                  metrics=["mae"])
    return model


def _select(inputs: keras.KerasTensor, width: int, keep: list[int], name: str) -> keras.KerasTensor:
    """The columns `keep` of `inputs`: a frozen 0/1 Dense (a built-in layer; a Lambda would need our code)."""
    import keras

    kernel = np.zeros((width, len(keep)), dtype="float32")
    kernel[keep, np.arange(len(keep))] = 1.0
    dense = keras.layers.Dense(len(keep), use_bias=False, trainable=False, name=name)
    out = dense(inputs)
    dense.set_weights([kernel])
    return out


def _own_inputs(weather: keras.KerasTensor, target: str, columns: list[str]) -> keras.KerasTensor:
    """`weather` (its `columns`) with the inputs `target` must ignore (windpipe.training.physics) set to 0: a
    frozen diagonal 0/1 Dense, so the target's tower cannot respond to them."""
    import keras

    from windpipe.training.physics import inputs_for

    allowed = set(inputs_for(target, columns))
    mask = keras.layers.Dense(len(columns), use_bias=False, trainable=False, name=f"{target}_inputs")
    out = mask(weather)
    mask.set_weights([np.diag([1.0 if c in allowed else 0.0 for c in columns]).astype("float32")])
    return out


def _bin_encoding(inputs: keras.KerasTensor, X: np.ndarray, bins: int, prefix: str = "") -> keras.KerasTensor | None:
    """Piecewise-linear encoding of each weather feature (Gorishniy et al. 2022): for every quantile bin
    [lo, hi] of the training data, clip((x - lo) / (hi - lo), 0, 1). It hands the towers sharp, data-placed
    kinks (power curves, night), which is where the forests beat the plain MLP on wind. A frozen Dense and
    ReLU(max_value=1), so nothing custom is saved. `X` holds the columns to encode (the first ones of
    `inputs`). None when every feature is constant.
    """
    import keras

    width = inputs.shape[-1]
    kernel, bias = [], []
    for i in range(X.shape[1]):
        edges = np.unique(np.quantile(X[:, i], np.linspace(0.0, 1.0, bins + 1)))
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            column = np.zeros(width)
            column[i] = 1.0 / (hi - lo)
            kernel.append(column)
            bias.append(-lo / (hi - lo))
    if not bias:
        return None
    dense = keras.layers.Dense(len(bias), trainable=False, name=f"{prefix}bins")
    out = dense(inputs)
    dense.set_weights([np.array(kernel, dtype="float32").T, np.array(bias, dtype="float32")])
    return keras.layers.ReLU(max_value=1.0, name=f"{prefix}bins_clipped")(out)


def train_keras(X: pd.DataFrame, y: pd.DataFrame, p: KerasParams,
                validation: tuple[pd.DataFrame, pd.DataFrame] | None = None,
                verbose: int = 0) -> tuple[keras.Model, keras.callbacks.History]:
    """Fit the MLP with EarlyStopping(restore_best_weights) on `validation` (rows of the training window;
    without it, Keras's `validation_split` of the rows as given)."""
    import keras

    check_xy(X, y)
    keras.utils.set_random_seed(p.seed)
    columns = model_columns(X)
    model = build_keras(X[columns], y, p)
    # min_delta: an epoch counts as better if it gains 0.001 GW^2 of validation MSE (~0.02 %); 0.01 stopped
    # runs while the net was still slowly improving at the full learning rate
    callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=p.patience, min_delta=0.001,
                                               restore_best_weights=True),
                 keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                   patience=max(1, p.patience // 3), min_lr=1e-5)]
    # (validation_split also when validation_data overrides it: mlflow.keras.autolog logs fit's arguments, and a
    # default 0.0 would clash with the run's validation_split parameter)
    held: dict[str, object] = {"validation_split": p.validation_split}
    if validation is not None:
        held["validation_data"] = (np.asarray(validation[0][columns], dtype="float32"),
                                   np.asarray(validation[1], dtype="float32"))
    # 10 batches per graph call while fitting: the towers are small, so per-call overhead is ~25 % of the fit;
    # 1 again afterwards (also what is saved), so predicting a few rows does not trace a 10-step loop
    model.steps_per_execution = 10
    history = model.fit(np.asarray(X[columns], dtype="float32"), np.asarray(y, dtype="float32"),
                        epochs=p.epochs, batch_size=p.batch_size, callbacks=callbacks, verbose=verbose,
                        shuffle=True, **held)
    model.steps_per_execution = 1
    return model, history


def fit(rows: TrainingRows, p: KerasParams) -> keras.Model:
    """Early stopping looks at rows of the training window (split_by=time: the newest of them)."""
    fit_rows, validation = rows.validation(p.validation_split)
    return train_keras(*fit_rows.xy(), p, validation=validation)[0]


FAMILY = register(Family(
    name="keras",
    summary="per target MLP towers on the capacity factor, times a frozen capacity line (Keras 3)",
    parse=KerasParams.check,
    fit=fit,
    log_params=lambda p, _time_features: p.logged(),
    flavor="keras",
    tensor=True,
    requirements=KERAS_REQUIREMENTS,
    # the network never trains on the newest validation_split of its rows (early stopping watches them): its
    # residuals there calibrate the intervals without a second training
    held_out=lambda p: p.validation_split,
))

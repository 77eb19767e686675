"""The three model families: fit functions and parameter checks (pure, no MLflow).

Every fitted model takes exactly the FEATURES columns (float64) and predicts the TARGETS
columns in that order. Parameters are checked (`check_*`) before any work, so a step can
fail fast with a WindpipeError that names the bad value and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from windpipe.errors import WindpipeError
from windpipe.names import FEATURES

if TYPE_CHECKING:
    import keras
    from sklearn.compose import ColumnTransformer
    from sklearn.multioutput import MultiOutputRegressor
    from sklearn.pipeline import Pipeline

FAMILIES = ("lr", "rf", "keras")


# ---------------------------------------------------------------- parameter parsing

def as_int(name: str, value: object, minimum: int | None = None, maximum: int | None = None) -> int:
    """`value` as an int in [`minimum`, `maximum`], else a WindpipeError naming parameter `name`."""
    try:
        number = float(str(value).strip())
        if not number.is_integer():
            raise ValueError
        out = int(number)
    except (TypeError, ValueError, OverflowError):
        raise WindpipeError(f"Parameter {name} must be a whole number, got {value!r}.",
                            f"pass e.g. -P {name}=10") from None
    if minimum is not None and out < minimum:
        raise WindpipeError(f"Parameter {name} must be at least {minimum}, got {out}.",
                            f"pass -P {name}=<a number >= {minimum}>")
    if maximum is not None and out > maximum:
        raise WindpipeError(f"Parameter {name} must be at most {maximum}, got {out}: that would run for hours "
                            "or exhaust memory.", f"pass -P {name}=<a number <= {maximum}>")
    return out


def as_float(name: str, value: object, low: float | None = None, high: float | None = None) -> float:
    """`value` as a float in the open interval (low, high), else a WindpipeError."""
    try:
        out = float(str(value).strip())
    except (TypeError, ValueError):
        raise WindpipeError(f"Parameter {name} must be a number, got {value!r}.",
                            f"pass e.g. -P {name}=0.001") from None
    if not np.isfinite(out) or (low is not None and out <= low) or (high is not None and out >= high):
        bounds = f"between {low} and {high}" if high is not None else f"greater than {low}"
        raise WindpipeError(f"Parameter {name} must be {bounds}, got {value!r}.", f"pass a valid {name}")
    return out


def as_int_list(name: str, value: object, minimum: int = 1) -> list[int]:
    """A comma list like `64,32` as ints >= `minimum` (a list or tuple passes through the same checks)."""
    items = value if isinstance(value, list | tuple) else [v for v in str(value).split(",") if v.strip()]
    if not items:
        raise WindpipeError(f"Parameter {name} is empty.", f"pass a comma list, e.g. -P {name}=64,32")
    return [as_int(name, v, minimum) for v in items]


def as_depth(name: str, value: object) -> int | None:
    """A tree depth: a whole number >= 1, or `none` / 0 for unlimited."""
    if value is None or str(value).strip().lower() in ("none", "0", ""):
        return None
    return as_int(name, value, 1)


def as_depth_list(name: str, value: object) -> list[int | None]:
    items = value if isinstance(value, list | tuple) else [v for v in str(value).split(",") if v.strip()]
    if not items:
        raise WindpipeError(f"Parameter {name} is empty.", f"pass a comma list, e.g. -P {name}=6,10,14")
    return [as_depth(name, v) for v in items]


# ---------------------------------------------------------------- parameters per family

# The defaults of every parameter live in the steps' MLproject files (projects/<family>/MLproject);
# these classes only check values and carry them. The upper bounds keep a typo (1e9 trees) from running
# until a timeout kills it: far above anything useful on this data.
MAX_TREES = 5_000
MAX_EPOCHS = 10_000

@dataclass(frozen=True)
class RFParams:
    n_estimators: int
    max_depth: int | None
    min_samples_leaf: int
    seed: int
    n_jobs: int = -1  # not a step parameter: all cores

    @classmethod
    def check(cls, n_estimators: object, max_depth: object, min_samples_leaf: object, seed: object,
              n_jobs: object = -1) -> RFParams:
        n_jobs = as_int("n_jobs", n_jobs)
        if n_jobs == 0:
            raise WindpipeError("Parameter n_jobs must not be 0.", "pass -1 (all cores) or a positive number")
        return cls(as_int("n_estimators", n_estimators, 1, MAX_TREES), as_depth("max_depth", max_depth),
                   as_int("min_samples_leaf", min_samples_leaf, 1), as_int("seed", seed, 0), n_jobs)


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


# ---------------------------------------------------------------- sklearn families

def physics_features() -> ColumnTransformer:
    """Cheap, physically motivated features inside the model (input stays the raw FEATURES):

    wind power grows with wind speed cubed up to saturation, so windspeed, windspeed^2, windspeed^3;
    solar follows radiation, modulated by temperature, so radiation x temperature products.
    Only sklearn classes, so the saved model loads without windpipe installed.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import PolynomialFeatures

    return ColumnTransformer(
        [("wind", PolynomialFeatures(degree=3, include_bias=False), ["windspeed"]),
         ("sun", PolynomialFeatures(degree=2, include_bias=False), ["temperature", "rad_horizontal", "rad_diffuse"])],
        remainder="drop", verbose_feature_names_out=False,
    )


def train_lr(X: pd.DataFrame, y: pd.DataFrame) -> Pipeline:
    """LinearRegression on physics features (a sklearn Pipeline taking the raw FEATURES)."""
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline

    _check_xy(X, y)
    return Pipeline([("features", physics_features()), ("lr", LinearRegression())]).fit(X[FEATURES], y)


def train_rf(X: pd.DataFrame, y: pd.DataFrame, p: RFParams) -> MultiOutputRegressor:
    """One RandomForestRegressor per target on the raw FEATURES.

    Solar hangs on radiation and wind on wind speed: a joint multi-output forest has to pick
    splits that serve both, separate forests do not (r2 0.868 -> 0.870 on the real data).
    Each split looks at half the features (`max_features=0.5`), which decorrelates the trees.
    """
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.multioutput import MultiOutputRegressor

    _check_xy(X, y)
    forest = RandomForestRegressor(n_estimators=p.n_estimators, max_depth=p.max_depth, max_features=0.5,
                                   min_samples_leaf=p.min_samples_leaf, random_state=p.seed, n_jobs=p.n_jobs)
    return MultiOutputRegressor(forest).fit(X[FEATURES], y)


# ---------------------------------------------------------------- keras

def build_keras(X_train: pd.DataFrame, y_train: pd.DataFrame, params: KerasParams) -> keras.Model:
    """Per target, `ensemble` MLP towers averaged; input: the normalised features plus their bin encoding.

    One tower per target: solar hangs on radiation, wind on wind speed, and a shared net has to serve
    both (as with the forests). Averaging towers from different initialisations lowers the variance.
    Each tower's last Dense learns a standardised target and a fixed Rescaling turns them back into GW,
    so both targets weigh about the same in the loss (as in the uniform r2 average) and outputs are in GW.
    Built-in layers only, so the saved model loads without windpipe.
    """
    import keras

    X = np.asarray(X_train, dtype="float64")
    norm = keras.layers.Normalization(name="normalize")
    norm.adapt(X.astype("float32"))
    inputs = keras.Input(shape=(len(FEATURES),), name="features")
    x = norm(inputs)
    encoded = _bin_encoding(inputs, X, params.bins) if params.bins else None
    if encoded is not None:
        x = keras.layers.Concatenate(name="encoded")([x, encoded])
    y = np.asarray(y_train, dtype="float64")
    members = []
    for k in range(params.ensemble):
        towers = []
        for t in range(y.shape[1]):
            h = x
            for i, units in enumerate(params.hidden_units):
                h = keras.layers.Dense(units, activation="relu", name=f"m{k}_t{t}_hidden_{i}")(h)
            towers.append(keras.layers.Dense(1, name=f"m{k}_t{t}_standardised")(h))
        members.append(towers[0] if len(towers) == 1 else keras.layers.Concatenate(name=f"m{k}")(towers))
    x = members[0] if len(members) == 1 else keras.layers.Average(name="standardised")(members)
    mean, std = y.mean(axis=0), y.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    outputs = keras.layers.Rescaling(scale=std.tolist(), offset=mean.tolist(), name="targets")(x)
    model = keras.Model(inputs, outputs, name="wind_solar_mlp")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=params.learning_rate), loss="mse",
                  metrics=["mae"])
    return model


def _bin_encoding(inputs: keras.KerasTensor, X: np.ndarray, bins: int) -> keras.KerasTensor | None:
    """Piecewise-linear encoding of each feature (Gorishniy et al. 2022): for every quantile bin [lo, hi]
    of the training data, clip((x - lo) / (hi - lo), 0, 1). It hands the towers sharp, data-placed kinks
    (power curves, night), which is where the forests beat the plain MLP on wind. A frozen Dense and
    ReLU(max_value=1), so nothing custom is saved. None when every feature is constant.
    """
    import keras

    kernel, bias = [], []
    for i in range(X.shape[1]):
        edges = np.unique(np.quantile(X[:, i], np.linspace(0.0, 1.0, bins + 1)))
        for lo, hi in zip(edges[:-1], edges[1:], strict=True):
            column = np.zeros(X.shape[1])
            column[i] = 1.0 / (hi - lo)
            kernel.append(column)
            bias.append(-lo / (hi - lo))
    if not bias:
        return None
    dense = keras.layers.Dense(len(bias), trainable=False, name="bins")
    out = dense(inputs)
    dense.set_weights([np.array(kernel, dtype="float32").T, np.array(bias, dtype="float32")])
    return keras.layers.ReLU(max_value=1.0, name="bins_clipped")(out)


def train_keras(X: pd.DataFrame, y: pd.DataFrame, p: KerasParams,
                verbose: int = 0) -> tuple[keras.Model, keras.callbacks.History]:
    """Fit the MLP with EarlyStopping(restore_best_weights) on a validation split of the training data."""
    import keras

    _check_xy(X, y)
    keras.utils.set_random_seed(p.seed)
    model = build_keras(X[FEATURES], y, p)
    # min_delta: an epoch counts as better if it gains 0.001 GW^2 of validation MSE (~0.02 %); 0.01 stopped
    # runs while the net was still slowly improving at the full learning rate
    callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=p.patience, min_delta=0.001,
                                               restore_best_weights=True),
                 keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                   patience=max(1, p.patience // 3), min_lr=1e-5)]
    # 10 batches per graph call while fitting: the towers are small, so per-call overhead is ~25 % of the fit;
    # 1 again afterwards (also what is saved), so predicting a few rows does not trace a 10-step loop
    model.steps_per_execution = 10
    history = model.fit(np.asarray(X[FEATURES], dtype="float32"), np.asarray(y, dtype="float32"),
                        epochs=p.epochs, batch_size=p.batch_size, validation_split=p.validation_split,
                        callbacks=callbacks, verbose=verbose, shuffle=True)
    model.steps_per_execution = 1
    return model, history


def predict_fitted(model: object, X: pd.DataFrame) -> np.ndarray:
    """Predictions of a freshly fitted model of any family as a (rows, targets) float64 array."""
    if hasattr(model, "predict") and type(model).__module__.startswith("keras"):
        out = model.predict(np.asarray(X[FEATURES], dtype="float32"), verbose=0)
    else:
        out = model.predict(X[FEATURES])
    return np.asarray(out, dtype="float64").reshape(len(X), -1)


def _check_xy(X: pd.DataFrame, y: pd.DataFrame) -> None:
    if len(X) == 0:
        raise WindpipeError("No training rows.", "train on a non-empty processed entity")
    missing = [c for c in FEATURES if c not in X.columns]
    if missing:
        raise WindpipeError(f"Training data lacks feature column(s) {', '.join(missing)}.",
                            f"pass a frame with {', '.join(FEATURES)}")
    if len(X) != len(y):
        raise WindpipeError(f"{len(X)} feature rows but {len(y)} target rows.", "pass aligned frames")

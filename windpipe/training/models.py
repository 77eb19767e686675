"""The three model families: fit functions and parameter checks (pure, no MLflow).

Every fitted model predicts the TARGETS columns in that order. It takes the FEATURES columns
(float64) or, to follow the trend, MODEL_COLUMNS: FEATURES plus the calendar and trend columns
derived from utc_timestamp (windpipe.training.features); which one depends on the columns it is
fitted on. Parameters are checked (`check_*`) before any work, so a step can
fail fast with a WindpipeError that names the bad value and the fix.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from windpipe.errors import WindpipeError
from windpipe.names import FEATURES, TARGETS, TIME_FEATURES
from windpipe.training.features import MODEL_COLUMNS, WEATHER_AND_CALENDAR

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


# ---------------------------------------------------------------- how a model's input is read

def follows_trend(X: pd.DataFrame) -> bool:
    """True when `X` holds the time columns (windpipe.training.features): fit the family's trend design."""
    present = [c for c in TIME_FEATURES if c in X.columns]
    if present and len(present) != len(TIME_FEATURES):
        raise WindpipeError(f"Training data has only some of the time columns ({', '.join(present)}).",
                            "derive them all with windpipe.training.features.model_input")
    return bool(present)


def fitted_columns(model: object) -> list[str]:
    """The input columns of a freshly fitted model, in order (sklearn: as fitted; Keras: by input width)."""
    if type(model).__module__.startswith("keras"):
        return MODEL_COLUMNS if model.input_shape[-1] == len(MODEL_COLUMNS) else list(FEATURES)
    return list(model.feature_names_in_)


def predict_fitted(model: object, X: pd.DataFrame) -> np.ndarray:
    """Predictions of a freshly fitted model of any family as a (rows, targets) float64 array."""
    cols = fitted_columns(model)
    if type(model).__module__.startswith("keras"):
        out = model.predict(np.asarray(X[cols], dtype="float32"), verbose=0, batch_size=4096)
    else:
        out = model.predict(X[cols])
    return np.asarray(out, dtype="float64").reshape(len(X), -1)


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


def spline_trend_ridge() -> Pipeline:
    """Ridge on cubic B-splines of the weather and every pairwise product with the calendar and the trend.

    Output is roughly capacity(t) x capacity factor(weather): the products B_k(weather) x trend make
    each weather coefficient linear in time (y = sum_k (beta_k + gamma_k trend) B_k(...)), so the model
    follows the growing fleet and extrapolates it one window ahead. No scaler: B-spline bases lie in
    [0, 1]; standardising rarely active products gave them huge scales that Ridge no longer shrank
    (single hours of hundreds of GW in backtests). alpha 0.1 was chosen on 2015 Q4 (before every fold
    that is reported); 0.1 to 3 score within 0.005. Only sklearn classes: loads without windpipe.
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import PolynomialFeatures, SplineTransformer

    splines = ColumnTransformer([
        ("weather", SplineTransformer(n_knots=8, degree=3, extrapolation="constant"), FEATURES),
        ("time", "passthrough", TIME_FEATURES)])
    return Pipeline([("splines", splines),
                     ("products", PolynomialFeatures(degree=2, interaction_only=True, include_bias=False)),
                     ("ridge", Ridge(alpha=0.1))])


def train_lr(X: pd.DataFrame, y: pd.DataFrame) -> Pipeline:
    """The linear family: with the time columns `spline_trend_ridge`, else LinearRegression on physics features."""
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline

    _check_xy(X, y)
    if follows_trend(X):
        return spline_trend_ridge().fit(X[MODEL_COLUMNS], y)
    return Pipeline([("features", physics_features()), ("lr", LinearRegression())]).fit(X[FEATURES], y)


def train_rf(X: pd.DataFrame, y: pd.DataFrame, p: RFParams) -> object:
    """The forest family: one RandomForestRegressor per target.

    Solar hangs on radiation and wind on wind speed: a joint multi-output forest has to pick
    splits that serve both, separate forests do not (r2 0.868 -> 0.870 on the real data).
    Each split looks at half the features (`max_features=0.5`), which decorrelates the trees.
    With the time columns the forests learn the capacity factor and the model multiplies by the
    capacity line (`capacity_forests`); without them they take the four weather features.
    """
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.multioutput import MultiOutputRegressor

    _check_xy(X, y)
    forest = RandomForestRegressor(n_estimators=p.n_estimators, max_depth=p.max_depth, max_features=0.5,
                                   min_samples_leaf=p.min_samples_leaf, random_state=p.seed, n_jobs=p.n_jobs)
    if follows_trend(X):
        return capacity_forests(X, y, forest)
    return MultiOutputRegressor(forest).fit(X[FEATURES], y)


def capacity_forests(X: pd.DataFrame, y: pd.DataFrame, forest: object) -> Pipeline:
    """cap_k(t) x forest_k(weather, calendar) per target, as one sklearn Pipeline on MODEL_COLUMNS.

    A forest cannot extrapolate a trend (it repeats the last level it saw), so each target's forest
    learns the capacity factor y_k / cap_k(t) (windpipe.training.capacity, from these rows only) and
    the model multiplies back:

        [forest_solar, forest_wind](weather, calendar), trend      (a VotingRegressor's transform)
        -> products [cf_s, cf_w, t, cf_s cf_w, cf_s t, cf_w t]        (PolynomialFeatures)
        -> cf_k (a_k + b_k t)                                          (LinearRegression, exact)

    The forests and the last map are fitted here and frozen (sklearn.frozen.FrozenEstimator), so the
    Pipeline's own fit only records column names; every piece is a sklearn class, so the saved model
    loads without windpipe. The fitted forests predict single-threaded (`n_jobs=1`): summing trees in
    thread order changes the last bits between processes.
    """
    from sklearn.base import clone
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import VotingRegressor
    from sklearn.frozen import FrozenEstimator
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import PolynomialFeatures

    from windpipe.training.capacity import capacity, capacity_lines

    target = np.asarray(y, dtype="float64")
    lines = capacity_lines(X["trend"], X["windspeed"], target)
    factor = target / capacity(lines, X["trend"])
    inputs = X[WEATHER_AND_CALENDAR]
    forests = []
    for i, name in enumerate(TARGETS):
        fitted = clone(forest).fit(inputs, factor[:, i])
        fitted.n_jobs = 1
        forests.append((name, FrozenEstimator(fitted)))
    # (fitted on any 1-d target: its members are frozen, fitting only records them)
    capacity_factors = VotingRegressor(forests).fit(inputs.iloc[:2], factor[:2, 0])
    # the exact map [cf_s, cf_w, t] -> cf_k (a_k + b_k t), fitted where it is exact: a 3 x 3 x 3 grid
    grid = np.array([[a, b, c] for a in (0.0, 1.0, 2.0) for b in (0.0, 1.0, 2.0) for c in (0.0, 1.0, 2.0)])
    products = PolynomialFeatures(degree=2, interaction_only=True, include_bias=False)
    head = LinearRegression(fit_intercept=False).fit(products.fit_transform(grid),
                                                      grid[:, :2] * capacity(lines, grid[:, 2]))
    model = Pipeline([
        ("capacity_factors", ColumnTransformer([("forests", FrozenEstimator(capacity_factors), WEATHER_AND_CALENDAR),
                                                ("trend", "passthrough", ["trend"])])),
        ("products", products),
        ("capacity", FrozenEstimator(head))])
    # every learned part is frozen: fitting the Pipeline only records its input columns
    return model.fit(X[MODEL_COLUMNS].iloc[:2], target[:2])


def rf_grid(X: pd.DataFrame, y: pd.DataFrame, grid: Sequence[RFParams]) -> Iterator[
        tuple[RFParams, object, float]]:
    """Every grid point's model as `train_rf` fits it, and the seconds it took: (params, model, seconds).

    Points that differ only in n_estimators share their trees: tree i of a forest depends only on
    the seed and i (what scikit-learn's `warm_start` relies on), so the forest of 32 trees is the
    one of 16 plus 16 more. Per depth the grid fits max(n_estimators) trees per target instead of
    their sum (64 instead of 8+16+32+64), and yields the same models in order of size. A model that
    follows the trend (`capacity_forests`) keeps its forests frozen inside a Pipeline: each of its
    points is fitted on its own.
    """
    share = not follows_trend(X)
    groups: dict[tuple[object, ...], list[RFParams]] = {}
    for p in grid:
        groups.setdefault((p.max_depth, p.min_samples_leaf, p.seed, p.n_jobs), []).append(p)
    for points in groups.values():
        model: object | None = None
        for p in sorted(points, key=lambda q: q.n_estimators):
            started = time.perf_counter()
            model = train_rf(X, y, p) if model is None or not share else _grow(model, X, y, p.n_estimators)
            yield p, model, time.perf_counter() - started


def _grow(model: MultiOutputRegressor, X: pd.DataFrame, y: pd.DataFrame, n_estimators: int) -> MultiOutputRegressor:
    """A copy of a fitted per-target forest model with more trees (the model passed in is left as it is)."""
    from sklearn.base import clone

    targets = np.asarray(y, dtype="float64")  # (as MultiOutputRegressor.fit hands each forest its column)
    grown = copy.copy(model)
    grown.estimator = clone(model.estimator).set_params(n_estimators=n_estimators)
    grown.estimators_ = []
    for i, forest in enumerate(model.estimators_):
        more = copy.copy(forest)
        more.estimators_ = list(forest.estimators_)  # (warm_start extends the list in place)
        more.set_params(n_estimators=n_estimators, warm_start=True)
        more.fit(X[FEATURES], targets[:, i])
        grown.estimators_.append(more.set_params(warm_start=False))
    return grown


# ---------------------------------------------------------------- keras

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
        from windpipe.training.capacity import capacity, capacity_lines

        lines = capacity_lines(X_train["trend"], X_train["windspeed"], y)
        y = y / capacity(lines, X_train["trend"])
        keep = [columns.index(c) for c in WEATHER_AND_CALENDAR]
        weather = _select(inputs, len(columns), keep, "weather_calendar")
        X = X[:, keep]
    else:
        weather = inputs
    norm = keras.layers.Normalization(name="normalize")
    norm.adapt(X.astype("float32"))
    x = norm(weather)
    encoded = _bin_encoding(weather, X[:, : len(FEATURES)], params.bins) if params.bins else None
    if encoded is not None:
        x = keras.layers.Concatenate(name="encoded")([x, encoded])
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


def _bin_encoding(inputs: keras.KerasTensor, X: np.ndarray, bins: int) -> keras.KerasTensor | None:
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
    dense = keras.layers.Dense(len(bias), trainable=False, name="bins")
    out = dense(inputs)
    dense.set_weights([np.array(kernel, dtype="float32").T, np.array(bias, dtype="float32")])
    return keras.layers.ReLU(max_value=1.0, name="bins_clipped")(out)


def train_keras(X: pd.DataFrame, y: pd.DataFrame, p: KerasParams,
                validation: tuple[pd.DataFrame, pd.DataFrame] | None = None,
                verbose: int = 0) -> tuple[keras.Model, keras.callbacks.History]:
    """Fit the MLP with EarlyStopping(restore_best_weights) on `validation` (rows of the training window;
    without it, Keras's `validation_split` of the rows as given)."""
    import keras

    _check_xy(X, y)
    keras.utils.set_random_seed(p.seed)
    columns = MODEL_COLUMNS if follows_trend(X) else list(FEATURES)
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


def _check_xy(X: pd.DataFrame, y: pd.DataFrame) -> None:
    if len(X) == 0:
        raise WindpipeError("No training rows.", "train on a non-empty processed entity")
    missing = [c for c in FEATURES if c not in X.columns]
    if missing:
        raise WindpipeError(f"Training data lacks feature column(s) {', '.join(missing)}.",
                            f"pass a frame with {', '.join(FEATURES)}")
    if len(X) != len(y):
        raise WindpipeError(f"{len(X)} feature rows but {len(y)} target rows.", "pass aligned frames")

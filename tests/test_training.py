"""Pure training functions on tiny in-code data: split, features, metrics, models, figure, parameter checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from windpipe.errors import WindpipeError
from windpipe.names import FEATURES, TARGETS, TIMESTAMP
from windpipe.pipeline.interfaces import step_defaults
from windpipe.training.families import keras as K
from windpipe.training.families import lr as LR
from windpipe.training.families import rf as RF
from windpipe.training.figures import figure_html, predicted_vs_recorded
from windpipe.training.metrics import regression_metrics
from windpipe.training.params import as_depth_list, as_int_list
from windpipe.training.split import split, xy
from windpipe.views.figures import as_figure


def frame(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ws = rng.uniform(0, 12, n)
    temp = rng.uniform(-5, 30, n)
    rh = rng.uniform(0, 600, n)
    rd = rng.uniform(0, 200, n)
    return pd.DataFrame({
        TIMESTAMP: pd.date_range("2013-01-01", periods=n, freq="h", tz="UTC"),
        "solar_GW": 0.04 * rh + 0.05 * rd - 0.1 * temp + rng.normal(0, 0.5, n),
        "wind_GW": 0.02 * ws ** 3 + rng.normal(0, 0.5, n),
        "windspeed": ws, "temperature": temp, "rad_horizontal": rh, "rad_diffuse": rd,
    })


# ------------------------------------------------------------ split and features

def test_random_split_is_sklearns_seeded_80_20():
    from sklearn.model_selection import train_test_split

    df = frame(101)
    train, test = split(df)
    ref_train, ref_test = train_test_split(df, test_size=0.2, random_state=42)
    assert train.index.equals(ref_train.index) and test.index.equals(ref_test.index)
    again, _ = split(df, seed=42)
    other, _ = split(df, seed=1)
    assert train.index.equals(again.index) and not train.index.equals(other.index)


def test_time_split_takes_the_last_fraction_as_test():
    df = frame(100).sample(frac=1, random_state=0)
    train, test = split(df, test_size=0.25, split_by="time")
    assert len(test) == 25 and len(train) == 75
    assert train[TIMESTAMP].max() < test[TIMESTAMP].min()


@pytest.mark.parametrize("kwargs", [{"test_size": 0}, {"test_size": 1.0}, {"test_size": -0.1},
                                    {"split_by": "season"}])
def test_split_rejects_bad_parameters(kwargs):
    with pytest.raises(WindpipeError):
        split(frame(10), **kwargs)


def test_split_needs_two_rows():
    with pytest.raises(WindpipeError, match="at least 2"):
        split(frame(1))


def test_xy_selects_features_and_targets_in_order():
    X, y = xy(frame(5)[list(reversed(frame(5).columns))])
    assert list(X.columns) == FEATURES and list(y.columns) == TARGETS
    assert all(X.dtypes == "float64")


# ------------------------------------------------------------ metrics

def test_metrics_overall_and_per_target():
    y = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    p = y + np.array([[0.0, 1.0], [0.0, -1.0], [0.0, 1.0]])
    m = regression_metrics(y, p)
    assert m["rmse_solar_GW"] == 0 and m["mae_wind_GW"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(0.5) and m["mae"] == pytest.approx(0.5)
    assert m["r2_solar_GW"] == 1.0 and m["r2"] == pytest.approx((1.0 + m["r2_wind_GW"]) / 2)
    assert set(regression_metrics(y, p, prefix="eval_")) == {f"eval_{k}" for k in m}
    assert all(isinstance(v, float) for v in m.values())


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError):
        regression_metrics(np.zeros((3, 2)), np.zeros((3, 1)))


# ------------------------------------------------------------ parameter checks (before any work)

RF_KEYS = ("n_estimators", "max_depth", "min_samples_leaf", "seed")
KERAS_KEYS = ("epochs", "batch_size", "learning_rate", "hidden_units", "patience", "seed", "validation_split",
              "ensemble", "bins")


def rf_params(**kw):
    """RFParams from the rf step's MLproject defaults (the one place they live), with `kw` changed."""
    defaults = step_defaults("rf")
    return RF.RFParams.check(**{**{k: defaults[k] for k in RF_KEYS}, **kw})


def keras_params(**kw):
    defaults = step_defaults("keras")
    return K.KerasParams.check(**{**{k: defaults[k] for k in KERAS_KEYS}, **kw})


@pytest.mark.parametrize("kwargs", [{"n_estimators": -3}, {"n_estimators": 0}, {"n_estimators": "abc"},
                                    {"n_estimators": 2.5}, {"max_depth": -1}, {"max_depth": "deep"},
                                    {"min_samples_leaf": 0}, {"seed": -1}, {"n_jobs": 0}])
def test_rf_params_rejected(kwargs):
    with pytest.raises(WindpipeError):
        rf_params(**kwargs)


def test_rf_params_parse_strings():
    p = rf_params(n_estimators="16", max_depth="none", seed="7.0")
    assert (p.n_estimators, p.max_depth, p.seed) == (16, None, 7)


@pytest.mark.parametrize("kwargs", [{"epochs": 0}, {"epochs": "ten"}, {"batch_size": 0}, {"learning_rate": "abc"},
                                    {"learning_rate": 0}, {"learning_rate": -0.1}, {"learning_rate": "nan"},
                                    {"hidden_units": ""}, {"hidden_units": "64,0"}, {"hidden_units": "64,x"},
                                    {"patience": -1}, {"validation_split": 1.0}, {"ensemble": 0}, {"bins": -1}])
def test_keras_params_rejected(kwargs):
    with pytest.raises(WindpipeError):
        keras_params(**kwargs)


def test_keras_params_parse_strings():
    p = keras_params(epochs="3", learning_rate="0.01", hidden_units="8, 4")
    assert (p.epochs, p.learning_rate, p.hidden_units) == (3, 0.01, (8, 4))


def test_grid_lists():
    assert as_int_list("n_estimators", "8,16") == [8, 16]
    assert as_depth_list("max_depth", "6,none") == [6, None]
    for bad in ("", "8,-3", "a"):
        with pytest.raises(WindpipeError):
            as_int_list("n_estimators", bad)
    with pytest.raises(WindpipeError):
        as_depth_list("max_depth", "")


# ------------------------------------------------------------ models

def test_lr_learns_the_cubic_wind_curve_from_raw_features():
    train, test = split(frame(400))
    model = LR.train_lr(*xy(train))
    pred = model.predict(xy(test)[0])
    assert pred.shape == (len(test), 2)
    assert regression_metrics(xy(test)[1], pred)["r2"] > 0.95


def test_rf_fits_and_is_reproducible():
    train, test = split(frame(300))
    p = rf_params(n_estimators=5, max_depth=4, n_jobs=1)
    a = RF.train_rf(*xy(train), p).predict(xy(test)[0])
    b = RF.train_rf(*xy(train), p).predict(xy(test)[0])
    assert a.shape == (len(test), 2) and np.array_equal(a, b)


@pytest.mark.parametrize("time_features", [False, True])
def test_the_rf_grid_grows_forests_yet_yields_the_models_train_rf_fits_alone(time_features):
    """A grid point with more trees reuses the smaller forest's trees: the same model, fewer trees fitted (also on
    the capacity factor, with the recency weights, when the model follows the trend)."""
    train, test = split(frame(300))
    X, y = xy(train, time_features)
    grid = [rf_params(n_estimators=n, max_depth=d, n_jobs=2) for n in (6, 2, 4) for d in (3, None)]
    got = list(RF.rf_grid(X, y, grid))
    assert [(p.n_estimators, p.max_depth) for p, _, _ in got] == [(2, 3), (4, 3), (6, 3), (2, None), (4, None),
                                                                   (6, None)]
    for p, model, seconds in got:
        alone = RF.train_rf(X, y, p)
        assert seconds >= 0 and [len(f.estimators_) for f in model.estimators] == [p.n_estimators] * 2
        assert repr(model.get_params()) == repr(alone.get_params())
        assert np.allclose(model.predict(xy(test, time_features)[0]), alone.predict(xy(test, time_features)[0]),
                           rtol=1e-12)
    assert len(got[0][1].estimators[0].estimators_) == 2  # growing a copy left the smaller model as it was


def test_training_rejects_empty_or_incomplete_data():
    X, y = xy(frame(10))
    with pytest.raises(WindpipeError):
        LR.train_lr(X.iloc[:0], y.iloc[:0])
    with pytest.raises(WindpipeError):
        RF.train_rf(X.drop(columns="windspeed"), y, rf_params())


def test_keras_fits_with_early_stopping():
    pytest.importorskip("keras")
    train, test = split(frame(200))
    p = keras_params(epochs=3, batch_size=32, hidden_units="8", patience=1)
    model, history = K.train_keras(*xy(train), p)
    assert 1 <= len(history.history["loss"]) <= 3 and "val_loss" in history.history
    assert model.predict(np.asarray(xy(test)[0], dtype="float32"), verbose=0).shape == (len(test), 2)


def test_keras_bin_encoding_runs_from_0_to_1_over_each_features_training_range():
    keras = pytest.importorskip("keras")
    X, y = xy(frame(200))
    model = K.build_keras(X, y, keras_params(hidden_units="4", ensemble=1, bins=4))
    from windpipe.training.physics import IGNORES

    for t, target in enumerate(TARGETS):  # each target's tower encodes the inputs it may read; the others stay put
        encoding = keras.Model(model.inputs, model.get_layer(f"t{t}_bins_clipped").output)
        low, high = encoding.predict(np.asarray([X.min(), X.max()], dtype="float32"), verbose=0)
        assert low.shape == (4 * len(FEATURES),)
        for i, feature in enumerate(FEATURES):
            lo, hi = low[4 * i: 4 * i + 4], high[4 * i: 4 * i + 4]
            if feature in IGNORES[target]:
                assert np.allclose(lo, hi), (target, feature)
            else:
                assert np.allclose(lo, 0, atol=1e-6) and np.allclose(hi, 1), (target, feature)
    plain = K.build_keras(X, y, keras_params(hidden_units="4", ensemble=1, bins=0))  # bins=0: no encoding
    assert not [layer.name for layer in plain.layers if "bins" in layer.name]


def test_figure_has_one_panel_per_target():
    y = frame(50)[TARGETS]
    fig = predicted_vs_recorded(y, y.to_numpy() * 1.1, max_points=20)
    assert len(fig["data"]) == 4  # a scatter and an identity line per target
    assert [t["xaxis"] for t in fig["data"]] == ["x", "x", "x2", "x2"]  # each target's pair in its own panel
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    assert "solar_GW" in titles[0] and "wind_GW" in titles[1]
    # the page MLflow shows draws it with plotly.js, and plotly itself accepts the figure
    assert "Plotly.newPlot" in figure_html(fig) and len(as_figure(fig).data) == 4


def test_capacity_factors_weigh_newer_hours_more_when_the_estimator_takes_weights():
    """capacity_model hands each target's estimator the recency weights (1 for the newest hour, half a year
    older: RECENT_HALF_LIFE); an estimator whose fit takes no weights (a family made by new-step) fits unweighted."""
    from sklearn.base import BaseEstimator, RegressorMixin
    from sklearn.linear_model import LinearRegression

    from windpipe.training.capacity import RECENT_HALF_LIFE, capacity_model
    from windpipe.training.split import xy

    from .models import tiny_processed

    X, y = xy(tiny_processed(24 * 500), time_features=True)
    seen = []

    class Recording(LinearRegression):
        def fit(self, X, y, sample_weight=None):
            seen.append(sample_weight)
            return super().fit(X, y, sample_weight)

    class Unweighted(RegressorMixin, BaseEstimator):
        def fit(self, X, y):
            self.mean_ = float(np.mean(y))
            return self

        def predict(self, X):
            return np.full(len(X), self.mean_)

    capacity_model(X, y, lambda _target, _columns: Recording())
    expected = 0.5 ** ((X["trend"].max() - X["trend"].to_numpy()) / RECENT_HALF_LIFE)
    assert len(seen) == len(TARGETS) and expected.min() < 0.6 and expected.max() == 1.0  # (a year of hours)
    for weights in seen:
        np.testing.assert_allclose(weights, expected)
    model = capacity_model(X, y, lambda _target, _columns: Unweighted())
    assert np.isfinite(model.predict(X)).all()

"""The linear family: Ridge on B-splines of the weather x calendar x trend (weather only: LinearRegression
on physics features). Only scikit-learn classes (and scipy's B-splines) inside: loads without windpipe."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from windpipe.names import FEATURES, TIME_FEATURES
from windpipe.training.families import Family, check_xy, follows_trend, register
from windpipe.training.features import MODEL_COLUMNS

if TYPE_CHECKING:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline


def physics_features() -> ColumnTransformer:
    """Cheap, physically motivated features inside the model (input stays the raw FEATURES):

    wind power grows with wind speed cubed up to saturation, so windspeed, windspeed^2, windspeed^3;
    solar follows radiation, modulated by temperature, so radiation x temperature products.
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
    that is reported); 0.1 to 3 score within 0.005.
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

    check_xy(X, y)
    if follows_trend(X):
        return spline_trend_ridge().fit(X[MODEL_COLUMNS], y)
    return Pipeline([("features", physics_features()), ("lr", LinearRegression())]).fit(X[FEATURES], y)


def design(_params: object, time_features: bool) -> dict[str, object]:
    return {"features": "cubic splines of the weather x hour/day-of-year cycles x trend, Ridge" if time_features
            else "windspeed^1..3 + degree-2 radiation/temperature"}


FAMILY = register(Family(
    name="lr",
    summary="Ridge on cubic B-splines of the weather x hour and day-of-year cycles x trend",
    parse=lambda seed: None,  # no parameters of its own
    fit=lambda rows, _params: train_lr(*rows.xy()),
    log_params=design,
    # the spline model's B-splines (scipy)
    skops_trusted=("scipy.interpolate._bsplines.BSpline", "scipy._lib.array_api_compat.numpy._aliases.asarray"),
))

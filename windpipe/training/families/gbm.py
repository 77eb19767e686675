"""The gradient-boosting family: per target a HistGradientBoostingRegressor on the capacity factor, times
the capacity line (weather only: on the four features), monotone where physics says so.

Wind power never falls as the wind speed rises (up to cut-out, far above the hourly mean wind over
Germany), and solar power never falls as the radiation rises: `monotonic_cst` holds each target's
trees to that, so a model cannot learn a dip from noise (issue 23: the linear model gave less wind
power at 12 m/s than at 10 m/s). Each target's trees see only the inputs it may read
(windpipe.training.physics: wind ignores the radiation, solar the wind speed).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from windpipe.training.families import Family, check_xy, per_target, register
from windpipe.training.params import MAX_TREES, as_float, as_int
from windpipe.training.physics import inputs_for, monotone_constraints


@dataclass(frozen=True)
class GBMParams:
    max_iter: int
    learning_rate: float
    max_leaf_nodes: int
    min_samples_leaf: int
    l2_regularization: float
    max_features: float
    seed: int

    @classmethod
    def check(cls, max_iter: object, learning_rate: object, max_leaf_nodes: object, min_samples_leaf: object,
              l2_regularization: object, max_features: object, seed: object) -> GBMParams:
        l2 = float(as_float("l2_regularization", l2_regularization, -1e-12))
        return cls(as_int("max_iter", max_iter, 1, MAX_TREES), as_float("learning_rate", learning_rate, 0.0, 1.0),
                   as_int("max_leaf_nodes", max_leaf_nodes, 2), as_int("min_samples_leaf", min_samples_leaf, 1),
                   max(l2, 0.0), as_float("max_features", max_features, 0.0, 1.0 + 1e-12), as_int("seed", seed, 0))

    def logged(self) -> dict[str, object]:
        return {"max_iter": self.max_iter, "learning_rate": self.learning_rate, "max_leaf_nodes": self.max_leaf_nodes,
                "min_samples_leaf": self.min_samples_leaf, "l2_regularization": self.l2_regularization,
                "max_features": self.max_features, "seed": self.seed}


def train_gbm(X: pd.DataFrame, y: pd.DataFrame, p: GBMParams) -> object:
    """With the time columns: the capacity factor per target (windpipe.training.capacity.capacity_model)
    from weather and calendar; without: one model per target on the four weather features. No early stopping:
    it would hold out random rows of a time series; max_iter is the budget."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from threadpoolctl import threadpool_limits

    check_xy(X, y)

    def boosted(target: str, columns: list[str]) -> HistGradientBoostingRegressor:
        return HistGradientBoostingRegressor(
            max_iter=p.max_iter, learning_rate=p.learning_rate, max_leaf_nodes=p.max_leaf_nodes,
            min_samples_leaf=p.min_samples_leaf, l2_regularization=p.l2_regularization, max_features=p.max_features,
            early_stopping=False, monotonic_cst=monotone_constraints(target, inputs_for(target, columns)),
            random_state=p.seed)

    # one OpenMP thread: beside other steps on 2 shared cores, two threads spin-waiting on each other took 9x
    # longer (21.7 s against 2.3 s, 20 iterations on 400 days, load average 6)
    with threadpool_limits(limits=1, user_api="openmp"):
        return per_target(X, y, boosted)


FAMILY = register(Family(
    name="gbm",
    summary="per target a HistGradientBoostingRegressor on the capacity factor (monotone in wind speed and "
            "radiation), times the capacity line",
    parse=GBMParams.check,
    fit=lambda rows, p: train_gbm(*rows.xy(), p),
    log_params=lambda p, _time_features: p.logged(),
    # the boosted trees (and the Bunch a VotingRegressor kept in models logged before windpipe_inputs.CapacityModel)
    skops_trusted=("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor", "sklearn.utils._bunch.Bunch"),
))

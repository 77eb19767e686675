"""The forest family: per target a RandomForestRegressor on the capacity factor, times the capacity line
(weather only: the forests on the four features). Its `grid` entry point grows forests tree by tree."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from windpipe.errors import WindpipeError
from windpipe.names import FEATURES
from windpipe.training.families import Family, check_xy, follows_trend, register
from windpipe.training.params import MAX_TREES, as_depth, as_int

if TYPE_CHECKING:
    from sklearn.multioutput import MultiOutputRegressor


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

    def logged(self) -> dict[str, object]:
        return {"n_estimators": self.n_estimators, "max_depth": self.max_depth,
                "min_samples_leaf": self.min_samples_leaf, "seed": self.seed}


def train_rf(X: pd.DataFrame, y: pd.DataFrame, p: RFParams) -> object:
    """One RandomForestRegressor per target.

    Solar hangs on radiation and wind on wind speed: a joint multi-output forest has to pick
    splits that serve both, separate forests do not (r2 0.868 -> 0.870 on the real data).
    Each split looks at half the features (`max_features=0.5`), which decorrelates the trees.
    With the time columns the forests learn the capacity factor and the model multiplies by the
    capacity line (windpipe.training.capacity.capacity_model); without them they take the four weather features.
    """
    from sklearn.base import clone
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.multioutput import MultiOutputRegressor

    from windpipe.training.capacity import capacity_model

    check_xy(X, y)
    forest = RandomForestRegressor(n_estimators=p.n_estimators, max_depth=p.max_depth, max_features=0.5,
                                   min_samples_leaf=p.min_samples_leaf, random_state=p.seed, n_jobs=p.n_jobs)
    if follows_trend(X):
        return capacity_model(X, y, lambda _target: clone(forest))
    return MultiOutputRegressor(forest).fit(X[FEATURES], y)


def rf_grid(X: pd.DataFrame, y: pd.DataFrame, grid: Sequence[RFParams]) -> Iterator[
        tuple[RFParams, object, float]]:
    """Every grid point's model as `train_rf` fits it, and the seconds it took: (params, model, seconds).

    Points that differ only in n_estimators share their trees: tree i of a forest depends only on
    the seed and i (what scikit-learn's `warm_start` relies on), so the forest of 32 trees is the
    one of 16 plus 16 more. Per depth the grid fits max(n_estimators) trees per target instead of
    their sum (64 instead of 8+16+32+64), and yields the same models in order of size. A model that
    follows the trend (`capacity_model`) keeps its forests frozen inside a Pipeline: each of its
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


FAMILY = register(Family(
    name="rf",
    summary="per target a RandomForestRegressor on the capacity factor, times the capacity line",
    parse=RFParams.check,
    fit=lambda rows, p: train_rf(*rows.xy(), p),
    log_params=lambda p, _time_features: p.logged(),
    # the forests' trees and the Bunch a VotingRegressor keeps
    skops_trusted=("sklearn.tree._tree.Tree", "sklearn.utils._bunch.Bunch"),
))

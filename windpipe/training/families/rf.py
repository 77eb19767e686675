"""The forest family: per target a RandomForestRegressor on the capacity factor, times the capacity line
(weather only: the forests on the four features). Each target's trees see only the inputs it may read and
rise with what drives it (`monotonic_cst`; windpipe.training.physics). Its `grid` entry point grows forests
tree by tree."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pandas as pd

from windpipe.errors import WindpipeError
from windpipe.names import TARGETS
from windpipe.training.capacity import FactorRows
from windpipe.training.families import Family, check_xy, per_target, register
from windpipe.training.params import MAX_TREES, as_depth, as_int
from windpipe.training.physics import inputs_for, monotone_constraints


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
    capacity line; without them they take the four weather features (windpipe.training.capacity.capacity_model).
    """
    check_xy(X, y)
    return per_target(X, y, lambda target, columns: _forest(target, columns, p))


def _forest(target: str, columns: list[str], p: RFParams) -> object:
    """The forest of `target` on the `columns` it may read, rising with what drives it."""
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(n_estimators=p.n_estimators, max_depth=p.max_depth, max_features=0.5,
                                 min_samples_leaf=p.min_samples_leaf, random_state=p.seed, n_jobs=p.n_jobs,
                                 monotonic_cst=monotone_constraints(target, inputs_for(target, columns)))


def rf_grid(X: pd.DataFrame, y: pd.DataFrame, grid: Sequence[RFParams]) -> Iterator[
        tuple[RFParams, object, float]]:
    """Every grid point's model as `train_rf` fits it, and the seconds it took: (params, model, seconds).

    Points that differ only in n_estimators share their trees: tree i of a forest depends only on
    the seed and i (what scikit-learn's `warm_start` relies on), so the forest of 32 trees is the
    one of 16 plus 16 more. Per depth the grid fits max(n_estimators) trees per target instead of
    their sum (64 instead of 8+16+32+64), and yields the same models in order of size.
    """
    check_xy(X, y)
    rows = FactorRows.of(X, y)
    groups: dict[tuple[object, ...], list[RFParams]] = {}
    for p in grid:
        groups.setdefault((p.max_depth, p.min_samples_leaf, p.seed, p.n_jobs), []).append(p)
    for points in groups.values():
        forests: list[object] = []
        for p in sorted(points, key=lambda q: q.n_estimators):
            started = time.perf_counter()
            forests = [rows.fit(k, _more(forests[k], p) if forests else _forest(t, rows.inputs, p))
                       for k, t in enumerate(TARGETS)]
            # (copies: the model's forests predict on one thread, the next point grows the originals)
            model = rows.model([copy.copy(f).set_params(warm_start=False) for f in forests])
            yield p, model, time.perf_counter() - started


def _more(forest: object, p: RFParams) -> object:
    """A copy of a fitted forest that `fit` grows to p.n_estimators trees, keeping the ones it has (warm_start);
    the forest passed in is left as it is."""
    more = copy.copy(forest)
    more.estimators_ = list(forest.estimators_)  # (warm_start extends the list in place)
    return more.set_params(n_estimators=p.n_estimators, warm_start=True, n_jobs=p.n_jobs)


FAMILY = register(Family(
    name="rf",
    summary="per target a RandomForestRegressor on the capacity factor, times the capacity line",
    parse=RFParams.check,
    fit=lambda rows, p: train_rf(*rows.xy(), p),
    log_params=lambda p, _time_features: p.logged(),
    # the forests' trees (and the Bunch a VotingRegressor kept in models logged before windpipe_inputs.CapacityModel)
    skops_trusted=("sklearn.tree._tree.Tree", "sklearn.utils._bunch.Bunch"),
))

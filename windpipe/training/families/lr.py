"""The linear family: per target a Ridge on B-splines of the inputs it may read, shaped so that power never
falls as what drives it rises (windpipe.training.physics; windpipe.training.inputs.MonotoneDesign, predicted
folded by MonotoneRidge), and with the time columns on the capacity factor, times the capacity line
(windpipe.training.capacity).

Issue 23: the earlier Ridge on every pairwise product of the weather's splines gave less wind power at 12 m/s
than at 10 m/s and raised wind power with radiation. Here wind reads wind speed, temperature and the
calendar, solar the radiation, temperature and the calendar; the rising inputs enter as monotone ramps
with non-negative coefficients (Ridge(positive=True), solved exactly), the others freely. Only scikit-learn classes (and
scipy's B-splines) and the logged windpipe_inputs module inside: loads without windpipe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from windpipe.names import FEATURES
from windpipe.training.families import Family, check_xy, per_target, register
from windpipe.training.physics import RISES_WITH, inputs_for

if TYPE_CHECKING:
    from windpipe.training.inputs import MonotoneRidge

# Ridge's penalty on the spline coefficients. 0.1 was chosen (on 2015 Q4) with a solver that stopped early, which
# regularised too; solved exactly (windpipe.training.inputs.positive_ridge) it needs a larger penalty. At 0.1 / 1 /
# 10 (L-BFGS-B at 0.1): a generated year's 13-week holdout rmse 1.848 / 1.702 / 1.700 GW (1.710); the demo's four
# generated years' 80 % interval coverage 0.853 (unweighted) / 0.852 / 0.828 (0.797; the gate takes 0.75-0.85);
# germany.csv's 2016 Q4 r2 0.8786 / 0.8786 / 0.8802 (0.8770)
ALPHA = 10.0
# the tolerance of Ridge's own positive solver (L-BFGS-B), used only should the exact one fail
# (windpipe.training.inputs.positive_ridge): 1e-3 fitted a year of synthetic hours in 3.5 s against 10.5 s at 1e-4
TOL = 1e-3


def monotone_ridge(target: str, columns: list[str], alpha: float = ALPHA) -> MonotoneRidge:
    """An unfitted Ridge for `target` on the `columns` it may read (positions: the columns
    windpipe.training.capacity.FactorRows fits it on), non-decreasing in each input `target` rises with.
    MonotoneRidge fits Pipeline(MonotoneDesign, Ridge(positive=True)) and predicts its numbers from folded
    coefficients without building the design (models logged before it hold that Pipeline, which still loads)."""
    from windpipe.training.features import CALENDAR
    from windpipe.training.inputs import MonotoneRidge

    own = inputs_for(target, columns)
    rising = [c for c in own if c in RISES_WITH.get(target, ())]
    other = [c for c in own if c in FEATURES and c not in rising]
    calendar = [c for c in own if c in CALENDAR]
    return MonotoneRidge(rising=tuple(own.index(c) for c in rising), other=tuple(own.index(c) for c in other),
                         calendar=tuple(own.index(c) for c in calendar), alpha=alpha, tol=TOL)


def train_lr(X: pd.DataFrame, y: pd.DataFrame) -> object:
    """With the time columns: the capacity factor per target (windpipe.training.capacity.capacity_model) from
    weather and calendar; without: per target on the four weather features."""
    check_xy(X, y)
    return per_target(X, y, monotone_ridge)


def design(_params: object, time_features: bool) -> dict[str, object]:
    return {"features": "monotone cubic splines of the weather x hour/day-of-year cycles, Ridge, x capacity trend"
            if time_features else "monotone cubic splines of the weather, Ridge"}


def _trusted() -> tuple[str, ...]:
    from windpipe.training.inputs import MODULE

    return (f"{MODULE}.MonotoneRidge", f"{MODULE}.MonotoneDesign", "scipy.interpolate._bsplines.BSpline",
            "scipy._lib.array_api_compat.numpy._aliases.asarray", "sklearn.utils._bunch.Bunch")


FAMILY = register(Family(
    name="lr",
    summary="per target a Ridge on monotone cubic B-splines of the weather and the hour and day-of-year cycles, "
            "times the capacity line",
    parse=lambda seed: None,  # no parameters of its own
    fit=lambda rows, _params: train_lr(*rows.xy()),
    log_params=design,
    # the splines (scipy), the folded Ridge and its design (windpipe_inputs) (and the Bunch a VotingRegressor kept in
    # models logged before windpipe_inputs.CapacityModel)
    skops_trusted=_trusted(),
))

"""What a power forecast may not do, and how to check it (pure: numpy and pandas, no MLflow).

Power is never below 0 nor above the installed capacity: every logged model clips its output inside
itself (windpipe.training.inputs.Head, whose bounds windpipe.training.capacity.head_spec estimates from
the training rows).
Power rises with what drives it and ignores what does not:

    wind_GW   rises with windspeed                      ignores rad_horizontal, rad_diffuse
    solar_GW  rises with rad_horizontal, rad_diffuse    ignores windspeed

The families build that in (`inputs_for`: a target's model never reads what it ignores;
`monotone_constraints`: scikit-learn's monotonic_cst), and the promotion gate checks it on the
candidate's response curves (`response_curves`, the same sweep the dashboard's what-if page draws, at
conditions taken from the holdout: `conditions`; `check_curves` names what breaks).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from windpipe.names import FEATURES, QUANTILES, TARGETS, TIMESTAMP, quantile_column

RISES_WITH = {"wind_GW": ("windspeed",), "solar_GW": ("rad_horizontal", "rad_diffuse")}
IGNORES = {"wind_GW": ("rad_horizontal", "rad_diffuse"), "solar_GW": ("windspeed",)}
# the what-if page's sweeps (the dashboard draws them over these ranges)
SWEEPS = {"windspeed": (0.0, 25.0), "rad_horizontal": (0.0, 1000.0)}
# what the gate checks: wind must not fall as the wind speed rises over this range (m/s), below cut-out and
# around rated speed for Germany's fleet; over it solar must not move. Solar must not fall as the direct
# radiation rises from 0 to the holdout's highest; over that sweep wind must not move.
WIND_RANGE = (3.0, 12.0)


def inputs_for(target: str, columns: Sequence[str]) -> list[str]:
    """The columns a model of `target` may read: `columns` without those it must ignore."""
    return [c for c in columns if c not in IGNORES.get(target, ())]


def monotone_constraints(target: str, columns: Sequence[str]) -> list[int]:
    """scikit-learn's monotonic_cst for `target` over `columns`: +1 where power rises with the input."""
    rising = RISES_WITH.get(target, ())
    return [1 if c in rising else 0 for c in columns]


# ---------------------------------------------------------------------------------------------- the sweep

Predict = Callable[[pd.DataFrame, list[pd.Timestamp] | None], pd.DataFrame]


def response_curves(predict: Predict, values: dict[str, float], when: pd.Timestamp | None = None,
                    sweeps: dict[str, tuple[float, float]] | None = None,
                    points: int = 51) -> dict[str, pd.DataFrame]:
    """How the predicted power responds to each swept input, the others held at `values` at the UTC time `when`:
    per swept feature `points` rows over its range, predicted in one call of `predict(rows, times)` (a frame with
    the targets and, when the model gives them, their quantiles). Columns: the swept feature, then the
    prediction's. The one sweep behind the what-if page's curves and the promotion gate's check."""
    out = {}
    for feature, (low, high) in (sweeps or SWEEPS).items():
        grid = pd.DataFrame({f: np.full(points, float(values[f])) for f in FEATURES}, dtype="float64")
        grid[feature] = np.linspace(low, high, points)
        pred = predict(grid, None if when is None else [when] * points).reset_index(drop=True)
        out[feature] = pd.concat([grid[[feature]], pred], axis=1)
    return out


def conditions(holdout: pd.DataFrame, count: int = 8) -> pd.DataFrame:
    """`count` rows of the holdout to sweep around: half at the sunniest hours, half spread over the window
    (nights, calm and stormy hours among them), each with its time; oldest first."""
    rows = holdout.reset_index(drop=True)
    if len(rows) <= count:
        return rows.sort_values(TIMESTAMP, kind="stable").reset_index(drop=True)
    sunny = rows["rad_horizontal"].to_numpy().argsort(kind="stable")[::-1][: count // 2]
    rest = np.setdiff1d(np.arange(len(rows)), sunny)
    spread = rest[np.linspace(0, len(rest) - 1, count - len(sunny)).round().astype(int)]
    picked = rows.iloc[np.union1d(sunny, spread)]
    return picked.sort_values(TIMESTAMP, kind="stable").reset_index(drop=True)


def gate_sweeps(holdout: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """The gate's sweeps: wind speed over WIND_RANGE, direct radiation from 0 to the holdout's highest."""
    top = float(holdout["rad_horizontal"].max()) if len(holdout) else SWEEPS["rad_horizontal"][1]
    return {"windspeed": WIND_RANGE, "rad_horizontal": (0.0, max(top, 1.0))}


# ---------------------------------------------------------------------------------------------- the check

@dataclass
class PhysicsCheck:
    """What the response curves showed: the worst breach per rule, and whether any passed its tolerance."""

    tolerance_drop: float  # GW a rising curve may fall (numerical noise)
    tolerance_ignore: float  # GW a curve may move over an input its target ignores
    breaches: list[dict] = field(default_factory=list)  # rule, target, feature, gw, at, condition
    worst: dict[str, dict] = field(default_factory=dict)  # rule/target/feature -> its worst breach

    @property
    def passed(self) -> bool:
        return not self.breaches

    def reason(self) -> str:
        """One sentence per broken rule (the worst case), or that every rule held."""
        if self.passed:
            return (f"physics: every response curve holds (rising curves fall by at most "
                    f"{self.tolerance_drop:g} GW, ignored inputs move power by at most {self.tolerance_ignore:g} GW)")
        return "physics: " + "; ".join(_sentence(b) for b in self.breaches)

    def as_json(self) -> dict:
        return {"passed": self.passed, "reason": self.reason(), "tolerance_drop_gw": self.tolerance_drop,
                "tolerance_ignore_gw": self.tolerance_ignore, "breaches": self.breaches, "worst": self.worst}


def _sentence(b: dict) -> str:
    if b["rule"] == "rises":
        return (f"{b['target']} falls by {b['gw']:.3g} GW as {b['feature']} rises from {b['from']:.4g} to "
                f"{b['to']:.4g} (at {b['condition']})")
    return f"{b['target']} moves by {b['gw']:.3g} GW over the {b['feature']} sweep, which it must ignore " \
           f"(at {b['condition']})"


def check_curves(curves: list[tuple[str, dict[str, pd.DataFrame]]], tolerance_drop: float,
                 tolerance_ignore: float, targets: Sequence[str] = TARGETS) -> PhysicsCheck:
    """Check response curves (`response_curves` results, one per condition, with the condition's label) against
    RISES_WITH (no fall larger than `tolerance_drop` GW from any point to any later one) and IGNORES (a range no
    wider than `tolerance_ignore` GW), for the point forecast and, when present, every quantile. Keeps the worst
    breach per rule, target and swept feature."""
    check = PhysicsCheck(tolerance_drop, tolerance_ignore)
    for label, per_feature in curves:
        for feature, curve in per_feature.items():
            x = curve[feature].to_numpy(dtype="float64")
            for target in targets:
                columns = [c for c in (target, *(quantile_column(target, q) for q in QUANTILES)) if c in curve]
                for column in columns:
                    y = curve[column].to_numpy(dtype="float64")
                    if feature in RISES_WITH.get(target, ()):
                        peak = np.maximum.accumulate(y)
                        drop = peak - y
                        i = int(drop.argmax())
                        gw = float(drop[i])
                        found = {"rule": "rises", "target": column, "feature": feature, "gw": gw,
                                 "from": float(x[int(y[: i + 1].argmax())]), "to": float(x[i]), "condition": label}
                    elif feature in IGNORES.get(target, ()):
                        gw = float(y.max() - y.min()) if len(y) else 0.0
                        found = {"rule": "ignores", "target": column, "feature": feature, "gw": gw,
                                 "condition": label}
                    else:
                        continue
                    key = f"{found['rule']}/{column}/{feature}"
                    if key not in check.worst or gw > check.worst[key]["gw"]:
                        check.worst[key] = found
    check.breaches = [b for key, b in sorted(check.worst.items())
                      if b["gw"] > (tolerance_drop if b["rule"] == "rises" else tolerance_ignore)]
    return check


def curves_at(predict: Predict, holdout: pd.DataFrame, points: int = 25,
              count: int = 8) -> list[tuple[str, dict[str, pd.DataFrame]]]:
    """The gate's response curves: `response_curves` at each of the holdout's `conditions`, labelled by the
    condition's time and weather."""
    sweeps = gate_sweeps(holdout)
    out = []
    for row in conditions(holdout, count).itertuples(index=False):
        values = {f: float(getattr(row, f)) for f in FEATURES}
        when = pd.Timestamp(getattr(row, TIMESTAMP))
        when = when.tz_localize("UTC") if when.tzinfo is None else when.tz_convert("UTC")
        label = (f"{when:%Y-%m-%d %H:%M} UTC, " + ", ".join(f"{f} {values[f]:.4g}" for f in FEATURES))
        out.append((label, response_curves(predict, values, when, sweeps, points)))
    return out

"""Scoring the lr family's model: the folded Ridge (MonotoneRidge) against the design it folds, in this process.

The lr model is fitted the family's way (`fit_natural`: natural inputs, the capacity line, the head with its
intervals) on ../shared/data/germany.csv (or WINDPIPE_GERMANY_CSV), else on a year of generated hours. The same
model is copied with each core replaced by the Pipeline(MonotoneDesign, Ridge) it folds (what models logged
before it hold); both score the same rows resampled from the data, one a minute, in parts of
windpipe.models.loading.SCORE_ROWS as `windpipe predict` does (loading.predict_quantiles), alternately, and the
medians are compared: the whole model (natural inputs to quantiles) and its two cores alone. The two must give
the same numbers (the largest difference is printed).

Target (issue 25): `windpipe predict` at >= 200k rows/s end to end, which needs the model itself well above
that. The machine may be busy: compare the ratio, and read the rates with the load average printed.

    python benchmarks/bench_scoring.py [--rounds 3] [--rows 1000000]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time

from common import GERMANY, REPO, table

sys.path.insert(0, str(REPO))

TARGET_RATE = 200_000


def source_rows():
    """(processed rows to fit on, what they are): germany.csv when present, else a generated year."""
    if GERMANY.exists():
        from windpipe.data.process import load_processed

        df = load_processed(GERMANY)
        return df, f"{GERMANY.name} ({len(df):,} rows)"
    from tests.models import tiny_processed

    df = tiny_processed(n=24 * 365)
    return df, f"generated ({len(df):,} rows)"


def scoring_rows(df, n: int):
    """`n` natural-input rows resampled from `df`, one a minute (a time may not repeat; minutes keep the trend
    near the training years)."""
    import numpy as np
    import pandas as pd

    from windpipe.names import FEATURES, TIMESTAMP

    idx = np.random.default_rng(0).integers(0, len(df), n)
    out = df[FEATURES].iloc[idx].reset_index(drop=True)
    out.insert(0, TIMESTAMP, pd.date_range("2017-01-01", periods=n, freq="min", tz="UTC"))
    return out


def capacity_models(model) -> list:
    """The windpipe_inputs.CapacityModel in a natural model (the Forecast's core): its estimators are each target's
    lr core, folded (MonotoneRidge) or not (Pipeline(MonotoneDesign, Ridge))."""
    from windpipe.training.families import forecaster_of
    from windpipe.training.inputs import CapacityModel

    core = forecaster_of(model).model
    if not isinstance(core, CapacityModel):
        raise SystemExit("the lr model holds no CapacityModel: nothing to compare")
    return [core]


def unfolded(model):
    """A copy of `model` whose cores are the fitted Pipeline(MonotoneDesign, Ridge) each MonotoneRidge folds."""
    from windpipe.training.inputs import MonotoneRidge

    out = copy.deepcopy(model)
    for core in capacity_models(out):
        if not any(isinstance(e, MonotoneRidge) for e in core.estimators):
            raise SystemExit("the lr model holds no MonotoneRidge: nothing to compare")
        core.estimators = tuple(e.unfolded() if isinstance(e, MonotoneRidge) else e for e in core.estimators)
    return out


def score(model, rows) -> tuple:
    """The point forecast and quantiles of `rows`, SCORE_ROWS at a time (loading.predict_quantiles' loop)."""
    import numpy as np

    from windpipe.models.loading import SCORE_ROWS
    from windpipe.names import TARGETS
    from windpipe.training.inputs import split_output

    points, quantiles = [], []
    for start in range(0, len(rows), SCORE_ROWS):
        point, q = split_output(model.predict(rows.iloc[start:start + SCORE_ROWS]), TARGETS)
        points.append(point)
        quantiles.append(q)
    return np.concatenate(points), None if quantiles[0] is None else np.concatenate(quantiles)


def core_inputs(model, rows) -> list:
    """The cores' input (the natural inputs' output: weather and calendar), in parts of SCORE_ROWS."""
    from windpipe.models.loading import SCORE_ROWS
    from windpipe.training.features import WEATHER_AND_CALENDAR

    inputs = model.steps[0][1]
    return [inputs.transform(rows.iloc[start:start + SCORE_ROWS])[WEATHER_AND_CALENDAR]
            for start in range(0, len(rows), SCORE_ROWS)]


def score_cores(model, parts: list) -> list:
    """Only the cores: each target's estimator on its own columns of each part."""
    return [e.predict(X[list(columns)]) for X in parts for core in capacity_models(model)
            for e, columns in zip(core.estimators, core.columns, strict=True)]


def seconds(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args(argv)
    import numpy as np

    from windpipe.training import families
    from windpipe.training.families import TrainingRows

    df, label = source_rows()
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    folded = families.get("lr").fit_natural(TrainingRows(df, time_features=True), None)
    fit_s = time.perf_counter() - started
    design = unfolded(folded)
    rows = scoring_rows(df, args.rows)
    print(f"data: {label}; lr fitted in {fit_s:.1f} s; {args.rows:,} rows, {args.rounds} round(s); "
          f"{os.cpu_count()} CPU(s), load average {load_before:.2f}\n", flush=True)

    sample = rows.iloc[:50_000]  # the same numbers (the bar: ~1e-9 relative)
    (p1, q1), (p2, q2) = score(folded, sample), score(design, sample)
    scale = max(np.abs(p2).max(), 1e-300)
    differ = max(np.abs(p1 - p2).max(), np.abs(q1 - q2).max() if q1 is not None else 0.0) / scale
    parts = core_inputs(folded, rows)
    cores = [np.abs(a - b).max() for a, b in zip(score_cores(folded, parts[:2]), score_cores(design, parts[:2]),
                                                    strict=True)]

    times: dict[tuple[str, str], list[float]] = {(w, m): [] for w in ("model", "cores") for m in ("folded", "design")}
    for _ in range(args.rounds):  # alternately, so a change in the machine's load falls on both
        for what, fn, data in (("model", score, rows), ("cores", score_cores, parts)):
            times[(what, "folded")].append(seconds(fn, folded, data))
            times[(what, "design")].append(seconds(fn, design, data))
    load_after = os.getloadavg()[0]

    def rate(what: str, how: str) -> float:
        return args.rows / statistics.median(times[(what, how)])

    out = []
    for what, name in (("model", "whole model (natural inputs to quantiles)"),
                       ("cores", "the two cores alone (their columns of the core input)")):
        folded_rate, design_rate = rate(what, "folded"), rate(what, "design")
        out.append([name, f"{folded_rate:,.0f}", f"{design_rate:,.0f}", f"{folded_rate / design_rate:.1f}x",
                    f"{1e6 / folded_rate:.2f}", f"{1e6 / design_rate:.2f}"])
    print(table(["scoring", "folded rows/s", "design rows/s", "ratio", "folded us/row", "design us/row"], out))
    print(f"\nmedians of {args.rounds} round(s); load average {load_before:.2f} before, {load_after:.2f} after "
          f"({os.cpu_count()} CPUs). Largest difference, folded against design: {differ:.1e} of the largest "
          f"prediction (model), {max(cores):.1e} (cores, capacity factors). Target: the model well above "
          f"{TARGET_RATE:,} rows/s ({'met' if rate('model', 'folded') >= TARGET_RATE else 'not met'} here).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

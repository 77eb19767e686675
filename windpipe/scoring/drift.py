"""Drift: is a scored batch's weather unusual for its season, or is something wrong with it?

The reference is the model's training entity (the entity recorded on the run that logged the
model version), narrowed to the batch's season: the batch's calendar window (first to last
timestamp) in every year of the reference, e.g. October to December of 2013-2015 for a 2016 Q4
batch. Against the whole year, every winter batch looks like drift (temperature PSI 1.6 for an
ordinary Q4 on the real data).

Per feature, against that season:

- PSI (population stability index) over 10 quantile bins of the reference (edges = its deciles,
  open-ended outer bins; empty bins get a 1e-4 share): has the distribution moved?
- shift: by how much, in the season's own units: the larger of |mean(batch) - mean(season)| /
  sd(season) and |ln(sd(batch) / sd(season))|. Weather moves a month by at most ~1.7 (a cold
  January, a calm November); a unit error moves it by 3.7 (wind speed in km/h), 6.3 (temperature
  in Fahrenheit) or more (radiation in kW/m^2: the spread shrinks a thousandfold);
- KS: the two-sample Kolmogorov-Smirnov statistic D (scipy.stats.ks_2samp), kept for reference.

PSI alone cannot tell the two apart: a month in the coldest tenth of its season fills the
bottom bins as surely as Fahrenheit fills the top one (both near PSI's ceiling of 8.3). So:

| status | rule | meaning |
|---|---|---|
| ok | PSI < 0.2 or shift < 1 | the season as usual (or a small move) |
| warn | PSI >= 0.2 and 1 <= shift < 2 | unusual weather for the season (the model may do worse; the data is fine) |
| drift | PSI >= 0.2 and shift >= 2 | more than weather does: a broken sensor, a unit or a feed mix-up |

docs/predict.md has the calibration on the real data: every 4-week and 13-week batch of 2014-2016
scored against the data before it (no drift; unit errors all drift). A batch's status is the worst
of its features'. The caller brings the reference (windpipe.models.loading.training_entity);
nothing here does I/O.

A batch read in parts (windpipe.scoring.batch streams its input) is summarised part by part
(`Summary`): per feature a histogram on the season's PSI bins, the count, mean and spread (merged with
Chan et al.'s parallel formulas) and every k-th row for KS (k from the file's row count, as
`ks` samples). Its numbers are `feature_drift`'s for the same rows: the same bins and counts, the
same KS sample, means and spreads equal to rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from windpipe.names import FEATURES

PSI_MOVED = 0.2  # the distribution moved (the classic PSI limit)
SHIFT_WARN = 1.0  # ... by more than a season's sd: unusual weather
SHIFT_DRIFT = 2.0  # ... by more than weather moves it
BINS = 10
EPS = 1e-4
KS_SAMPLE = 200_000  # KS on at most this many batch rows (evenly spaced sample; D changes < 0.003)
STATUS_ORDER = ("ok", "warn", "drift")
COLUMNS = ["feature", "psi", "ks", "ks_pvalue", "status", "batch_rows", "training_rows", "reference_uri",
           "shift", "reference"]


def psi(reference: np.ndarray, current: np.ndarray, bins: int = BINS) -> float:
    """Population stability index of `current` against quantile bins of `reference`."""
    reference = reference[~np.isnan(reference)]
    current = current[~np.isnan(current)]
    if not len(reference) or not len(current):
        return float("nan")
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref_share = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) / len(reference)
    cur_share = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1) / len(current)
    ref_share = np.clip(ref_share, EPS, None)
    cur_share = np.clip(cur_share, EPS, None)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))


def ks(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """(D, p-value) of the two-sample KS test; the batch sampled to KS_SAMPLE rows (every k-th row)."""
    return _ks(reference, current[:: ks_step(len(current))])


def ks_step(rows: int) -> int:
    """k: a batch of `rows` rows is sampled every k-th row for KS."""
    return max(1, rows // KS_SAMPLE) if rows > KS_SAMPLE else 1


def _ks(reference: np.ndarray, sample: np.ndarray) -> tuple[float, float]:
    from scipy.stats import ks_2samp

    reference = reference[~np.isnan(reference)]
    sample = sample[~np.isnan(sample)]
    if not len(reference) or not len(sample):
        return float("nan"), float("nan")
    res = ks_2samp(reference, sample)
    return float(res.statistic), float(res.pvalue)


def shift(reference: np.ndarray, current: np.ndarray) -> float:
    """max(|mean difference| / sd, |ln sd ratio|) of `current` against `reference` (inf when the reference
    is constant and the batch is not)."""
    reference = reference[~np.isnan(reference)]
    current = current[~np.isnan(current)]
    if not len(reference) or not len(current):
        return float("nan")
    return _shift(float(np.std(reference)), float(np.mean(reference)), float(np.std(current)),
                  float(np.mean(current)))


def _shift(sd_ref: float, mean_ref: float, sd_cur: float, mean_cur: float) -> float:
    mean_gap = abs(mean_cur - mean_ref)
    if sd_ref == 0:
        return 0.0 if mean_gap == 0 and sd_cur == 0 else float("inf")
    spread_gap = abs(np.log(sd_cur / sd_ref)) if sd_cur > 0 else float("inf")
    return float(max(mean_gap / sd_ref, spread_gap))


@dataclass
class Season:
    """The reference rows a batch is compared with."""

    rows: np.ndarray  # boolean mask over the reference rows
    label: str  # "season MM-DD to MM-DD, N year(s)" or "all"


def season(n: int, reference_times: pd.Series | None, batch_times: pd.Series | None) -> Season:
    """The batch's calendar window (first to last timestamp, shifted by whole years) in the `n` reference rows.

    The whole reference when a side has no timestamps, the batch spans a year or more, or no
    reference year holds the window.
    """
    cur = None if batch_times is None else pd.to_datetime(batch_times, utc=True).dropna()
    return season_of(n, reference_times, None if cur is None or cur.empty else (cur.min(), cur.max()))


def season_of(n: int, reference_times: pd.Series | None, window: tuple[pd.Timestamp, pd.Timestamp] | None) -> Season:
    """`season` for a batch whose first and last times are `window` (None: it has none)."""
    everything = Season(np.ones(n, dtype=bool), "all")
    if reference_times is None or window is None or len(reference_times) != n:
        return everything
    ref = pd.to_datetime(reference_times, utc=True).reset_index(drop=True)
    if ref.isna().all():
        return everything
    start, end = window
    if end - start >= pd.Timedelta(days=365):
        return everything
    rows = np.zeros(n, dtype=bool)
    years = 0
    for offset in range(ref.min().year - end.year - 1, ref.max().year - start.year + 2):
        mask = ((ref >= start + pd.DateOffset(years=offset)) & (ref <= end + pd.DateOffset(years=offset))).to_numpy()
        rows |= mask
        years += bool(mask.any())
    if not rows.any():
        return everything
    return Season(rows, f"season {start:%m-%d} to {end:%m-%d}, {years} year(s)")


def status(psi_value: float, shift_value: float) -> str:
    """ok (not moved, or by less than a sd), warn (unusual weather) or drift (moved more than weather does)."""
    if np.isnan(psi_value) or psi_value < PSI_MOVED or np.isnan(shift_value) or shift_value < SHIFT_WARN:
        return "ok"
    return "drift" if shift_value >= SHIFT_DRIFT else "warn"


def feature_drift(batch: pd.DataFrame, reference: pd.DataFrame, reference_uri: str | None = None,
                  batch_times: pd.Series | None = None, reference_times: pd.Series | None = None) -> pd.DataFrame:
    """Per-feature drift of `batch` against the season of `reference`: feature, psi, ks, ks_pvalue, status, ...

    `training_rows` counts the reference rows compared with (the season's), `reference` says which
    they were. Without timestamps on either side the whole reference is compared.
    """
    chosen = season(len(reference), reference_times, batch_times)
    rows = []
    for f in FEATURES:
        cur = batch[f].to_numpy(dtype="float64")
        ref = reference[f].to_numpy(dtype="float64")[chosen.rows]
        p, moved = psi(ref, cur), shift(ref, cur)
        d, pvalue = ks(ref, cur)
        rows.append(_row(f, p, d, pvalue, moved, len(cur), chosen, reference_uri))
    return pd.DataFrame(rows, columns=COLUMNS)


def _row(feature: str, p: float, d: float, pvalue: float, moved: float, batch_rows: int, chosen: Season,
         reference_uri: str | None) -> dict[str, object]:
    return {"feature": feature, "psi": p, "ks": d, "ks_pvalue": pvalue, "status": status(p, moved),
            "batch_rows": batch_rows, "training_rows": int(chosen.rows.sum()), "reference_uri": reference_uri,
            "shift": moved, "reference": chosen.label}


class Summary:
    """`feature_drift` of a batch read in parts: `add` each part's features (FEATURES, float64, no NaN), then
    `result()`. Memory stays that of the reference and at most ~2 * KS_SAMPLE rows, whatever the batch's size.

    `rows` is how many rows the whole batch has (or a bound: the KS sample takes every k-th row with
    k = rows // KS_SAMPLE, as `ks` does for a batch of `rows` rows); `chosen` the reference rows to compare
    with (`season_of` the batch's window).
    """

    def __init__(self, reference: pd.DataFrame, chosen: Season, rows: int) -> None:
        self.chosen = chosen
        self._ref = {f: (r := reference[f].to_numpy(dtype="float64")[chosen.rows])[~np.isnan(r)] for f in FEATURES}
        self._edges = {f: np.unique(np.quantile(r, np.linspace(0, 1, BINS + 1)[1:-1])) if len(r) else None
                       for f, r in self._ref.items()}
        self._counts = {f: np.zeros(0 if e is None else len(e) + 1, dtype="int64") for f, e in self._edges.items()}
        self._n = 0
        self._mean = dict.fromkeys(FEATURES, 0.0)
        self._m2 = dict.fromkeys(FEATURES, 0.0)  # sum of squared deviations from the mean
        self._step = ks_step(rows)
        self._sample: dict[str, list[np.ndarray]] = {f: [] for f in FEATURES}

    def add(self, features: pd.DataFrame) -> None:
        """One part of the batch (its rows in the batch's order)."""
        m = len(features)
        if not m:
            return
        take = (-self._n) % self._step  # the first row of this part that the KS sample takes
        for f in FEATURES:
            x = features[f].to_numpy(dtype="float64")
            if self._edges[f] is not None:
                self._counts[f] += np.bincount(np.searchsorted(self._edges[f], x, side="right"),
                                               minlength=len(self._counts[f]))
            mean = float(np.mean(x))
            m2 = float(np.sum((x - mean) ** 2))
            if self._n:
                delta, total = mean - self._mean[f], self._n + m
                mean = self._mean[f] + delta * m / total
                m2 += self._m2[f] + delta * delta * self._n * m / total
            self._mean[f], self._m2[f] = mean, m2
            self._sample[f].append(x[take::self._step].copy())
        self._n += m

    def result(self, reference_uri: str | None = None) -> pd.DataFrame:
        """The drift rows (`feature_drift`'s columns) of everything added."""
        rows = []
        for f in FEATURES:
            ref = self._ref[f]
            if not len(ref) or not self._n:
                p = moved = d = pvalue = float("nan")
            else:
                ref_share = np.clip(np.bincount(np.searchsorted(self._edges[f], ref, side="right"),
                                                minlength=len(self._counts[f])) / len(ref), EPS, None)
                cur_share = np.clip(self._counts[f] / self._n, EPS, None)
                p = float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))
                moved = _shift(float(np.std(ref)), float(np.mean(ref)), float(np.sqrt(self._m2[f] / self._n)),
                               self._mean[f])
                d, pvalue = _ks(ref, np.concatenate(self._sample[f]))
            rows.append(_row(f, p, d, pvalue, moved, self._n, self.chosen, reference_uri))
        return pd.DataFrame(rows, columns=COLUMNS)


def batch_status(drift_rows: pd.DataFrame | None) -> str:
    """The worst feature status of a batch (`unchecked` when there is none)."""
    if drift_rows is None:
        return "unchecked"
    statuses = [s for s in drift_rows.get("status", []) if s in STATUS_ORDER]
    return max(statuses, key=STATUS_ORDER.index) if statuses else "unchecked"


def mlflow_metrics(drift_rows: pd.DataFrame) -> dict[str, float]:
    """drift_psi_<feature>, drift_shift_<feature> and drift_ks_<feature> for the predict run (finite values)."""
    out: dict[str, float] = {}
    for r in drift_rows.itertuples():
        for stat in ("psi", "shift", "ks"):
            value = float(getattr(r, stat, np.nan))
            if np.isfinite(value):
                out[f"drift_{stat}_{r.feature}"] = value
    return out

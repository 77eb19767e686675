"""Drift: how far a scored batch's features are from the data the model was trained on.

Per feature, two statistics against the model's training entity (the entity recorded on
the run that logged the model version):

- PSI (population stability index) over 10 quantile bins of the training data
  (edges = training deciles, open-ended outer bins; empty bins get a 1e-4 share):
  PSI < 0.1 ok, 0.1 <= PSI < 0.2 warn, PSI >= 0.2 drift.
- KS: the two-sample Kolmogorov-Smirnov statistic D (scipy.stats.ks_2samp; largest gap between the
  two empirical CDFs). With thousands of rows every p-value is tiny, so the status uses D:
  D < 0.1 ok, 0.1 <= D < 0.2 warn, D >= 0.2 drift.

A feature's status is the worse of the two; a batch's status the worst of its features.
The caller brings the reference (windpipe.models.loading.training_entity); nothing here does I/O.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from windpipe.names import FEATURES

PSI_WARN, PSI_DRIFT = 0.1, 0.2
KS_WARN, KS_DRIFT = 0.1, 0.2
BINS = 10
EPS = 1e-4
KS_SAMPLE = 200_000  # KS on at most this many batch rows (evenly spaced sample; D changes < 0.003)
STATUS_ORDER = ("ok", "warn", "drift")
COLUMNS = ["feature", "psi", "ks", "ks_pvalue", "status", "batch_rows", "training_rows", "reference_uri"]


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


def _level(value: float, warn: float, drift: float) -> str:
    if np.isnan(value):
        return "ok"
    return "drift" if value >= drift else "warn" if value >= warn else "ok"


def feature_drift(batch: pd.DataFrame, reference: pd.DataFrame, reference_uri: str | None = None) -> pd.DataFrame:
    """Per-feature drift of `batch` against `reference`: feature, psi, ks, ks_pvalue, status, ..."""
    from scipy.stats import ks_2samp

    rows = []
    for f in FEATURES:
        cur = batch[f].to_numpy(dtype="float64")
        ref = reference[f].to_numpy(dtype="float64")
        p = psi(ref, cur)
        sample = cur[:: max(1, len(cur) // KS_SAMPLE)] if len(cur) > KS_SAMPLE else cur
        ks = ks_2samp(ref[~np.isnan(ref)], sample[~np.isnan(sample)])
        status = max(_level(p, PSI_WARN, PSI_DRIFT), _level(float(ks.statistic), KS_WARN, KS_DRIFT),
                     key=STATUS_ORDER.index)
        rows.append({"feature": f, "psi": p, "ks": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
                     "status": status, "batch_rows": len(cur), "training_rows": len(ref),
                     "reference_uri": reference_uri})
    return pd.DataFrame(rows, columns=COLUMNS)


def batch_status(drift_rows: pd.DataFrame | None) -> str:
    """The worst feature status of a batch (`unchecked` when there is none)."""
    if drift_rows is None:
        return "unchecked"
    statuses = [s for s in drift_rows.get("status", []) if s in STATUS_ORDER]
    return max(statuses, key=STATUS_ORDER.index) if statuses else "unchecked"


def mlflow_metrics(drift_rows: pd.DataFrame) -> dict[str, float]:
    """drift_psi_<feature> and drift_ks_<feature> for the predict run."""
    out: dict[str, float] = {}
    for r in drift_rows.itertuples():
        out[f"drift_psi_{r.feature}"] = float(r.psi)
        out[f"drift_ks_{r.feature}"] = float(r.ks)
    return out

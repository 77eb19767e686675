"""Drift: how far a scored batch's features are from the data the model was trained on.

Per feature, two statistics against the model's training entity (the run tag
`windpipe.entity.processed` of the run that logged the model version):

- PSI (population stability index) over 10 quantile bins of the training data
  (edges = training deciles, open-ended outer bins; empty bins get a 1e-4 share):
  PSI < 0.1 ok, 0.1 <= PSI < 0.2 warn, PSI >= 0.2 drift.
- KS: the two-sample Kolmogorov-Smirnov statistic D (scipy.stats.ks_2samp; largest gap between the
  two empirical CDFs). With thousands of rows every p-value is tiny, so the status uses D:
  D < 0.1 ok, 0.1 <= D < 0.2 warn, D >= 0.2 drift.

A feature's status is the worse of the two; a batch's status the worst of its features.
The training entity is downloaded once per model version into `<home>/cache/`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from windpipe.entities import FEATURES, PROCESSED, read_entity, resolve_uri
from windpipe.errors import WindpipeError
from windpipe.settings import Settings, get_settings

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


def compare(batch: pd.DataFrame, reference: pd.DataFrame, reference_uri: str | None = None) -> pd.DataFrame:
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


def overall_status(drift_rows: pd.DataFrame) -> str:
    """The worst feature status of a batch (`unchecked` when there is none)."""
    statuses = [s for s in drift_rows.get("status", []) if s in STATUS_ORDER]
    return max(statuses, key=STATUS_ORDER.index) if statuses else "unchecked"


def mlflow_metrics(drift_rows: pd.DataFrame) -> dict[str, float]:
    """drift_psi_<feature> and drift_ks_<feature> for the predict run."""
    out: dict[str, float] = {}
    for r in drift_rows.itertuples():
        out[f"drift_psi_{r.feature}"] = float(r.psi)
        out[f"drift_ks_{r.feature}"] = float(r.ks)
    return out


def training_reference(entity_uri: str, cache_key: str, settings: Settings | None = None) -> pd.DataFrame:
    """The training entity at `entity_uri`, downloaded once into <home>/cache/<cache_key>/."""
    settings = settings or get_settings()
    target = Path(settings.home) / "cache" / cache_key / PROCESSED.filename
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            local = resolve_uri(entity_uri, Path(tmp))
            if local.is_dir():
                local = local / PROCESSED.filename
            if not local.exists():
                raise WindpipeError(f"The training entity {entity_uri} was not found.",
                                    "check the model run's windpipe.entity.processed tag")
            staged = Path(tmp) / "staged.parquet"
            shutil.copyfile(local, staged)
            staged.replace(target)  # atomic: a reader never sees half a file
    return read_entity(PROCESSED, target)


def drift_summary(engine=None, batch_ids: list[int] | None = None, limit: int = 20) -> pd.DataFrame:  # noqa: ANN001
    """Drift of the newest `limit` batches (or of `batch_ids`), for the dashboard and the report.

    Columns: batch, created_at, source, model_version, feature, psi, ks, status
    (newest batch first, features in FEATURES order).
    """
    from sqlalchemy import select

    from windpipe import marts

    engine = engine or marts.get_engine()
    b, d = marts.batches, marts.drift
    stmt = select(b.c.id.label("batch"), b.c.created_at, b.c.source, b.c.model_version,
                  d.c.feature, d.c.psi, d.c.ks, d.c.status).join_from(d, b, d.c.batch_id == b.c.id)
    with engine.connect() as conn:
        if batch_ids is None:
            newest = select(b.c.id).where(b.c.drift_status != "unchecked").order_by(b.c.id.desc()).limit(limit)
            batch_ids = list(conn.execute(newest).scalars())
        stmt = stmt.where(b.c.id.in_(list(batch_ids)))
        df = pd.DataFrame(conn.execute(stmt).mappings().all(),
                          columns=["batch", "created_at", "source", "model_version", "feature", "psi", "ks", "status"])
    order = {f: i for i, f in enumerate(FEATURES)}
    df["_f"] = df["feature"].map(order)
    return df.sort_values(["batch", "_f"], ascending=[False, True]).drop(columns="_f").reset_index(drop=True)

"""Reading the data marts (the dashboard, the report, tests): newest batches, a batch's rows, drift,
the scored rows recorded power can be matched with, and the error history.

Readers trust complete batches only: a pending one (committed, its output file not in place yet) is skipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Engine, func, select

from windpipe.marts.tables import COMPLETE, batches, drift, get_engine, input_mart, output_mart, performance
from windpipe.names import FEATURES, PRED_COLUMNS, QUANTILE_COLUMNS, TIMESTAMP

if TYPE_CHECKING:
    import pandas as pd


def latest_batches(engine: Engine | None = None, limit: int = 20, source: str | None = None) -> pd.DataFrame:
    """The newest complete batches first: id, created_at, model_*, row_count, input_hash, source, status,
    drift_status, output_path (a pending batch, whose output file is not in place yet, is not shown)."""
    import pandas as pd

    engine = engine or get_engine()
    stmt = select(batches).where(batches.c.status == COMPLETE).order_by(batches.c.id.desc()).limit(limit)
    if source:
        stmt = stmt.where(batches.c.source == source)
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(stmt).mappings().all(), columns=[c.name for c in batches.columns])


def batch_rows(engine: Engine | None, batch_id: int) -> pd.DataFrame:
    """One batch's input rows joined to their output rows (row_no, utc_timestamp, features, predictions, their
    quantiles: NaN for a model without them)."""
    import pandas as pd

    engine = engine or get_engine()
    stmt = (select(input_mart.c.row_no, input_mart.c[TIMESTAMP], *[input_mart.c[f] for f in FEATURES],
                   *[output_mart.c[p] for p in (*PRED_COLUMNS, *QUANTILE_COLUMNS)])
            .join_from(input_mart, output_mart, (input_mart.c.batch_id == output_mart.c.batch_id)
                       & (input_mart.c.row_no == output_mart.c.row_no))
            .where(input_mart.c.batch_id == batch_id).order_by(input_mart.c.row_no))
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(stmt).mappings().all(),
                            columns=["row_no", TIMESTAMP, *FEATURES, *PRED_COLUMNS, *QUANTILE_COLUMNS])


def count_rows(engine: Engine | None = None) -> dict[str, int]:
    """Row counts of every mart table (tests, status displays)."""
    engine = engine or get_engine()
    with engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (batches, input_mart, output_mart, drift)}


def drift_summary(engine: Engine | None = None, batch_ids: list[int] | None = None, limit: int = 20) -> pd.DataFrame:
    """Drift of the newest `limit` batches (or of `batch_ids`), for the dashboard and the report.

    Columns: batch, created_at, source, model_version, feature, psi, ks, status
    (newest batch first, features in FEATURES order).
    """
    import pandas as pd

    engine = engine or get_engine()
    b, d = batches, drift
    stmt = select(b.c.id.label("batch"), b.c.created_at, b.c.source, b.c.model_version,
                  d.c.feature, d.c.psi, d.c.ks, d.c.status).join_from(d, b, d.c.batch_id == b.c.id)
    with engine.connect() as conn:
        if batch_ids is None:
            newest = (select(b.c.id).where(b.c.drift_status != "unchecked", b.c.status == COMPLETE)
                      .order_by(b.c.id.desc()).limit(limit))
            batch_ids = list(conn.execute(newest).scalars())
        stmt = stmt.where(b.c.id.in_(list(batch_ids)))
        df = pd.DataFrame(conn.execute(stmt).mappings().all(),
                          columns=["batch", "created_at", "source", "model_version", "feature", "psi", "ks", "status"])
    order = {f: i for i, f in enumerate(FEATURES)}
    df["_f"] = df["feature"].map(order)
    return df.sort_values(["batch", "_f"], ascending=[False, True]).drop(columns="_f").reset_index(drop=True)


def scored_rows(engine: Engine | None, start: object, end: object,
                sources: tuple[str, ...] = ("cli", "project")) -> pd.DataFrame:
    """Every scored row whose utc_timestamp lies in [start, end] (naive UTC), with its batch's model.

    Columns: batch_id, row_no, utc_timestamp, solar_GW_pred, wind_GW_pred, model_name, model_version,
    row_count (the batch's). Only batches from `sources` (the dashboard's re-scores of training data are
    left out: their error would be in-sample).
    """
    import pandas as pd

    engine = engine or get_engine()
    i, o, b = input_mart, output_mart, batches
    stmt = (select(i.c.batch_id, i.c.row_no, i.c[TIMESTAMP], *[o.c[p] for p in PRED_COLUMNS], b.c.model_name,
                   b.c.model_version, b.c.row_count)
            .join_from(i, o, (i.c.batch_id == o.c.batch_id) & (i.c.row_no == o.c.row_no))
            .join(b, b.c.id == i.c.batch_id)
            .where(i.c[TIMESTAMP] >= start, i.c[TIMESTAMP] <= end, b.c.source.in_(list(sources))))
    columns = ["batch_id", "row_no", TIMESTAMP, *PRED_COLUMNS, "model_name", "model_version", "row_count"]
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(stmt).all(), columns=columns)


def performance_history(engine: Engine | None = None, model_name: str | None = None, limit: int = 200
                        ) -> pd.DataFrame:
    """The error of the newest `limit` batches with actuals, oldest hours first (the dashboard's chart)."""
    import pandas as pd

    engine = engine or get_engine()
    stmt = select(performance).order_by(performance.c.batch_id.desc()).limit(limit)
    if model_name:
        stmt = stmt.where(performance.c.model_name == model_name)
    with engine.connect() as conn:
        df = pd.DataFrame(conn.execute(stmt).mappings().all(), columns=[c.name for c in performance.columns])
    return df.sort_values(["first_time", "batch_id"], kind="stable").reset_index(drop=True)

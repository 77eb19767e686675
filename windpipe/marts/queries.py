"""Reading the data marts (the dashboard, the report, tests): newest batches, a batch's rows, drift.

Readers trust complete batches only: a pending one (committed, its output file not in place yet) is skipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Engine, func, select

from windpipe.marts.tables import COMPLETE, batches, drift, get_engine, input_mart, output_mart
from windpipe.names import FEATURES, PRED_COLUMNS, TIMESTAMP

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
    """One batch's input rows joined to their output rows (row_no, utc_timestamp, features, predictions)."""
    import pandas as pd

    engine = engine or get_engine()
    stmt = (select(input_mart.c.row_no, input_mart.c[TIMESTAMP], *[input_mart.c[f] for f in FEATURES],
                   *[output_mart.c[p] for p in PRED_COLUMNS])
            .join_from(input_mart, output_mart, (input_mart.c.batch_id == output_mart.c.batch_id)
                       & (input_mart.c.row_no == output_mart.c.row_no))
            .where(input_mart.c.batch_id == batch_id).order_by(input_mart.c.row_no))
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(stmt).mappings().all(),
                            columns=["row_no", TIMESTAMP, *FEATURES, *PRED_COLUMNS])


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

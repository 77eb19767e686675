"""Batch prediction speed on 1M rows resampled from ../shared/data/germany.csv (else generated data).

Targets (issue 6): scoring alone with LR >= 1M rows/s; `windpipe predict` on 1M rows end to end,
parquet and marts included, >= 100k rows/s.

  python benchmarks/bench_predict.py [ROWS]      (default 1,000,000)

Starts a real platform in a temp folder, registers an LR model trained on the data, and times:
scoring (raw sklearn and the MLflow pyfunc), the marts insert (the helper process big batches take,
the in-process SQLite path, and the generic SQLAlchemy path any other URL takes in-process), drift,
and the `windpipe predict` command as a user runs it (a fresh process: Python + MLflow import, run
creation, model download included).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import GERMANY, REPO, running_platform, table

sys.path.insert(0, str(REPO))


def source_data():
    import pandas as pd

    if GERMANY.exists():
        df = pd.read_csv(GERMANY)
        df["utc_timestamp"] = pd.to_datetime(df["utc_timestamp"], utc=True)
        return df, "germany.csv (35,016 rows)"
    from tests.models import tiny_processed

    return tiny_processed(n=24 * 365), "generated (1 year)"


def resample(df, n: int):
    import numpy as np
    import pandas as pd

    from windpipe.names import FEATURES

    idx = np.random.default_rng(0).integers(0, len(df), n)
    out = df[FEATURES].iloc[idx].reset_index(drop=True)
    out.insert(0, "utc_timestamp", pd.date_range("2017-01-01", periods=n, freq="h", tz="UTC"))
    return out


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    import numpy as np

    from windpipe.marts import dialects, tables, writers
    from windpipe.models.loading import load, predict, resolve, training_entity
    from windpipe.names import FEATURES
    from windpipe.scoring import drift
    from windpipe.scoring.validate import validate_input

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    train, label = source_data()
    batch = resample(train, n)
    rows: list[list[object]] = []

    def add(what: str, seconds: float, note: str = "") -> None:
        rows.append([what, f"{n:,}", round(seconds, 3), f"{n / seconds:,.0f}", note])

    with running_platform() as (settings, env), tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        from tests.models import log_registered_model

        class P:  # what log_registered_model needs of a platform
            tracking_uri = settings.local_tracking_uri

        P.settings = settings
        info = log_registered_model(P, df=train, tmp_dir=Path(tmp))
        ref = resolve(None, settings)
        model = load(ref, settings)
        valid = validate_input(batch)
        raw = model._model_impl.sklearn_model if hasattr(model._model_impl, "sklearn_model") else None
        if raw is not None:
            add("score: sklearn predict (LR)", timed(lambda: raw.predict(valid.features)))
        add("score: windpipe.models.loading.predict (LR)", timed(lambda: predict(model, valid.features)),
            "what `windpipe predict` calls: the estimator's predict after our signature check")
        add("score: mlflow pyfunc predict (LR)", timed(lambda: model.predict(valid.features)),
            "MLflow's schema enforcement included")
        add("validate input", timed(lambda: validate_input(batch)))
        pred = predict(model, valid.features)
        reference = training_entity(ref, settings)
        add("drift: PSI + KS, 4 features", timed(lambda: drift.feature_drift(valid.features, reference), 1),
            f"vs {len(reference):,} training rows")

        def insert(url: str, helper_rows: int) -> float:
            engine = tables.get_engine(url)
            t = time.perf_counter()
            writers.record_batch(engine, valid.features, pred, model_name="wind_solar", model_version=1,
                                 model_uri="models:/wind_solar/1", timestamps=valid.timestamps,
                                 settings=settings.model_copy(update={"marts_helper_rows": helper_rows}))
            return time.perf_counter() - t

        add("marts insert: helper process (what big batches take)", insert(f"sqlite:///{tmp}/helper.db", 1),
            f"one transaction, {dialects.SQLITE_ROWS:,} rows per INSERT, FK lookups off, WAL; process start "
            "and pickling included, nothing to overlap here")
        add("marts insert: in this process, SQLite", insert(f"sqlite:///{tmp}/local.db", 0),
            f"one transaction, {dialects.SQLITE_ROWS:,} rows per INSERT, FKs on, WAL")
        dialects.FAST_PATH = False
        try:
            add("marts insert: in this process, generic SQLAlchemy path (on SQLite)",
                insert(f"sqlite:///{tmp}/generic.db", 0),
                f"executemany of dicts, {dialects.CHUNK:,}-row chunks: what PostgreSQL etc. take without the helper")
        finally:
            dialects.FAST_PATH = True
        tables.dispose_engines()

        inp, out = Path(tmp) / "in.parquet", Path(tmp) / "out.parquet"
        batch.to_parquet(inp, index=False)
        run_env = {**os.environ, **env, "WINDPIPE_MARTS_URL": f"sqlite:///{tmp}/cli.db"}
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "windpipe", "predict", "--input", str(inp), "--output",
                               str(out), "--model-uri", f"models:/wind_solar/{info['version']}"],
                              env=run_env, capture_output=True, text=True, cwd=REPO)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        import mlflow

        run = mlflow.search_runs(experiment_names=[settings.experiment], filter_string="tags.`windpipe.step` = "
                                 "'predict'", order_by=["start_time DESC"], output_format="list")[0]
        m = run.data.metrics
        add("`windpipe predict`: in-run work (read .. write)", m["predict_seconds"],
            " / ".join(f"{k.removeprefix('seconds_')} {v:.2f}" for k, v in m.items() if k.startswith("seconds_"))
            + " s (summed over the streamed parts)")
        add("`windpipe predict`: whole command (new process)", wall, "Python + MLflow import, run, model download")
        assert len(FEATURES) == 4 and np.isfinite(pred).all()

    print(f"data: {label}, resampled to {n:,} rows; {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f} at the end\n")
    print(table(["what", "rows", "seconds", "rows/s", "note"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

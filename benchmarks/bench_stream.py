"""Streaming `windpipe predict`: rows/s and peak memory of 1M against 10M rows, PostgreSQL and SQLite marts.

On one team platform (PostgreSQL + S3 + MLflow) and the production alias of the lr step's model (splines
and trend: the model that once needed 30 GiB for 4M rows; trained by `windpipe run lr` on
../shared/data/germany.csv, else generated data), `windpipe predict` as a user runs it (a new process:
imports, run, drift, output file, marts in one transaction) on parquet files of 1M and 10M rows (row
groups of 1M rows), into the team stack's PostgreSQL (binary COPY) and into SQLite marts, alternately.
Peak RSS is the process tree's largest (os.wait4: the command or its marts helper, whichever is larger).

Targets (issue 25): 10M rows at >= 200k rows/s into PostgreSQL and >= 150k into SQLite; peak RSS of 10M
rows <= 1.5 GB and within 1.2x of the 1M-row peak.

    python benchmarks/bench_stream.py [--rounds 1] [--rows 10000000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import REPO, table  # noqa: E402

TARGET_RATE = {"postgresql": 200_000, "sqlite": 150_000}
RSS_LIMIT_GB = 1.5
RSS_RATIO = 1.2


def predict(env: dict[str, str], inp: Path, out: Path) -> tuple[float, float]:
    """Seconds and peak RSS (GB) of one `windpipe predict` that must succeed."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "windpipe", "predict", "--input", str(inp), "--output", str(out)],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read() if proc.stderr else b""
    _pid, status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"windpipe predict failed:\n{err.decode()[-3000:]}")
    return took, usage.ru_maxrss / 1024 / 1024  # ru_maxrss is in KiB on Linux


def write_input(train, n: int, path: Path) -> None:
    """`n` rows resampled from `train`, written in row groups of 1M rows without holding them all."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    from bench_predict import resample

    chunk = 1_000_000
    writer = None
    try:
        for start in range(0, n, chunk):
            part = resample(train, min(chunk, n - start))
            # one row a minute: 10M distinct hours would pass the year 2262, pandas' last (a time may not repeat)
            part["utc_timestamp"] = pd.date_range(pd.Timestamp("2000-01-01", tz="UTC") + pd.Timedelta(minutes=start),
                                                  periods=len(part), freq="min")
            t = pa.Table.from_pandas(part, preserve_index=False)
            writer = writer or pq.ParquetWriter(path, t.schema)
            writer.write_table(t)
    finally:
        if writer is not None:
            writer.close()


def lr_model(train, home: Path, env: dict[str, str], settings) -> str:
    """The lr step's model (the spline features and trend), trained by `windpipe run lr` on `train`, registered."""
    import mlflow
    from common import GERMANY

    from windpipe import names
    from windpipe.data.process import load_processed
    from windpipe.entities.schema import PROCESSED
    from windpipe.entities.store import write_entity

    processed = load_processed(GERMANY) if GERMANY.exists() else train
    entity = write_entity(PROCESSED, processed, home / "processed.parquet")
    subprocess.run([sys.executable, "-m", "windpipe", "run", "lr", "-P", f"data={entity}", "-P", "backtest_folds=0"],
                   env=env, check=True, capture_output=True, cwd=REPO)
    run = mlflow.search_runs(experiment_names=[settings.experiment], output_format="list",
                             filter_string="tags.`windpipe.step` = 'lr'", order_by=["start_time DESC"])[0]
    return mlflow.register_model(run.data.tags[names.MODEL_URI_TAG], settings.model_name).version


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--rows", type=int, default=10_000_000)
    args = ap.parse_args(argv)
    import mlflow
    from bench_predict import source_data
    from bench_team import team_env

    from windpipe import names
    from windpipe.marts import queries, tables

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed benchmark still stops its platform
    home = Path(tempfile.mkdtemp(prefix="windpipe-bench-stream-"))
    env = team_env(home)
    sizes = (1_000_000, args.rows)
    kinds = ("postgresql", "sqlite")
    secs: dict[tuple[str, int], list[float]] = {(k, n): [] for k in kinds for n in sizes}
    rss: dict[tuple[str, int], list[float]] = {(k, n): [] for k in kinds for n in sizes}
    try:
        subprocess.run([sys.executable, "-m", "windpipe", "up"], env=env, check=True, capture_output=True, cwd=REPO)
        from windpipe.settings import Settings

        settings = Settings(home=home, stack="team", mlflow_port=int(env["WINDPIPE_MLFLOW_PORT"]),
                            team={"pg_port": int(env["WINDPIPE_PG_PORT"]), "s3_port": int(env["WINDPIPE_S3_PORT"])})

        mlflow.set_tracking_uri(settings.local_tracking_uri)
        train, label = source_data()
        train = train.drop_duplicates(subset=["utc_timestamp"])
        version = lr_model(train, home, env, settings)
        mlflow.MlflowClient().set_registered_model_alias(settings.model_name, names.PRODUCTION, version)
        inputs = {n: home / f"in-{n}.parquet" for n in sizes}
        for n, path in inputs.items():
            write_input(train, n, path)
        urls = {"postgresql": settings.effective_marts_url, "sqlite": f"sqlite:///{home / 'bench-marts.db'}"}
        print(f"data: {label}, resampled; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the "
              "start", flush=True)
        for i in range(args.rounds):
            for n in sizes:
                for kind in (kinds if i % 2 == 0 else kinds[::-1]):
                    out = home / f"out-{kind}-{n}.parquet"
                    marts = {} if kind == "postgresql" else {"WINDPIPE_MARTS_URL": urls[kind]}
                    took, peak = predict({**env, **marts}, inputs[n], out)
                    secs[kind, n].append(took)
                    rss[kind, n].append(peak)
                    out.unlink()
                    print(f"  round {i + 1}: {n:,} rows into {kind}: {took:.1f} s, peak RSS {peak:.2f} GB", flush=True)
        counts = {kind: queries.count_rows(tables.get_engine(url))["output_mart"] for kind, url in urls.items()}
        tables.dispose_engines()
    finally:
        subprocess.run([sys.executable, "-m", "windpipe", "down"], env=env, capture_output=True, cwd=REPO)
        shutil.rmtree(home, ignore_errors=True)
    assert counts == {k: sum(sizes) * args.rounds for k in kinds}, counts
    body = []
    verdicts = []
    for kind in kinds:
        for n in sizes:
            s, m = statistics.median(secs[kind, n]), max(rss[kind, n])
            body.append([f"`windpipe predict`, {n:,} rows, {kind}", round(s, 1),
                         " ".join(f"{x:.1f}" for x in secs[kind, n]), f"{n / s:,.0f}", round(m, 2)])
        rate = args.rows / statistics.median(secs[kind, args.rows])
        peak = max(rss[kind, args.rows])
        ratio = peak / max(rss[kind, sizes[0]])
        verdicts.append(f"{kind}: {rate:,.0f} rows/s (target {TARGET_RATE[kind]:,}: "
                        f"{'met' if rate >= TARGET_RATE[kind] else 'NOT met'}); peak RSS {peak:.2f} "
                        f"GB ({'met' if peak <= RSS_LIMIT_GB else 'NOT met'}, <= {RSS_LIMIT_GB}), "
                        f"{ratio:.2f}x the 1M-row peak ({'met' if ratio <= RSS_RATIO else 'NOT met'}, <= {RSS_RATIO})")
    print(f"\n## Streaming `windpipe predict` (new process each; medians of {args.rounds}; load average "
          f"{os.getloadavg()[0]:.1f} at the end)\n")
    print(table(["what", "median seconds", "runs (s)", "rows/s", "peak RSS (GB)"], body))
    print("\n" + "\n".join(verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The team stack (PostgreSQL + rclone S3 + MLflow) against the local stack.

`python benchmarks/bench_team.py [repeat]`: `windpipe up` to healthy. Each platform gets its own
temporary state folder and free ports. The first team `up` includes initdb, the generated secrets
and MLflow's table creation; then local and team `up` (existing state) alternate, each followed by
`down`, so both see the same machine load.

`python benchmarks/bench_team.py predict [repeat] [rows]`: `windpipe predict` on 1M rows (resampled
from ../shared/data/germany.csv, else generated) into the team stack's PostgreSQL marts (binary
COPY) and into SQLite marts, alternately, on one team platform and one registered LR model (only
WINDPIPE_MARTS_URL differs). Target (issue 14): >= 250k rows/s end to end into PostgreSQL.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, platform_env, table

sys.path.insert(0, str(REPO))


def team_env(home: Path) -> dict[str, str]:
    from windpipe.stack.procs import free_port

    return {**platform_env(home), "WINDPIPE_STACK": "team", "WINDPIPE_PG_PORT": str(free_port()),
            "WINDPIPE_S3_PORT": str(free_port()), "WINDPIPE_STARTUP_TIMEOUT": "300"}


def timed(env: dict[str, str], *args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "windpipe", *args], env=env, check=True, capture_output=True, cwd=REPO)
    return time.perf_counter() - start


def main(repeat: int = 3) -> None:
    # under /tmp (mkdtemp): as root, PostgreSQL's user must pass through every parent folder
    homes = [Path(tempfile.mkdtemp(prefix=f"windpipe-bench-{name}-")) for name in ("team", "local")]
    team, local = team_env(homes[0]), platform_env(homes[1])
    times: dict[str, list[float]] = {"local up": [], "team up": [], "local down": [], "team down": []}
    try:
        first = timed(team, "up")
        times["team down"].append(timed(team, "down"))
        for _ in range(repeat):
            for name, env in (("local", local), ("team", team)):
                times[f"{name} up"].append(timed(env, "up"))
                times[f"{name} down"].append(timed(env, "down"))
    finally:
        for env in (team, local):
            subprocess.run([sys.executable, "-m", "windpipe", "down"], env=env, capture_output=True, cwd=REPO)
        for home in homes:
            shutil.rmtree(home, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    print("## windpipe up to healthy: team stack against local stack\n")
    print(table(["what", "seconds", "how", "ratio team/local"], [
        ["team up, new state folder (initdb, secrets, MLflow tables)", first, "1 run", "-"],
        ["local up, existing state", med["local up"], f"median of {repeat}, alternating", "-"],
        ["team up, existing state", med["team up"], f"median of {repeat}, alternating",
         f"{med['team up'] / med['local up']:.2f}"],
        ["local down", med["local down"], f"median of {repeat}", "-"],
        ["team down", med["team down"], f"median of {len(times['team down'])}",
         f"{med['team down'] / med['local down']:.2f}"],
    ]))


def predict(repeat: int = 3, rows: int = 1_000_000) -> None:
    import os
    import signal

    import mlflow
    import numpy as np
    import pandas as pd
    from bench_predict import resample, source_data

    from tests.models import log_registered_model
    from windpipe.marts import queries, tables

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed benchmark still stops its platform
    home = Path(tempfile.mkdtemp(prefix="windpipe-bench-predict-"))
    env = {**team_env(home), "WINDPIPE_STACK": "team"}
    secs: dict[str, list[float]] = {"postgresql": [], "sqlite": []}
    insert: dict[str, list[float]] = {"postgresql": [], "sqlite": []}
    try:
        subprocess.run([sys.executable, "-m", "windpipe", "up"], env=env, check=True, capture_output=True, cwd=REPO)
        from windpipe.settings import Settings

        settings = Settings(home=home, stack="team", pg_port=int(env["WINDPIPE_PG_PORT"]),
                            mlflow_port=int(env["WINDPIPE_MLFLOW_PORT"]), s3_port=int(env["WINDPIPE_S3_PORT"]))

        class P:  # what log_registered_model needs of a platform
            tracking_uri = settings.local_tracking_uri

        P.settings = settings
        mlflow.set_tracking_uri(settings.local_tracking_uri)
        train, label = source_data()
        train = train.drop_duplicates(subset=["utc_timestamp"])  # (germany.csv repeats the DST hours)
        info = log_registered_model(P, df=train, tmp_dir=home)
        inp = home / "in.parquet"
        resample(train, rows).to_parquet(inp, index=False)
        sqlite_url = f"sqlite:///{home / 'bench-marts.db'}"
        urls = {"postgresql": settings.effective_marts_url, "sqlite": sqlite_url}
        phases: dict[str, str] = {}
        # the marts insert alone, as big batches take it (the helper process), nothing to overlap here
        from windpipe.marts import writers
        from windpipe.scoring.validate import validate_input

        valid = validate_input(pd.read_parquet(inp))
        preds = np.zeros((rows, 2))
        for _ in range(repeat):
            for kind, url in urls.items():
                start = time.perf_counter()
                writers.record_batch(tables.get_engine(url), valid.features, preds, model_name="bench", model_version=1,
                                     model_uri="models:/bench/1", timestamps=valid.timestamps, settings=settings)
                insert[kind].append(time.perf_counter() - start)
        for i in range(repeat):
            for kind, url in urls.items():
                out = home / f"out-{kind}-{i}.parquet"
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "windpipe", "predict", "--input", str(inp), "--output", str(out),
                                "--model-uri", info["model_uri"]], check=True,
                               env={**env, **({} if kind == "postgresql" else {"WINDPIPE_MARTS_URL": url})},
                               capture_output=True, cwd=REPO)
                secs[kind].append(time.perf_counter() - start)
                out.unlink()
                run = mlflow.search_runs(experiment_names=[settings.experiment], output_format="list",
                                         filter_string="tags.`windpipe.step` = 'predict'",
                                         order_by=["start_time DESC"])[0]
                m = run.data.metrics
                phases[kind] = " / ".join(f"{k} {m['seconds_' + k]:.2f}" for k in (
                    "read", "resolve", "validate", "marts_start", "load_model", "score", "drift", "write", "commit")
                    if "seconds_" + k in m)
        counts = {kind: queries.count_rows(tables.get_engine(url))["output_mart"] for kind, url in urls.items()}
        tables.dispose_engines()
    finally:
        subprocess.run([sys.executable, "-m", "windpipe", "down"], env=env, capture_output=True, cwd=REPO)
        shutil.rmtree(home, ignore_errors=True)
    assert counts == {"postgresql": 2 * rows * repeat, "sqlite": 2 * rows * repeat}, counts
    med = {k: statistics.median(v) for k, v in secs.items()}
    ins = {k: statistics.median(v) for k, v in insert.items()}
    print(f"## `windpipe predict` on {rows:,} rows ({label}): PostgreSQL marts against SQLite marts\n")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; every run: a new process "
          "(imports, MLflow run, model download, parquet in and out, drift, the marts in one transaction)\n")
    print(table(["what", "median seconds", "runs (s)", "rows/s", "ratio PostgreSQL/SQLite (time)"], [
        ["`windpipe predict`, PostgreSQL marts (team stack, binary COPY)", med["postgresql"],
         " ".join(f"{x:.2f}" for x in secs["postgresql"]), f"{rows / med['postgresql']:,.0f}",
         f"{med['postgresql'] / med['sqlite']:.2f}"],
        ["`windpipe predict`, SQLite marts", med["sqlite"], " ".join(f"{x:.2f}" for x in secs["sqlite"]),
         f"{rows / med['sqlite']:,.0f}", "-"],
        ["marts insert alone (helper process), PostgreSQL", ins["postgresql"],
         " ".join(f"{x:.2f}" for x in insert["postgresql"]), f"{rows / ins['postgresql']:,.0f}",
         f"{ins['postgresql'] / ins['sqlite']:.2f}"],
        ["marts insert alone (helper process), SQLite", ins["sqlite"], " ".join(f"{x:.2f}" for x in insert["sqlite"]),
         f"{rows / ins['sqlite']:,.0f}", "-"],
    ]))
    print("\nphases of the last `windpipe predict` run (s; `write` waits for the marts helper):")
    for kind, line in phases.items():
        print(f"- {kind}: {line}")

if __name__ == "__main__":
    if sys.argv[1:2] == ["predict"]:
        predict(*(int(a) for a in sys.argv[2:4]))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)

"""The team stack (PostgreSQL + rclone S3 + MLflow) against the local stack.

`python benchmarks/bench_team.py [repeat]`: `windpipe up` to healthy. Each platform gets its own
temporary state folder and free ports. The first team `up` includes initdb, the generated secrets
and MLflow's table creation; then local and team `up` (existing state) alternate, each followed by
`down`, so both see the same machine load.

`python benchmarks/bench_team.py predict [repeat] [rows]`: `windpipe predict` on 1k, 1M and 2M rows
(resampled from ../shared/data/germany.csv, else generated) into the team stack's PostgreSQL marts
(binary COPY) and into SQLite marts, alternately, on one team platform and the production alias of one
registered LR model (only WINDPIPE_MARTS_URL differs). 1k rows gives the fixed cost of a process, the
2M batch against the 1M batch the rate each further row adds; the bare imports of the libraries are
timed beside them. Target (issue 14): >= 250k rows/s end to end into PostgreSQL.
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
    from windpipe import names
    from windpipe.marts import queries, tables

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed benchmark still stops its platform
    home = Path(tempfile.mkdtemp(prefix="windpipe-bench-predict-"))
    env = {**team_env(home), "WINDPIPE_STACK": "team"}
    # 1k rows: the fixed cost of a process; `rows` and twice as many: the rate a batch adds
    sizes = (1_000, rows, 2 * rows)
    secs: dict[tuple[str, int], list[float]] = {(k, n): [] for k in ("postgresql", "sqlite") for n in sizes}
    insert: dict[str, list[float]] = {"postgresql": [], "sqlite": []}
    imports: list[float] = []
    try:
        subprocess.run([sys.executable, "-m", "windpipe", "up"], env=env, check=True, capture_output=True, cwd=REPO)
        from windpipe.settings import Settings

        settings = Settings(home=home, stack="team", mlflow_port=int(env["WINDPIPE_MLFLOW_PORT"]),
                            team={"pg_port": int(env["WINDPIPE_PG_PORT"]), "s3_port": int(env["WINDPIPE_S3_PORT"])})

        class P:  # what log_registered_model needs of a platform
            tracking_uri = settings.local_tracking_uri

        P.settings = settings
        mlflow.set_tracking_uri(settings.local_tracking_uri)
        train, label = source_data()
        train = train.drop_duplicates(subset=["utc_timestamp"])  # (germany.csv repeats the DST hours)
        info = log_registered_model(P, df=train, tmp_dir=home)
        # as users predict: the production alias (`windpipe promote`), the version's files cached after the first run
        mlflow.MlflowClient().set_registered_model_alias(settings.model_name, names.PRODUCTION, info["version"])
        inputs = {n: home / f"in-{n}.parquet" for n in sizes}
        for n, path in inputs.items():
            resample(train, n).to_parquet(path, index=False)
        sqlite_url = f"sqlite:///{home / 'bench-marts.db'}"
        urls = {"postgresql": settings.effective_marts_url, "sqlite": sqlite_url}
        phases: dict[str, str] = {}
        # the marts insert alone, as big batches take it (the helper process), nothing to overlap here
        from windpipe.marts import writers
        from windpipe.scoring.validate import validate_input

        valid = validate_input(pd.read_parquet(inputs[rows]))
        preds = np.zeros((rows, 2))
        for _ in range(repeat):
            for kind, url in urls.items():
                start = time.perf_counter()
                writers.record_batch(tables.get_engine(url), valid.features, preds, model_name="bench", model_version=1,
                                     model_uri="models:/bench/1", timestamps=valid.timestamps, settings=settings)
                insert[kind].append(time.perf_counter() - start)
        # the floor of any fresh process that scores with MLflow into a database: importing the libraries
        libs = "import pandas, pyarrow.parquet, mlflow, sklearn.linear_model, sqlalchemy, psycopg"
        for i in range(repeat):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", libs], check=True, cwd=REPO)
            imports.append(time.perf_counter() - start)
            for n in sizes:
                for kind, url in urls.items():
                    out = home / f"out-{kind}-{n}-{i}.parquet"
                    start = time.perf_counter()
                    subprocess.run([sys.executable, "-m", "windpipe", "predict", "--input", str(inputs[n]),
                                    "--output", str(out)], check=True,
                                   env={**env, **({} if kind == "postgresql" else {"WINDPIPE_MARTS_URL": url})},
                                   capture_output=True, cwd=REPO)
                    secs[kind, n].append(time.perf_counter() - start)
                    out.unlink()
                    if n != rows:
                        continue
                    run = mlflow.search_runs(experiment_names=[settings.experiment], output_format="list",
                                             filter_string="tags.`windpipe.step` = 'predict'",
                                             order_by=["start_time DESC"])[0]
                    m = run.data.metrics
                    phases[kind] = " / ".join(f"{k.removeprefix('seconds_')} {v:.2f}" for k, v in m.items()
                                              if k.startswith("seconds_"))
                    phases[kind] += f" (the run: {(run.info.end_time - run.info.start_time) / 1000:.2f})"
        counts = {kind: queries.count_rows(tables.get_engine(url))["output_mart"] for kind, url in urls.items()}
        tables.dispose_engines()
    finally:
        subprocess.run([sys.executable, "-m", "windpipe", "down"], env=env, capture_output=True, cwd=REPO)
        shutil.rmtree(home, ignore_errors=True)
    expected = rows * repeat + sum(sizes) * repeat  # record_batch's rows, then every predict
    assert counts == {"postgresql": expected, "sqlite": expected}, counts
    med = {k: statistics.median(v) for k, v in secs.items()}
    ins = {k: statistics.median(v) for k, v in insert.items()}
    lib = statistics.median(imports)
    print(f"## `windpipe predict` into PostgreSQL marts against SQLite marts ({label}, resampled)\n")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; every run: a new process "
          "(imports, MLflow run, the production alias resolved, parquet in and out, drift, the marts in one "
          f"transaction); medians of {repeat}, PostgreSQL and SQLite alternating\n")
    body = []
    for n in sizes:
        pg, lite = med["postgresql", n], med["sqlite", n]
        body.append([f"`windpipe predict`, {n:,} rows, PostgreSQL marts (binary COPY)", pg,
                     " ".join(f"{x:.2f}" for x in secs["postgresql", n]), f"{n / pg:,.0f}", f"{pg / lite:.2f}"])
        body.append([f"`windpipe predict`, {n:,} rows, SQLite marts", lite,
                     " ".join(f"{x:.2f}" for x in secs["sqlite", n]), f"{n / lite:,.0f}", "-"])
    for kind in ("postgresql", "sqlite"):  # what each further row costs: the 2x batch against the 1x batch
        extra = med[kind, 2 * rows] - med[kind, rows]
        body.append([f"each further {rows:,} rows ({kind}: {2 * rows:,} minus {rows:,})", extra, "-",
                     f"{rows / extra:,.0f}", "-"])
    body += [
        ["marts insert alone (helper process), PostgreSQL", ins["postgresql"],
         " ".join(f"{x:.2f}" for x in insert["postgresql"]), f"{rows / ins['postgresql']:,.0f}",
         f"{ins['postgresql'] / ins['sqlite']:.2f}"],
        ["marts insert alone (helper process), SQLite", ins["sqlite"], " ".join(f"{x:.2f}" for x in insert["sqlite"]),
         f"{rows / ins['sqlite']:,.0f}", "-"],
        [f"`python -c '{libs}'` (no rows)", lib, " ".join(f"{x:.2f}" for x in imports), "-", "-"],
    ]
    print(table(["what", "median seconds", "runs (s)", "rows/s", "ratio PostgreSQL/SQLite (time)"], body))
    print(f"\nphases of the last {rows:,}-row `windpipe predict` run (s; `write` waits for the marts helper):")
    for kind, line in phases.items():
        print(f"- {kind}: {line}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["predict"]:
        predict(*(int(a) for a in sys.argv[2:4]))
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)

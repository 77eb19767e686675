"""Airflow past one machine: the prediction DAG on 8 inbox files with one edge worker against two, and Airflow's
overhead per task with the EdgeExecutor against the LocalExecutor.

A team stack (PostgreSQL, S3, MLflow with basic auth) and Airflow in temporary folders on free ports, a small
registered production model. Workers are `windpipe airflow worker` processes on this machine (each its own name and
state folder; the inbox a folder both read, as a shared volume would be), 2 tasks at a time each.

- Scale-out: 8 new files per DAG run (distinct content: nothing is reused), one worker and two, alternately; the
  DAG run's wall time (start to end, as Airflow records it).
- Overhead per task: the prediction DAG on an empty inbox (open -> inbox -> close run, predict is skipped): the
  DAG run's wall time minus the time the tasks themselves ran, per task that ran; the same with
  `windpipe airflow up` (LocalExecutor). What is left is Airflow's: scheduling, handing the task to an executor
  (an edge worker polls every few seconds), starting the task's process, reporting back.

    python benchmarks/bench_edge.py [--rounds 2] [--rows 2000]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import quote

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import REPO, table  # noqa: E402

AIRFLOW_VENV = Path(os.environ.get("WINDPIPE_AIRFLOW_VENV", REPO / ".venv-airflow"))
PREDICTION = "windpipe_prediction"
FILES = 8


def windpipe(env: dict[str, str], *args: str, timeout: float = 900) -> str:
    proc = subprocess.run([sys.executable, "-m", "windpipe", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"windpipe {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def _time(value: str) -> float:
    return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def dag_run(settings: object, conf: dict) -> dict:
    """Trigger the prediction DAG, wait; its wall time and its task instances' run times."""
    from windpipe.stack import airflow_server

    token = airflow_server.token(settings)
    airflow_server.wait_for_dag(settings, PREDICTION, token)
    run_id = airflow_server.trigger(settings, PREDICTION, conf, token)
    state = airflow_server.wait_for_run(settings, PREDICTION, run_id, token, timeout=3600)
    base = f"{settings.airflow_url}/api/v2/dags/{PREDICTION}/dagRuns/{quote(run_id, safe='')}"

    def get(url: str) -> dict:
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    run, tis = get(base), get(f"{base}/taskInstances")["task_instances"]
    ran = [t for t in tis if t.get("start_date") and t.get("end_date") and t["state"] == "success"]
    return {"state": state, "wall": _time(run["end_date"]) - _time(run["start_date"]),
            "task_seconds": sum(_time(t["end_date"]) - _time(t["start_date"]) for t in ran), "tasks": len(ran),
            "hosts": sorted({t["hostname"] for t in ran if t.get("hostname")})}


def fill(box: Path, frame: object, round_: int) -> None:
    for i in range(FILES):  # distinct content per file and round: every file is scored
        frame.assign(windspeed=frame["windspeed"] + 0.001 * (round_ * FILES + i + 1)).to_parquet(
            box / f"batch_{round_}_{i}.parquet", index=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rows", type=int, default=2000, help="rows per inbox file")
    args = ap.parse_args(argv)
    if not (AIRFLOW_VENV / "bin" / "airflow").exists():
        print(f"skipped: Airflow's environment {AIRFLOW_VENV} is missing (make airflow)")
        return 0
    import signal

    from tests.conftest import Platform, settings_from, team_env
    from tests.models import log_registered_model, tiny_processed
    from windpipe.names import FEATURES, TIMESTAMP
    from windpipe.stack import services, team
    from windpipe.stack.airflow_server import worker_secret_file
    from windpipe.stack.procs import free_port

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed benchmark still stops what it started
    root = Path(tempfile.mkdtemp(prefix="windpipe-bench-edge-"))  # /tmp: PostgreSQL's user passes through
    root.chmod(0o755)
    env = team_env(root / "central")
    env.update({"WINDPIPE_AIRFLOW_PORT": str(free_port()), "WINDPIPE_AIRFLOW_VENV": str(AIRFLOW_VENV)})
    settings = settings_from(env)
    box = root / "inbox"
    box.mkdir()
    workers: list[dict[str, str]] = []
    started_airflow = False
    try:
        services.up(settings, say=lambda _m: None)
        user, password = team.admin_credentials(settings)
        env.update({"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password})
        os.environ.update({k: env[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")})
        log_registered_model(Platform(settings, env), tmp_dir=root)
        frame = tiny_processed(args.rows)[[TIMESTAMP, *FEATURES]]

        def airflow_up(executor: str) -> None:
            nonlocal started_airflow
            windpipe(env, "airflow", "down")
            windpipe(env, "airflow", "up", "--executor", executor)
            started_airflow = True

        airflow_up("edge")
        secret = worker_secret_file(settings).read_text()
        for name in ("bench-w1", "bench-w2"):
            wenv = {**env, "WINDPIPE_HOME": str(root / name), "WINDPIPE_AIRFLOW_WORKER_SECRET": secret,
                    "WINDPIPE_AIRFLOW_API_URL": settings.airflow_url,
                    # (this machine: the central marts' password file is at hand; elsewhere PGPASSWORD)
                    "WINDPIPE_MARTS_URL": settings.effective_marts_url}
            for k in ("WINDPIPE_STACK", "WINDPIPE_AUTH"):  # a worker's settings: URLs and logins
                wenv.pop(k, None)
            workers.append(wenv)

        def use_workers(n: int) -> None:
            for i, wenv in enumerate(workers):
                running = (Path(wenv["WINDPIPE_HOME"]) / "run" / "airflow-worker.pid").exists()
                if i < n and not running:
                    windpipe(wenv, "airflow", "worker", "--name", f"bench-w{i + 1}", "--concurrency", "2")
                elif i >= n and running:
                    windpipe(wenv, "airflow", "down")

        conf = {"inbox": str(box)}
        use_workers(1)
        dag_run(settings, conf)  # warm-up: the first DAG run parses the DAG on the worker (not timed)
        scale: dict[int, list[dict]] = {1: [], 2: []}
        overhead: dict[str, list[dict]] = {"edge": [], "local": []}
        for r in range(args.rounds):
            for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                use_workers(n)
                fill(box, frame, r * 2 + n)
                result = dag_run(settings, conf)
                if result["state"] != "success" or result["tasks"] < FILES:
                    raise SystemExit(f"the prediction DAG run did not score every file: {result}")
                scale[n].append(result)
                print(f"  round {r + 1}: {n} worker(s) {result['wall']:.1f} s ({result['hosts']})", flush=True)
            overhead["edge"].append(dag_run(settings, conf))  # the inbox is empty now
        use_workers(0)
        airflow_up("local")
        dag_run(settings, conf)
        for _ in range(args.rounds):
            overhead["local"].append(dag_run(settings, conf))

        def med(values: list[float]) -> float:
            return round(statistics.median(values), 1)

        one, two = med([x["wall"] for x in scale[1]]), med([x["wall"] for x in scale[2]])
        print(f"\n## The prediction DAG on {FILES} inbox files ({args.rows} rows each), edge workers of 2 tasks at a "
              f"time, medians of {args.rounds}; {os.cpu_count()} cores\n")
        print(table(["workers", "DAG run s", "speed-up"], [
            ["1", one, "1.00x"], ["2", two, f"{one / two:.2f}x"]]))
        rows = []
        for executor, runs in overhead.items():
            wall = med([x["wall"] for x in runs])
            work = med([x["task_seconds"] for x in runs])
            tasks = runs[0]["tasks"]
            rows.append([executor, wall, work, tasks, round((wall - work) / tasks, 2)])
        print("\n## Airflow's overhead per task: the prediction DAG on an empty inbox (open, inbox, close)\n")
        print(table(["executor", "DAG run s", "tasks ran s", "tasks", "overhead per task s"], rows))
    finally:
        for wenv in workers:
            subprocess.run([sys.executable, "-m", "windpipe", "airflow", "down"], env=wenv, capture_output=True,
                           timeout=300, cwd=REPO)
        if started_airflow:
            subprocess.run([sys.executable, "-m", "windpipe", "airflow", "down"], env=env, capture_output=True,
                           timeout=300, cwd=REPO)
        services.down(settings, say=lambda _m: None)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    start = time.perf_counter()
    code = main()
    print(f"\n({time.perf_counter() - start:.0f} s)")
    sys.exit(code)

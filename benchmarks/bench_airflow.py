"""The training DAG under Airflow's `dag.test()` against the local driver on the same work: Airflow's overhead per task.

Both run every step (`--force`, quick presets, one step at a time: `dag.test()` runs tasks one after
another, so the driver runs `--jobs 1`), alternately, on one platform. Each Airflow turn is one
process of Airflow's own environment (`make airflow`) with two DAG runs: the first builds Airflow's
in-process execution API, the second is timed. Overhead per task = (DAG run - local run) / tasks.

    python benchmarks/bench_airflow.py [--rounds 2] [--years 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import REPO, running_platform, table  # noqa: E402

AIRFLOW_VENV = Path(os.environ.get("WINDPIPE_AIRFLOW_VENV", REPO / ".venv-airflow"))
HELPER = REPO / "tests" / "airflow_env.py"


def dag_runs(env: dict[str, str], confs: list[dict]) -> list[dict]:
    proc = subprocess.run([str(AIRFLOW_VENV / "bin" / "python"), str(HELPER), "test",
                           str(REPO / "orchestration" / "airflow" / "dags"), "windpipe_training",
                           *(json.dumps(c) for c in confs)], env=env, capture_output=True, text=True, timeout=7200)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("@@RESULT@@")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"dag.test failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line.removeprefix("@@RESULT@@"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--years", type=int, default=1)
    args = ap.parse_args(argv)
    if not (AIRFLOW_VENV / "bin" / "python").exists():
        print(f"skipped: Airflow's environment {AIRFLOW_VENV} is missing (make airflow)")
        return 0
    from windpipe.data.synth import write_raw
    from windpipe.pipeline.dags import dag_layout
    from windpipe.settings import clear_settings_cache
    from windpipe.stack.airflow_server import airflow_env

    with tempfile.TemporaryDirectory(prefix="windpipe-bench-airflow-") as tmp, \
            running_platform() as (settings, env):
        tmp = Path(tmp)
        raw = tmp / "raw"
        write_raw(raw, seed=42, years=args.years)
        code = tmp / "code"  # the code version keys the cache: run from a copy nobody edits meanwhile
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(REPO / "windpipe", code / "windpipe", ignore=ignore)
        shutil.copytree(REPO / "projects", code / "projects", symlinks=True, ignore=ignore)
        run_env = {**env, "PYTHONPATH": str(code), "WINDPIPE_PROJECTS": str(code / "projects")}
        clear_settings_cache()
        af_env = {**airflow_env(settings, run_env), "AIRFLOW_HOME": str(tmp / "airflow")}
        subprocess.run([str(AIRFLOW_VENV / "bin" / "airflow"), "db", "migrate"], env=af_env, check=True,
                       capture_output=True, timeout=900)
        conf = {"raw": str(raw), "quick": True}
        dag_runs(af_env, [conf])  # cold: the steps' first runs (not timed)
        local: list[float] = []
        dag: list[dict] = []
        first: list[dict] = []
        for i in range(args.rounds):
            for who in (("local", "airflow") if i % 2 == 0 else ("airflow", "local")):
                if who == "local":
                    start = time.perf_counter()
                    subprocess.run([sys.executable, "-m", "windpipe", "pipeline", "run", "--raw", str(raw), "--quick",
                                    "--force", "--jobs", "1"], env=run_env, cwd=code, check=True, capture_output=True,
                                   timeout=3600)
                    local.append(time.perf_counter() - start)
                else:
                    one, two = dag_runs(af_env, [{**conf, "force": True}] * 2)
                    first.append(one)
                    dag.append(two)
                print(f"  round {i + 1}: {who} {local[-1] if who == 'local' else dag[-1]['seconds']:.1f} s",
                      flush=True)
        tasks = len(dag_layout("training", code / "projects"))
        steps = tasks - 2
        dag_s = statistics.median(d["seconds"] for d in dag)
        local_s = statistics.median(local)
        print(f"\n## Training DAG under dag.test() against `windpipe pipeline run --jobs 1` ({args.years} generated "
              f"year(s), quick presets, every step run; medians of {args.rounds})\n")
        print(table(["run", "seconds", "tasks", "overhead per task s"], [
            ["local driver (--jobs 1 --force)", round(local_s, 1), f"{steps} steps", ""],
            ["dag.test() (force)", round(dag_s, 1), f"{tasks} ({steps} steps + open, close)",
             round((dag_s - local_s) / tasks, 2)],
            ["dag.test(), the first run in its process (builds the execution API)",
             round(statistics.median(d["seconds"] for d in first), 1), "", ""],
        ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""windpipe against the workshop's original way of working, on the real data, each end to end as a user starts it.

Peer: `python benchmarks/peer_workshop.py germany.csv`: LR and a 12-configuration RF grid, 13 runs
logged with MLflow's defaults (a call per metric, pip requirements inferred per model).
windpipe: `mlflow run projects/lr -P data=...` then `mlflow run projects/rf -e grid -P data=...
-P n_estimators=8,16,32,64 -P max_depth=6,10,14`, and the same two runs started with `windpipe run
lr ...` / `windpipe run rf -e grid ...` (one Python process per step instead of two), on the same
data (germany.csv as the processed entity), split (random 80/20, seed 42), weather-only features,
no backtest (`SAME_AS_PEER`) and configurations. All against one local
platform, alternately (the order rotates each round), so the machine's drift hits each alike.
Target: windpipe >= 4x faster.

    python benchmarks/bench_peers.py [--rounds 3] [--csv PATH]

Prints the rounds, the medians and the ratio, and where windpipe's time goes (from the runs'
start and end times): `mlflow run` starting up until the run exists, the step process until it
ends its run (imports, reading, fitting, logging), and the exit.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import GERMANY, REPO, running_platform, table  # noqa: E402

GRID = {"n_estimators": "8,16,32,64", "max_depth": "6,10,14"}
# the peer's work: a seeded random 80/20 split, the weather columns only, no backtest (the steps'
# defaults judge on the newest 13 weeks with time columns and refit 4 backtest folds: more work)
SAME_AS_PEER = {"split_by": "random", "test_size": "0.2", "seed": "42", "time_features": "false",
                "backtest_folds": "0"}
TARGET = 4.0


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(start, end) epoch seconds of a command that must succeed."""
    start = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, cwd=REPO)
    end = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return start, end


def peer(csv: Path, env: dict[str, str]) -> float:
    start, end = _run([sys.executable, str(REPO / "benchmarks" / "peer_workshop.py"), str(csv)], env)
    return end - start


WAYS = {"mlflow run": [sys.executable, "-m", "mlflow", "run", "--env-manager", "local"],
        "windpipe run": [sys.executable, "-m", "windpipe", "run"]}


def windpipe(entity: Path, env: dict[str, str], way: str) -> tuple[float, list[dict[str, float]]]:
    """Seconds for both runs started `way`, and per run: (start-up, step, exit) from the run's own times."""
    import mlflow

    parts = []
    total = 0.0
    for project, entry, extra in (("lr", "main", {}), ("rf", "grid", GRID)):
        where = str(REPO / "projects" / project) if way == "mlflow run" else project
        cmd = [*WAYS[way], where, "-e", entry, "-P", f"data={entity}"]
        for k, v in {**SAME_AS_PEER, **extra}.items():
            cmd += ["-P", f"{k}={v}"]
        start, end = _run(cmd, env)
        total += end - start
        run = mlflow.search_runs(experiment_names=[env["MLFLOW_EXPERIMENT_NAME"]], output_format="list",
                                 filter_string=f"tags.`windpipe.step` = '{project}' and "
                                               f"tags.`windpipe.entry_point` = '{entry}'",
                                 order_by=["start_time DESC"], max_results=1)[0]
        children = mlflow.search_runs(experiment_names=[env["MLFLOW_EXPERIMENT_NAME"]], output_format="list",
                                      filter_string=f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
        # (a grid's parent logs its best child's fit again: count the children's)
        fit = sum(r.data.metrics.get("fit_seconds", 0.0) for r in children or [run])
        parts.append({"run": f"{way} {project} {entry}", "startup": run.info.start_time / 1000 - start,
                      "step": (run.info.end_time - run.info.start_time) / 1000, "fit": fit,
                      "exit": end - run.info.end_time / 1000, "total": end - start})
    return total, parts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=GERMANY)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    if not args.csv.exists():
        print(f"skipped: {args.csv} is absent (the real processed data is never committed)")
        return 0
    from windpipe.data.process import load_processed
    from windpipe.entities.schema import PROCESSED
    from windpipe.entities.store import write_entity

    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp, running_platform() as (settings, env):
        entity = write_entity(PROCESSED, load_processed(args.csv), Path(tmp) / "processed.parquet")
        env = {**env, "MLFLOW_EXPERIMENT_NAME": settings.experiment}
        print(f"data: {args.csv}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n", flush=True)
        who_all = ["peer", *WAYS]
        seconds: dict[str, list[float]] = {w: [] for w in who_all}
        breakdown: dict[str, list[list[dict[str, float]]]] = {w: [] for w in WAYS}
        rows = []
        for i in range(args.rounds):
            order = who_all[i % 3:] + who_all[:i % 3]
            for who in order:
                if who == "peer":
                    seconds[who].append(peer(args.csv, env))
                else:
                    took, parts = windpipe(entity, env, who)
                    seconds[who].append(took)
                    breakdown[who].append(parts)
                print(f"  round {i + 1}: {who} {seconds[who][-1]:.1f} s", flush=True)
            got = {w: seconds[w][-1] for w in who_all}
            rows.append([i + 1, ", ".join(order), *(round(got[w], 1) for w in who_all),
                         *(round(got["peer"] / got[w], 2) for w in WAYS)])
        med = {w: statistics.median(seconds[w]) for w in who_all}
        rows.append(["median", "", *(round(med[w], 1) for w in who_all), *(round(med["peer"] / med[w], 2)
                                                                             for w in WAYS)])
        print(f"\n## LR + 12-run RF grid, end to end (seconds; ratio = workshop script / windpipe, target >= "
              f"{TARGET:g})\n")
        print(table(["round", "order", "workshop script", "windpipe: 2 x mlflow run", "windpipe: 2 x windpipe run",
                     "ratio (mlflow run)", "ratio (windpipe run)"], rows))
        print("\n## Where windpipe's time goes (medians over the rounds, seconds)\n")
        parts_rows = []
        for runs in breakdown.values():
            for j, name in enumerate(p["run"] for p in runs[0]):
                m = {k: statistics.median(b[j][k] for b in runs) for k in ("startup", "step", "fit", "exit", "total")}
                parts_rows.append([name, round(m["startup"], 2), round(m["step"] - m["fit"], 2), round(m["fit"], 2),
                                   round(m["exit"], 2), round(m["total"], 2)])
        print(table(["command", "start-up until the run exists", "step: imports, data, logging", "step: fitting",
                     "exit", "total"], parts_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

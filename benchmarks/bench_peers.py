"""windpipe against the workshop's original way of working, on the real data, each end to end as a user starts it.

Peer: `python benchmarks/peer_workshop.py germany.csv`: LR and a 12-configuration RF grid, 13 runs
logged with MLflow's defaults (a call per metric, pip requirements inferred per model).
windpipe: `mlflow run projects/lr -P data=...` then `mlflow run projects/rf -e grid -P data=...
-P n_estimators=8,16,32,64 -P max_depth=6,10,14`, the same data (germany.csv as the processed
entity), split and configurations. Both against one local platform, alternately (the order flips
each round), so the machine's drift hits both alike. Target: windpipe >= 4x faster.

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

from common import GERMANY, REPO, running_platform, table

GRID = {"n_estimators": "8,16,32,64", "max_depth": "6,10,14"}
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


def windpipe(entity: Path, env: dict[str, str]) -> tuple[float, list[dict[str, float]]]:
    """Seconds for both `mlflow run`s, and per run: (start-up, step, exit) from the run's own times."""
    import mlflow

    parts = []
    total = 0.0
    for project, entry, extra in (("lr", "main", {}), ("rf", "grid", GRID)):
        cmd = [sys.executable, "-m", "mlflow", "run", str(REPO / "projects" / project), "-e", entry,
               "--env-manager", "local", "-P", f"data={entity}"]
        for k, v in extra.items():
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
        parts.append({"run": f"{project} {entry}", "startup": run.info.start_time / 1000 - start,
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
    from windpipe.entities.schema import PROCESSED
    from windpipe.entities.store import read_entity, write_entity

    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp, running_platform() as (settings, env):
        entity = write_entity(PROCESSED, read_entity(PROCESSED, args.csv), Path(tmp) / "processed.parquet")
        env = {**env, "MLFLOW_EXPERIMENT_NAME": settings.experiment}
        print(f"data: {args.csv}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n", flush=True)
        rows, peers, ours, breakdown = [], [], [], []
        for i in range(args.rounds):
            order = ("peer", "windpipe") if i % 2 == 0 else ("windpipe", "peer")
            got: dict[str, float] = {}
            for who in order:
                if who == "peer":
                    got[who] = peer(args.csv, env)
                else:
                    got[who], parts = windpipe(entity, env)
                    breakdown.append(parts)
                print(f"  round {i + 1}: {who} {got[who]:.1f} s", flush=True)
            peers.append(got["peer"])
            ours.append(got["windpipe"])
            rows.append([i + 1, " then ".join(order), round(got["peer"], 1), round(got["windpipe"], 1),
                         round(got["peer"] / got["windpipe"], 2)])
        med_peer, med_ours = statistics.median(peers), statistics.median(ours)
        rows.append(["median", "", round(med_peer, 1), round(med_ours, 1), round(med_peer / med_ours, 2)])
        print("\n## LR + 12-run RF grid, end to end (seconds; ratio = peer / windpipe, target >= "
              f"{TARGET:g})\n")
        print(table(["round", "order", "workshop script", "windpipe (2 x mlflow run)", "ratio"], rows))
        print("\n## Where windpipe's time goes (medians over the rounds, seconds)\n")
        parts_rows = []
        for j, name in enumerate(p["run"] for p in breakdown[0]):
            med = {k: statistics.median(b[j][k] for b in breakdown) for k in ("startup", "step", "fit", "exit",
                                                                              "total")}
            parts_rows.append([f"mlflow run {name}", round(med["startup"], 2), round(med["step"] - med["fit"], 2),
                               round(med["fit"], 2), round(med["exit"], 2), round(med["total"], 2)])
        print(table(["command", "mlflow run start-up", "step: imports, data, logging", "step: fitting", "exit",
                     "total"], parts_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

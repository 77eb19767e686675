"""A step's fixed cost: what it imports, and the step on a tiny file against merely importing its libraries.

1. `python -X importtime` of each step as a user starts it (`windpipe run STEP` on the tiny file):
   the packages it imports, by cumulative import time, and whether TensorFlow or skops is among them
   (TensorFlow belongs to the keras step only; skops to the steps that save or load a model in skops format).
2. Fixed cost, alternately (the order rotates each round), medians: `windpipe run lr` on 1,440 hourly
   rows (holdout 2 weeks, no backtest), `mlflow run projects/lr` on the same, and the bare imports
   (`python -c "import mlflow, sklearn, pandas, pyarrow"`).
   Targets: windpipe run lr / bare imports <= 1.5; mlflow run / windpipe run <= 2.

    python benchmarks/bench_startup.py [--rounds 3] [--csv PATH] [--steps lr,rf]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from common import GERMANY, REPO, running_platform, table  # noqa: E402

ROWS = 1440
TINY = {"holdout_weeks": "2", "backtest_folds": "0"}
STEP_PARAMS = {"lr": ("main", {}), "rf": ("main", {"n_estimators": "16", "max_depth": "6"})}
BARE = [sys.executable, "-c", "import mlflow, sklearn, pandas, pyarrow"]
WATCH = ("tensorflow", "keras", "skops", "torch", "dash", "plotly")
FIXED_TARGET = 1.5
MLFLOW_RUN_TARGET = 2.0


def step_cmd(step: str, entity: Path, way: str = "windpipe run") -> list[str]:
    entry, extra = STEP_PARAMS[step]
    if way == "mlflow run":
        cmd = [sys.executable, "-m", "mlflow", "run", "--env-manager", "local", str(REPO / "projects" / step)]
    else:
        cmd = [sys.executable, "-m", "windpipe", "run", step]
    cmd += ["-e", entry, "-P", f"data={entity}"]
    for k, v in {**TINY, **extra}.items():
        cmd += ["-P", f"{k}={v}"]
    return cmd


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Seconds of a command that must succeed, and its stderr."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:5])} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return took, proc.stderr


def import_table(stderr: str) -> tuple[list[list[object]], list[str]]:
    """Top-level packages by the cumulative time of their first import, and the watched ones imported."""
    by_pkg: dict[str, float] = defaultdict(float)
    seen = set()
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)", line)
        if not m:
            continue
        name = m.group(3)
        seen.add(name.split(".")[0])
        if not m.group(2):  # imported by the program itself, not by another import: no double count
            by_pkg[name.split(".")[0]] += int(m.group(1)) / 1e6
    rows = [[pkg, round(s, 2)] for pkg, s in sorted(by_pkg.items(), key=lambda kv: -kv[1])[:10]]
    return rows, [w for w in WATCH if w in seen]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=GERMANY)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", default="lr,rf", help="steps whose imports to list (of: lr, rf)")
    args = ap.parse_args(argv)
    if not args.csv.exists():
        print(f"skipped: {args.csv} is absent (the real processed data is never committed)")
        return 0
    from windpipe.data.process import load_processed
    from windpipe.entities.schema import PROCESSED
    from windpipe.entities.store import write_entity

    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp, running_platform() as (_settings, env):
        tiny = load_processed(args.csv).tail(ROWS).reset_index(drop=True)
        entity = write_entity(PROCESSED, tiny, Path(tmp) / "processed.parquet")
        env = {**env, "PYTHONWARNINGS": "ignore"}
        print(f"{ROWS} hourly rows; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n", flush=True)

        for step in args.steps.split(","):
            # (verbose: a run sends native stderr, where importtime writes, to its log file otherwise)
            _took, err = timed(step_cmd(step, entity), {**env, "PYTHONPROFILEIMPORTTIME": "1", "WINDPIPE_VERBOSE": "1"})
            rows, watched = import_table(err)
            print(f"## `windpipe run {step}`: imports by package (python -X importtime, cumulative s)\n")
            print(table(["package", "seconds"], rows))
            print(f"\nimported of {', '.join(WATCH)}: {', '.join(watched) or 'none'}\n", flush=True)

        ways = {"bare imports": BARE, "windpipe run lr": step_cmd("lr", entity),
                "mlflow run projects/lr": step_cmd("lr", entity, "mlflow run")}
        names = list(ways)
        seconds: dict[str, list[float]] = {w: [] for w in names}
        rows = []
        for i in range(args.rounds):
            order = names[i % len(names):] + names[:i % len(names)]
            for who in order:
                seconds[who].append(timed(ways[who], env)[0])
            got = {w: seconds[w][-1] for w in names}
            rows.append([i + 1, ", ".join(order), *(round(got[w], 2) for w in names),
                         round(got["windpipe run lr"] / got["bare imports"], 2),
                         round(got["mlflow run projects/lr"] / got["windpipe run lr"], 2)])
            print(f"  round {i + 1}: " + ", ".join(f"{w} {got[w]:.1f} s" for w in names), flush=True)
        med = {w: statistics.median(seconds[w]) for w in names}
        fixed = med["windpipe run lr"] / med["bare imports"]
        twice = med["mlflow run projects/lr"] / med["windpipe run lr"]
        rows.append(["median", "", *(round(med[w], 2) for w in names), round(fixed, 2), round(twice, 2)])
        print(f"\n## Fixed cost of a step ({ROWS} rows, holdout 2 weeks, no backtest; seconds)\n")
        print(table(["round", "order", *names, f"windpipe run / bare (target <= {FIXED_TARGET:g})",
                     f"mlflow run / windpipe run (target <= {MLFLOW_RUN_TARGET:g})"], rows))
        print(f"\nfixed cost {fixed:.2f}x the bare imports ({'met' if fixed <= FIXED_TARGET else 'NOT met'}); "
              f"mlflow run {twice:.2f}x windpipe run ({'met' if twice <= MLFLOW_RUN_TARGET else 'NOT met'}); "
              f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

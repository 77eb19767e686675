"""`windpipe predict` on 1M rows: this checkout against an older commit, run alternately.

The machine's speed drifts (a VM), so a change is judged by a ratio measured in one run: both
versions score the same input with the same registered model on one platform, in turn.

  python benchmarks/compare_predict.py REF [ROWS] [REPEATS]     (e.g. abc61b0 1000000 3)

REF is checked out with `git worktree` into a temp folder (removed afterwards).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_predict import resample, source_data
from common import REPO, running_platform, table

sys.path.insert(0, str(REPO))


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    ref = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    train, label = source_data()
    with tempfile.TemporaryDirectory(prefix="compare-predict-") as tmp, running_platform() as (settings, env):
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(old), ref], check=True)
        try:
            from tests.models import log_registered_model

            class P:  # what log_registered_model needs of a platform
                tracking_uri = settings.local_tracking_uri

            P.settings = settings
            version = log_registered_model(P, df=train, tmp_dir=Path(tmp))["version"]
            inp = Path(tmp) / "in.parquet"
            resample(train, n).to_parquet(inp, index=False)
            seconds: dict[str, list[float]] = {ref: [], "this checkout": []}
            for i in range(repeats):
                for name, code in ((ref, old), ("this checkout", REPO)):
                    run_env = {**os.environ, **env, "PYTHONPATH": str(code),
                               "WINDPIPE_MARTS_URL": f"sqlite:///{tmp}/marts-{i}-{code.name}.db"}
                    start = time.perf_counter()
                    proc = subprocess.run([sys.executable, "-m", "windpipe", "predict", "--input", str(inp),
                                           "--output", str(Path(tmp) / f"out-{i}-{code.name}.parquet"),
                                           "--model-uri", f"models:/wind_solar/{version}"],
                                          env=run_env, cwd=code, capture_output=True, text=True)
                    if proc.returncode != 0:
                        print(proc.stderr[-3000:], file=sys.stderr)
                        return 1
                    seconds[name].append(time.perf_counter() - start)
                    print(f"{name}: {seconds[name][-1]:.2f} s", file=sys.stderr, flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], check=False)
    med = {k: statistics.median(v) for k, v in seconds.items()}
    rows = [[k, ", ".join(f"{s:.2f}" for s in v), round(med[k], 2), f"{n / med[k]:,.0f}"] for k, v in seconds.items()]
    print(f"data: {label}, resampled to {n:,} rows; load average {os.getloadavg()[0]:.1f} at the end\n")
    print(table(["code", "whole command (s)", "median (s)", "rows/s"], rows))
    print(f"\nratio {ref} / this checkout: {med[ref] / med['this checkout']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

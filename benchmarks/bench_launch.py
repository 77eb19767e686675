"""What launching a step costs: the quick training pipeline, every step run (`--force --jobs 1`), with this
checkout's code and with a git ref's (default `main`), alternately, on one platform and the same raw data.

Every step runs (no cache), so the difference is what launching a step costs in each version: making its
run, MLflow Projects starting its command, stopping. With `mlflow.projects.run(..., synchronous=False)` an
`mlflow run` process started before each step's own Python (1.35x, +11 s per step on a loaded machine);
windpipe now makes the run and lets MLflow Projects run the step in it synchronously on a worker thread.
The table gives both medians, their ratio and the cost per launched step.
Run: `python benchmarks/bench_launch.py [--base main] [--rounds 3] [--years 1]` (starts its own platform in
a temporary folder on free ports).
"""

from __future__ import annotations

import argparse
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

STEPS = 6  # process, lr, rf, keras, compare, promote


def _base_code(ref: str, dst: Path) -> Path:
    """The library and the step projects as committed at `ref`."""
    dst.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref, "windpipe", "projects", "pyproject.toml"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dst)], input=archive, check=True)
    return dst


def _pipeline(env: dict[str, str], code: Path, raw: Path) -> float:
    cmd = [sys.executable, "-m", "windpipe", "pipeline", "run", "--raw", str(raw), "--quick", "--force",
           "--jobs", "1", "--env-manager", "local"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env={**env, "PYTHONPATH": str(code)}, cwd=code, capture_output=True, text=True,
                          timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"pipeline failed ({code}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="main", help="the git ref to compare with")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--years", type=int, default=1)
    args = ap.parse_args(argv)
    from tests.processes import code_snapshot
    from windpipe.data.synth import write_raw

    with tempfile.TemporaryDirectory(prefix="windpipe-bench-launch-") as tmp, running_platform() as (_s, env):
        raw = Path(tmp) / "raw"
        write_raw(raw, seed=42, years=args.years)
        codes = {"this checkout": code_snapshot(Path(tmp) / "new"), args.base: _base_code(args.base, Path(tmp) / "old")}
        _pipeline(env, codes["this checkout"], raw)  # warm the page cache and the experiment
        seconds: dict[str, list[float]] = {name: [] for name in codes}
        for i in range(args.rounds):
            for name in (list(codes) if i % 2 == 0 else list(reversed(codes))):
                seconds[name].append(_pipeline(env, codes[name], raw))
                print(f"  round {i + 1}, {name}: {seconds[name][-1]:.1f} s", flush=True)
        new, old = (statistics.median(seconds[n]) for n in codes)
        print(table(["code", "runs s", "median s"],
                    [[name, ", ".join(f"{s:.1f}" for s in v), round(statistics.median(v), 1)]
                     for name, v in seconds.items()]))
        print()
        per_step = (new - old) / STEPS
        print(table(["this / base", "cost per launched step s"], [[round(new / old, 2), round(per_step, 1)]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

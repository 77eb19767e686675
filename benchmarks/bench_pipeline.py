"""The pipeline on real-size generated data (4 years hourly): cold one step at a time against side by side,
warm (all cached), one rf parameter changed.

Targets: cold <= 120 s on 2 cores, `--jobs 2` / `--jobs 1` <= 0.75 (alternately, in one run), warm <= 10 s,
an rf change reruns rf, compare, promote only.
Run: `python benchmarks/bench_pipeline.py [--rounds 2]` (starts its own platform in a temp folder on free ports).
Cold runs after the first are `--force` runs: every step runs again (the same work), in the same experiment.
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


def _snapshot(dst: Path) -> Path:
    """Copy the code: the cache key holds the code version, and a shared tree changes under us."""
    import shutil

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "windpipe", dst / "windpipe", ignore=ignore)
    shutil.copytree(REPO / "projects", dst / "projects", symlinks=True, ignore=ignore)
    shutil.copy(REPO / "pyproject.toml", dst / "pyproject.toml")
    return dst


def _pipeline(env: dict[str, str], code: Path, raw: Path, *extra: str) -> tuple[float, str]:
    cmd = [sys.executable, "-m", "windpipe", "pipeline", "run", "--raw", str(raw), "--env-manager", "local",
           *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env={**env, "PYTHONPATH": str(code)}, cwd=code, capture_output=True, text=True,
                          timeout=1800)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"pipeline failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout


def _steps(stdout: str, how: str) -> str:
    names = [line.split("]")[1].split("(")[0].strip() for line in stdout.splitlines()
             if line.startswith("[") and f": {how}" in line]
    return ", ".join(names) or "-"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2, help="cold runs per job count, alternately")
    ap.add_argument("--years", type=int, default=4)
    args = ap.parse_args(argv)
    from windpipe.data.synth import write_raw

    with tempfile.TemporaryDirectory(prefix="windpipe-bench-raw-") as tmp, running_platform() as (_settings, env):
        raw = Path(tmp) / "raw"
        write_raw(raw, seed=42, years=args.years)
        code = _snapshot(Path(tmp) / "code")
        cold: dict[int, list[float]] = {1: [], 2: []}
        rows = []
        for i in range(args.rounds):
            for jobs in ((1, 2) if i % 2 == 0 else (2, 1)):
                first = not cold[1] and not cold[2]
                seconds, out = _pipeline(env, code, raw, "--jobs", str(jobs), *(() if first else ("--force",)))
                cold[jobs].append(seconds)
                print(f"  cold, --jobs {jobs}{'' if first else ' (--force)'}: {seconds:.1f} s", flush=True)
                rows.append([f"cold, --jobs {jobs}" + ("" if first else " (--force)"), round(seconds, 1),
                             "<= 120", _steps(out, "ran"), _steps(out, "reused")])
        for label, extra in (("warm (nothing changed)", ()),
                             ("rf parameter changed (rf.max_depth=8,12)", ("--param", "rf.max_depth=8,12"))):
            seconds, out = _pipeline(env, code, raw, *extra)
            rows.append([label, round(seconds, 1), "<= 10" if label.startswith("warm") else "", _steps(out, "ran"),
                         _steps(out, "reused")])
        print(table(["run", "seconds", "target s", "steps ran", "steps reused"], rows))
        one, two = statistics.median(cold[1]), statistics.median(cold[2])
        print(f"\n## Steps side by side (cold, medians of {args.rounds}, alternately)\n")
        print(table(["--jobs 1 s", "--jobs 2 s", "ratio", "target"], [[round(one, 1), round(two, 1),
                                                                          round(two / one, 2), "<= 0.75"]]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

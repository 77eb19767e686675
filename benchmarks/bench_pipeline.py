"""The pipeline on real-size generated data (4 years hourly): cold, warm (all cached), one rf parameter changed.

Targets (issue 4): cold <= 120 s on 2 cores, warm <= 10 s, an rf change reruns rf, compare, promote only.
Run: `python benchmarks/bench_pipeline.py` (starts its own platform in a temp folder on free ports).
"""

from __future__ import annotations

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


def main() -> None:
    from windpipe.data.synth import write_raw

    with tempfile.TemporaryDirectory(prefix="windpipe-bench-raw-") as tmp, running_platform() as (_settings, env):
        raw = Path(tmp) / "raw"
        write_raw(raw, seed=42, years=4)
        code = _snapshot(Path(tmp) / "code")
        rows = []
        for label, extra in (("cold (empty tracking server)", ()), ("warm (nothing changed)", ()),
                             ("rf parameter changed (rf.max_depth=8,12)", ("--param", "rf.max_depth=8,12"))):
            seconds, out = _pipeline(env, code, raw, *extra)
            target = {"cold": "<= 120", "warm": "<= 10"}.get(label.split()[0], "")
            rows.append([label, round(seconds, 1), target, _steps(out, "ran"), _steps(out, "reused")])
        print(table(["run", "seconds", "target s", "steps ran", "steps reused"], rows))


if __name__ == "__main__":
    main()

"""`windpipe up` to healthy on the team stack (PostgreSQL + rclone S3 + MLflow) against the local stack.

Each platform gets its own temporary state folder and free ports. The first team `up` includes
initdb, the generated secrets and MLflow's table creation; then local and team `up` (existing state)
alternate, each followed by `down`, so both see the same machine load. Run:
`python benchmarks/bench_team.py [repeat]`.
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


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)

"""Serving speed: `windpipe serve` (follows the alias) against plain `mlflow models serve` on the same model.

Target (issue 17): p50 and p99 latency and requests/s no worse than 1.1x plain MLflow; the swap time after a
promotion (alias moved -> first answer from the new version), with the default poll interval.

Both servers run side by side on one registered model (a LinearRegression, the cheapest model: the
router's share of each request is largest there), one uvicorn worker each. Rounds alternate which server
is loaded first; each round is a bounded load of 4 client threads with keep-alive connections sending a
one-row `dataframe_split` request back to back for `--seconds` seconds. Medians over the rounds are reported.
Plain `mlflow models serve` logs every request (uvicorn's access log); `windpipe serve` does not.

    python benchmarks/bench_serving.py [--rounds 5] [--seconds 8] [--swaps 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, running_platform, table

sys.path.insert(0, str(REPO))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its children: what the server spent, whatever else runs."""
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return sum(sum(p.cpu_times()[:2]) for p in procs)


def measure(url: str, body: bytes, seconds: float, pid: int, concurrency: int = 4) -> dict[str, float]:
    from windpipe.deploy.serving import Load

    cpu = cpu_seconds(pid)
    answers = Load(url, body, concurrency=concurrency, max_seconds=seconds).run()
    cpu = cpu_seconds(pid) - cpu
    ok = [a for a in answers if a.status == 200]
    span = max(a.started + a.seconds for a in answers) - min(a.started for a in answers)
    return {"p50_ms": 1000 * percentile([a.seconds for a in ok], 0.50),
            "p99_ms": 1000 * percentile([a.seconds for a in ok], 0.99),
            "rps": len(ok) / span, "cpu_ms": 1000 * cpu / max(len(answers), 1),
            "failed": len(answers) - len(ok), "n": len(answers)}


def wait_for_line(log: Path, text: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text():
            return
        if proc.poll() is not None:
            raise RuntimeError(log.read_text())
        time.sleep(0.2)
    raise RuntimeError(f"no {text!r} in {log} after {timeout} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--swaps", type=int, default=5)
    args = parser.parse_args()

    import mlflow

    from tests.conftest import Platform
    from tests.models import log_registered_model
    from windpipe.deploy import serving
    from windpipe.names import FEATURES
    from windpipe.stack.procs import free_port, stop_pid

    with running_platform() as (settings, env), tempfile.TemporaryDirectory(prefix="windpipe-bench-serve-") as tmp:
        p = Platform(settings, env)
        first = log_registered_model(p, tmp_dir=Path(tmp))
        second = log_registered_model(p, scale=1.5, alias=None, tmp_dir=Path(tmp))
        body = json.dumps(serving.payload(first["df"][FEATURES].head(1))).encode()
        pinned = f"models:/{settings.model_name}/{first['version']}"
        plain, plain_url = serving.start(settings, free_port(), pinned, log=Path(tmp) / "plain.log")
        port = free_port()
        log = Path(tmp) / "windpipe.log"
        with open(log, "wb") as out:
            follower = subprocess.Popen([sys.executable, "-m", "windpipe", "serve", "--port", str(port)], env=env,
                                        cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        ours_url = f"http://127.0.0.1:{port}"
        try:
            wait_for_line(log, "health:", follower)
            servers = {"mlflow models serve (pinned version)": (plain_url, plain.pid),
                       "windpipe serve (follows @production)": (ours_url, follower.pid)}
            for url, pid in servers.values():  # warm-up
                measure(url, body, 2.0, pid)
            results: dict[str, list[dict[str, float]]] = {name: [] for name in servers}
            for r in range(args.rounds):
                order = list(servers) if r % 2 == 0 else list(reversed(servers))
                for name in order:
                    url, pid = servers[name]
                    results[name].append(measure(url, body, args.seconds, pid))
            keys = ("p50_ms", "p99_ms", "rps", "cpu_ms")
            med = {name: {k: statistics.median(m[k] for m in ms) for k in keys} for name, ms in results.items()}
            rows = [[name, *(med[name][k] for k in keys), sum(m["failed"] for m in ms), sum(m["n"] for m in ms)]
                    for name, ms in results.items()]
            plain_m, ours_m = (med[n] for n in servers)
            print(f"## Serving, one-row requests, 4 client threads, {args.rounds} alternating rounds of "
                  f"{args.seconds:g} s (medians)\n")
            print(table(["server", "p50 ms", "p99 ms", "requests/s", "server CPU ms per request", "failed",
                         "requests"], rows))
            print()
            print(table(["ratio windpipe / mlflow", "measured", "target"], [
                ["p50 latency", ours_m["p50_ms"] / plain_m["p50_ms"], "<= 1.1"],
                ["p99 latency", ours_m["p99_ms"] / plain_m["p99_ms"], "<= 1.1"],
                ["requests/s (mlflow / windpipe)", plain_m["rps"] / ours_m["rps"], "<= 1.1"],
                ["server CPU per request", ours_m["cpu_ms"] / plain_m["cpu_ms"], "-"],
            ]))

            # swap time: move the alias, then time until the first answer from the new version (under load)
            client = mlflow.MlflowClient()
            swaps, failed = [], 0
            versions = [second["version"], first["version"]]
            for i in range(args.swaps):
                target = str(versions[i % 2])
                load = serving.Load(ours_url, body, concurrency=2, max_seconds=120).start()
                try:
                    time.sleep(1.0)
                    moved = time.monotonic()
                    client.set_registered_model_alias(settings.model_name, "production", target)
                    deadline = moved + 60
                    while time.monotonic() < deadline and not any(
                            a.version == target and a.started >= moved for a in list(load.answers)):
                        time.sleep(0.05)
                finally:
                    answers = load.stop()
                first_new = min((a.started + a.seconds for a in answers if a.version == target and a.started >= moved),
                                default=float("nan"))
                swaps.append(first_new - moved)
                failed += sum(a.status != 200 for a in answers)
            print(f"\n## Swap after a promotion (alias moved -> first answer from the new version), "
                  f"{args.swaps} swaps under load, poll every {settings.serve_poll_seconds:g} s\n")
            print(table(["what", "median s", "max s", "failed requests"],
                        [["swap time", statistics.median(swaps), max(swaps), failed]]))
        finally:
            serving.stop(plain)
            if follower.poll() is None:
                stop_pid(follower.pid)
            follower.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training benchmark: model quality on the real data and tracking overhead per run.

The weather-only models on the random 80/20 split (`split_by=random, time_features=false`): the
targets below were set for them. Quality on the future, per family: bench_forecast.py.

Needs ../shared/data/germany.csv (skipped with a message when absent). Starts its own local
platform (FTP + MLflow on free ports in a temporary WINDPIPE_HOME) and stops it afterwards.

    python benchmarks/bench_training.py [--repeats 3] [--no-keras] [--csv PATH]

Prints markdown tables: r2 of LR, the RF grid's best, Keras against the targets; fit time
against tracking overhead (everything except fitting: reading the entity, metrics, figure,
dataset, model logging) per step; the 12-run grid end to end; Keras time to early stop.
Steps run in this process (as `mlflow run --env-manager local` would run step.py, minus
the interpreter start-up); medians where repeated.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DEFAULT_CSV = REPO.parent / "shared" / "data" / "germany.csv"
TARGETS_R2 = {"lr": 0.83, "rf grid best": 0.87, "keras": 0.87}


class _Done(Exception):
    """Skip the remaining benchmark parts."""


def start_platform(home: Path):  # -> Settings
    from windpipe.settings import Settings, clear_settings_cache
    from windpipe.stack import services as platform
    from windpipe.stack.procs import free_port

    mlflow_port, ftp_port = free_port(), free_port()
    base = 31000 + (os.getpid() % 2000) * 10
    env = {"WINDPIPE_HOME": str(home), "WINDPIPE_MLFLOW_PORT": str(mlflow_port), "WINDPIPE_FTP_PORT": str(ftp_port),
           "WINDPIPE_FTP_PASSIVE_PORTS": f"{base}-{base + 9}", "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
           "WINDPIPE_ENV_FILE": str(home / "no.env")}
    os.environ.update(env)
    os.environ.pop("MLFLOW_RUN_ID", None)
    clear_settings_cache()
    settings = Settings(home=home, mlflow_port=mlflow_port, ftp_port=ftp_port,
                        ftp_passive_ports=env["WINDPIPE_FTP_PASSIVE_PORTS"], tracking_uri=env["MLFLOW_TRACKING_URI"])
    platform.up(settings, say=lambda _m: None)
    return settings


def timed(func, *args, **kwargs):
    started = time.perf_counter()
    out = func(*args, **kwargs)
    return out, time.perf_counter() - started


def last_run(step: str, entry: str):
    import mlflow

    filt = f"tags.`windpipe.step` = '{step}' and tags.`windpipe.entry_point` = '{entry}'"
    return mlflow.search_runs(filter_string=filt, search_all_experiments=True, order_by=["start_time DESC"],
                              max_results=1, output_format="list")[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--repeats", type=int, default=3, help="lr main runs (median reported); rf and keras main run once")
    ap.add_argument("--no-keras", action="store_true")
    ap.add_argument("--steps", default="lr,rf,grid,keras", help="comma list of lr, rf, grid, keras")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the platform on kill too
    if not args.csv.exists():
        print(f"skipped: {args.csv} is absent (the real processed data is never committed)")
        return 0

    from windpipe.data.process import load_processed
    from windpipe.entities.schema import PROCESSED
    from windpipe.entities.store import read_entity, write_entity
    from windpipe.pipeline.interfaces import step_defaults
    from windpipe.stack import services as platform
    from windpipe.steps import train as T

    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        tmp = Path(tmp)
        entity = write_entity(PROCESSED, load_processed(args.csv), tmp / "processed.parquet")
        print(f"data: {args.csv} ({len(read_entity(PROCESSED, entity))} rows), random 80/20 split, seed 42;"
              f" {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.1f}\n")
        settings = start_platform(tmp / "home")
        quality: list[list[object]] = []
        speed: list[list[object]] = []
        try:
            wanted = set(args.steps.split(",")) - ({"keras"} if args.no_keras else set())
            # warm-up: the first run in a process pays the imports (mlflow flavors, skops, plotly); not counted
            def defaults(step: str, entry_point: str = "main") -> dict[str, str]:
                # the weather-only models on the random split: what these targets were set for (the
                # honest numbers, on the future, are bench_forecast.py's)
                return {**step_defaults(step, entry_point), "data": str(entity), "split_by": "random",
                        "time_features": "false", "backtest_folds": "0"}

            _, warm_s = timed(T.train, "lr", **defaults("lr"))
            print(f"  warm-up lr run (imports included): {warm_s:.2f} s", flush=True)
            for family, kw in [(f, {}) for f in ("lr", "rf", "keras") if f in wanted]:
                totals, fits, r2 = [], [], None
                for _ in range(args.repeats if family == "lr" else 1):
                    out, total = timed(T.train, family, **{**defaults(family), **kw})
                    run = last_run(family, "main")
                    fits.append(run.data.metrics["fit_seconds"])
                    totals.append(total)
                    r2 = out["r2"]
                    if family == "keras":
                        epochs = int(run.data.metrics["epochs_run"])
                fit, total = statistics.median(fits), statistics.median(totals)
                speed.append([f"{family} main", len(totals), fit, total - fit, total])
                print(f"  {family} main: r2 {r2:.4f}, fit {fit:.2f} s, overhead {total - fit:.2f} s", flush=True)
                if family != "rf":
                    quality.append([family, r2, TARGETS_R2[family], "yes" if r2 >= TARGETS_R2[family] else "NO"])
                else:
                    quality.append(["rf main (64 trees, depth 14)", r2, "", ""])
                if family == "keras":
                    keras_row = [epochs, fit, total]
            if "grid" not in wanted:
                raise _Done
            print("  rf grid (12 runs) ...", flush=True)
            out, total = timed(T.grid, **defaults("rf", "grid"))
            parent = last_run("rf", "grid")
            import mlflow

            children = mlflow.search_runs(experiment_ids=[parent.info.experiment_id], output_format="list",
                                          filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
            child_fit = [c.data.metrics["fit_seconds"] for c in children]
            child_over = [(c.info.end_time - c.info.start_time) / 1000 - c.data.metrics["fit_seconds"]
                          for c in children]
            quality.append(["rf grid best", out["r2"], TARGETS_R2["rf grid best"],
                            "yes" if out["r2"] >= TARGETS_R2["rf grid best"] else "NO"])
            speed.append([f"rf grid child (median of {len(children)})", len(children),
                          statistics.median(child_fit), statistics.median(child_over), ""])
            fit_sum = sum(child_fit)
            speed.append([f"rf grid end to end ({len(children)} fits + best model)", 1, fit_sum,
                          total - fit_sum, total])
            best = next(c for c in children if c.info.run_id == out["best_run_id"])
        except _Done:
            best = None
        finally:
            platform.down(settings, say=lambda _m: None)

    print("## Quality (holdout r2, uniform average over solar_GW and wind_GW)\n")
    print(table(["model", "r2", "target", "met"], quality))
    if best is not None:
        print(f"\nrf grid best: n_estimators={best.data.params['n_estimators']}, "
              f"max_depth={best.data.params['max_depth']}")
    print("\n## Speed (seconds; overhead = everything except fitting, on the local platform)\n")
    print(table(["step", "runs", "fit", "overhead", "total"], speed))
    if "keras" in wanted:
        print("\n## Keras to early stop\n")
        print(table(["epochs run", "fit (s)", "run total (s)"], [keras_row]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Platform and process-step speed: `windpipe up` to healthy, process step own work.

Targets (issue 2): `windpipe up` to healthy median <= 10 s; the process step's own work on
raw data of the real size <= 5 s.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import GERMANY, REPO, median_time, platform_env, running_platform, table


def bench_up(repeat: int = 5) -> list[list[object]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="windpipe-bench-up-") as tmp:
        env = platform_env(Path(tmp))

        def cli(*args: str) -> None:
            subprocess.run([sys.executable, "-m", "windpipe", *args], env=env, check=True,
                           capture_output=True, cwd=REPO)

        start = time.perf_counter()
        cli("up")
        cold = time.perf_counter() - start
        cli("down")
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            cli("up")
            times.append(time.perf_counter() - start)
            cli("down")
        times.sort()
        rows.append(["windpipe up, new state folder (creates the SQLite schema)", cold, "1 run", "-"])
        rows.append(["windpipe up to healthy, existing state", times[len(times) // 2],
                     f"median of {repeat}", "<= 10 s"])
    return rows


def _raw_from_real(out: Path) -> None:
    """Turn the real processed data back into OPSD-shaped raw files (GW -> MW)."""
    import pandas as pd

    from windpipe.data.synth import TIMESERIES_FILE, WEATHER_FILE

    df = pd.read_csv(GERMANY)
    stamps = pd.to_datetime(df.utc_timestamp, utc=True).dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    pd.DataFrame({"utc_timestamp": stamps, "DE_solar_generation_actual": df.solar_GW * 1000,
                  "DE_wind_generation_actual": df.wind_GW * 1000}).to_csv(out / TIMESERIES_FILE, index=False)
    pd.DataFrame({"utc_timestamp": stamps, "DE_windspeed_10m": df.windspeed, "DE_temperature": df.temperature,
                  "DE_radiation_direct_horizontal": df.rad_horizontal,
                  "DE_radiation_diffuse_horizontal": df.rad_diffuse}).to_csv(out / WEATHER_FILE, index=False)


def bench_process(repeat: int = 5) -> list[list[object]]:
    from windpipe.data.process import process, read_raw
    from windpipe.data.synth import write_raw

    rows = []
    with tempfile.TemporaryDirectory(prefix="windpipe-bench-raw-") as tmp:
        synth = Path(tmp) / "synth"
        write_raw(synth)
        sources = [("generated, 2013-2016", synth)]
        if GERMANY.exists():
            real = Path(tmp) / "real"
            real.mkdir()
            _raw_from_real(real)
            sources.append(("real OPSD rows (germany.csv as raw files)", real))
        for label, folder in sources:
            out = {}

            def work(folder: Path = folder, out: dict = out) -> None:
                out["df"] = process(*read_raw(folder))

            med, _ = median_time(work, repeat)
            rows.append([f"process step own work: {label}", med, f"median of {repeat}, {len(out['df'])} rows",
                         "<= 5 s"])
        with running_platform() as (_settings, env):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "mlflow", "run", str(REPO / "projects" / "process"),
                            "--env-manager", "local", "-P", f"raw_dir={synth}"],
                           env={**env, "MLFLOW_EXPERIMENT_NAME": "bench"}, check=True, capture_output=True)
            rows.append(["`mlflow run projects/process --env-manager local`, end to end",
                         time.perf_counter() - start, "1 run (interpreter start, imports, logging)", "-"])
    return rows


def main() -> None:
    print("## Platform and process step\n")
    print(table(["what", "seconds", "how", "target"], bench_up() + bench_process()))
    if not GERMANY.exists():
        print(f"\n(real data not found at {GERMANY}: real-data rows skipped)")


if __name__ == "__main__":
    main()

"""Fault injection: killed servers and commands, full and read-only disks, hostile input, load (issue 16).

Tests that kill a server start their own platform (`make_platform`); the others share one. Points
inside a command are reached with the fault point of `windpipe.settings.fault_point`: the command
waits at the named point until the test has done its damage (see `Paused`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from windpipe.stack import services as platform

from .conftest import REPO

# ----------------------------------------------------------------------------------- helpers

class Paused:
    """Run a command that stops at a fault point; the test acts, then releases it (or kills it)."""

    def __init__(self, tmp_path: Path, point: str) -> None:
        self.release = tmp_path / f"release-{point.replace(':', '-')}"
        self.env = {"WINDPIPE_TEST_PAUSE_AT": f"{point}:{self.release}"}

    def wait(self, proc: subprocess.Popen, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        marker = Path(str(self.release) + ".paused")
        while not marker.exists():
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"ended before the fault point ({proc.returncode}):\n{out[-3000:]}\n{err[-3000:]}")
            assert time.monotonic() < deadline, "the fault point was not reached"
            time.sleep(0.05)

    def go(self) -> None:
        self.release.touch()


def popen(p, *args: str, extra_env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.Popen:
    """`windpipe ...` started in the background against platform `p`."""
    env = {**p.env, **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-m", "windpipe", *args], env=env, cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def kill9(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.05)


# ----------------------------------------------------------------------------------- 1. pid files

@pytest.mark.slow
def test_down_and_up_never_act_on_foreign_or_stale_pid_files(make_platform):
    first = make_platform()
    other = make_platform(start=False)
    run_dir = other.home / "run"

    def copy_pid_files() -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        for pid_file in (first.home / "run").glob("*.pid"):
            shutil.copy(pid_file, run_dir / pid_file.name)

    copy_pid_files()
    proc = other.windpipe("down")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("removed a foreign pid file") == 2, proc.stdout
    assert first.windpipe("status").returncode == 0, "down stopped another state folder's servers"
    assert not list(run_dir.glob("*.pid"))

    # the copies do not make `up` refuse or report "already running": it starts this folder's own servers
    copy_pid_files()
    proc = other.windpipe("up")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "already running" not in proc.stdout and proc.stdout.count("removed a foreign pid file") == 2
    ours = {n: platform.running_pid(other.settings, n) for n in (platform.FTP, platform.MLFLOW)}
    theirs = {n: platform.running_pid(first.settings, n) for n in (platform.FTP, platform.MLFLOW)}
    assert None not in ours.values() and set(ours.values()).isdisjoint(theirs.values())
    assert other.windpipe("down").returncode == 0
    assert first.windpipe("status").returncode == 0

    # a pid file whose pid now belongs to another process (same state folder, even the same command
    # line, but another start time) is stale: nothing is signalled
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "windpipe.stack.mlflow_server"],
                                env={**other.env, "WINDPIPE_HOME": str(other.home.resolve())},
                                start_new_session=True)
    try:
        record = {"pid": stranger.pid, "started": 12345.0, "home": str(other.home.resolve()), "port": 1}
        (run_dir / "mlflow.pid").write_text(json.dumps(record))
        (run_dir / "ftp.pid").write_text(json.dumps({**record, "pid": 2 ** 22 + 7}))  # no such process
        proc = other.windpipe("down")
        assert proc.returncode == 0
        assert "removed a stale pid file" in proc.stdout and "another process" in proc.stdout, proc.stdout
        assert "is gone" in proc.stdout
        assert stranger.poll() is None, "down signalled a process that only reuses a recorded pid"
    finally:
        stranger.kill()
        stranger.wait()
    assert first.windpipe("status").returncode == 0


# ----------------------------------------------------------------------------------- 4. usage errors, bad settings

def windpipe_cli(*args: str, env: dict[str, str] | None = None,
                 home: Path | None = None) -> subprocess.CompletedProcess:
    """`windpipe ...` without any platform (bad input is refused before anything needs one)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("WINDPIPE_", "MLFLOW_"))}
    if home is not None:
        base["WINDPIPE_HOME"] = str(home)
        base["WINDPIPE_ENV_FILE"] = str(home / "no.env")
    return subprocess.run([sys.executable, "-m", "windpipe", *args], env={**base, **(env or {})}, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [["predict"], ["promote", "--margin", "abc"], ["compare", "--top", "x"],
                                  ["no-such-command"], ["data", "synth"]])
def test_usage_errors_print_usage_and_exit_2(args, tmp_path):
    proc = windpipe_cli(*args, home=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Usage: windpipe" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("var, value, named", [
    ("WINDPIPE_FTP_PORT", "99999", "less than or equal to 65535"),
    ("WINDPIPE_MLFLOW_PORT", "abc", "valid integer"),
    ("WINDPIPE_FTP_PASSIVE_PORTS", "30009-30000", "FIRST <= LAST"),
    ("WINDPIPE_FTP_PASSIVE_PORTS", "lots", "FIRST-LAST"),
    ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "-1", "greater than or equal to 0"),
])
def test_bad_settings_are_named_and_nothing_starts(var, value, named, tmp_path):
    home = tmp_path / "state"
    for command in (["up"], ["status"]):
        proc = windpipe_cli(*command, env={var: value}, home=home)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert proc.stderr.startswith("error: Invalid setting") and f"{var}={value!r}" in proc.stderr, proc.stderr
        assert named in proc.stderr and "fix:" in proc.stderr and "Traceback" not in proc.stderr
    assert not home.exists()  # nothing started, nothing written


def test_debug_flag_and_variable_show_the_traceback(tmp_path):
    args = ["data", "synth", "--out", str(tmp_path / "raw"), "--years", "0"]
    quiet = windpipe_cli(*args, home=tmp_path)
    assert quiet.returncode == 1 and "error: years must be at least 1" in quiet.stderr
    assert "Traceback" not in quiet.stderr
    for loud in (windpipe_cli("--debug", *args, home=tmp_path),
                 windpipe_cli(*args, env={"WINDPIPE_DEBUG": "1"}, home=tmp_path)):
        assert loud.returncode == 1 and "Traceback (most recent call last)" in loud.stderr
        assert "error: years must be at least 1" in loud.stderr


@pytest.mark.parametrize("start", ["99999", "1", "2300"])
def test_synth_refuses_a_start_year_out_of_range(start, tmp_path):
    proc = windpipe_cli("data", "synth", "--out", str(tmp_path / "raw"), "--start", start, home=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert f"start year {start}" in proc.stderr and "fix:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "raw").exists()


# ----------------------------------------------------------------------------------- 5. non-finite data

def _processed(n: int = 48):
    import numpy as np
    import pandas as pd

    from windpipe.names import FEATURES, TARGETS, TIMESTAMP

    rng = np.random.default_rng(0)
    df = pd.DataFrame({TIMESTAMP: pd.date_range("2015-01-01", periods=n, freq="h", tz="UTC")})
    for col in TARGETS:
        df[col] = rng.uniform(0, 20, n)
    for col, (lo, hi) in zip(FEATURES, [(0, 15), (-5, 25), (0, 500), (0, 200)], strict=True):
        df[col] = rng.uniform(lo, hi, n)
    return df


@pytest.mark.parametrize("column, value, message", [
    ("windspeed", float("inf"), "1 missing (NaN) or infinite value(s) (rows, counted from 0: 7)"),
    ("wind_GW", float("nan"), "1 missing (NaN) or infinite value(s) (rows, counted from 0: 7)"),
    ("rad_diffuse", 1e308, "1 value(s) outside its declared range [0, 1500] (e.g. 1e+308 in row 7)"),
    ("temperature", -300.0, "1 value(s) outside its declared range [-100, 70] (e.g. -300 in row 7)"),
])
def test_entity_validate_refuses_non_finite_and_out_of_range_numbers(column, value, message):
    from windpipe.entities.schema import PROCESSED
    from windpipe.errors import WindpipeError

    df = _processed()
    assert PROCESSED.validate(df, "x.parquet").equals(df)
    df.loc[7, column] = value
    with pytest.raises(WindpipeError) as err:
        PROCESSED.validate(df, "x.parquet")
    assert f"Column {column!r} of the processed entity in x.parquet has {message}" in str(err.value)
    assert err.value.fix


@pytest.mark.parametrize("mutate, message", [
    (lambda df: df.iloc[[0, 1, 2, 2, 3]], "repeats 1 timestamp(s) (e.g. 2015-01-01 02:00:00+00:00 in row 3)"),
    (lambda df: df.iloc[[0, 2, 1, 3]], "is not sorted by time (row 2: 2015-01-01 01:00:00+00:00 after 2015-01-01"),
    (lambda df: df.assign(utc_timestamp=df.utc_timestamp.where(df.index != 2)), "1 missing timestamp(s) (NaT"),
    (lambda df: df.assign(utc_timestamp=df.utc_timestamp.astype("int64")), "has dtype int64, expected datetime"),
])
def test_entity_validate_wants_unique_sorted_timestamps(mutate, message):
    from windpipe.entities.schema import PROCESSED
    from windpipe.errors import WindpipeError

    with pytest.raises(WindpipeError) as err:
        PROCESSED.validate(mutate(_processed()).reset_index(drop=True), "x.parquet")
    assert message in str(err.value), str(err.value)


def _raw_dir(tmp_path: Path) -> Path:
    from windpipe.data.synth import write_raw

    write_raw(tmp_path, seed=2, years=1)
    return tmp_path


def _edit_line(path: Path, line_no: int, column: str, value: str) -> None:
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[line_no - 1].split(",")
    cells[header.index(column)] = value
    lines[line_no - 1] = ",".join(cells)
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("file, column, value", [
    ("weather_data.csv", "DE_windspeed_10m", "inf"),
    ("weather_data.csv", "DE_temperature", "-Infinity"),
    ("time_series_60min_singleindex.csv", "DE_wind_generation_actual", "1e308"),
])
def test_process_step_refuses_inf_and_huge_raw_values_naming_file_column_line(tmp_path, file, column, value):
    from windpipe.data.process import process, read_raw
    from windpipe.errors import WindpipeError

    raw = _raw_dir(tmp_path)
    _edit_line(raw / file, 500, column, value)
    with pytest.raises(WindpipeError) as err:
        process(*read_raw(raw))
    text = str(err.value)
    assert file in text and column in text and "line(s) [500]" in text, text


@pytest.mark.parametrize("encoding", ["binary", "utf-16", "latin-1"])
def test_raw_files_that_are_not_utf8_are_named(tmp_path, encoding):
    from windpipe.data.process import read_raw
    from windpipe.errors import WindpipeError

    raw = _raw_dir(tmp_path)
    path = raw / "weather_data.csv"
    if encoding == "binary":
        path.write_bytes(bytes(range(256)) * 40)
    else:
        text = path.read_text().replace("2013-01-01T00:00:00Z", "2013-01-01T00:00:00Z München", 1)
        path.write_bytes(text.encode(encoding))
    with pytest.raises(WindpipeError) as err:
        read_raw(raw)
    assert "weather_data.csv" in str(err.value) and "UTF-8" in str(err.value), str(err.value)


def test_duplicate_raw_hours_keep_the_first_copy():
    import numpy as np
    import pandas as pd

    from windpipe.data.process import process
    from windpipe.data.synth import generate

    power, weather = generate(seed=5, years=1)
    rng = np.random.default_rng(1)
    rows = np.sort(rng.choice(np.arange(100, len(power) - 100), size=300, replace=False))
    # each repeated hour comes twice, the second copy with other values (as when clocks go back)
    second = power.iloc[rows].assign(DE_solar_generation_actual=-1.0, DE_wind_generation_actual=-1.0)
    power2 = pd.concat([power, second])
    weather2 = pd.concat([weather, weather.iloc[rows].assign(DE_temperature=99.0)])
    df = process(power2.sort_values("utc_timestamp", kind="stable"), weather2.sort_values("utc_timestamp",
                                                                                          kind="stable"))
    assert len(df) == len(process(power, weather))
    assert (df.wind_GW >= 0).all() and (df.temperature < 99).all(), "a repeated hour kept its second copy"


def _features(n: int = 20):
    return _processed(n).drop(columns=["solar_GW", "wind_GW"])


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.assign(utc_timestamp=d.utc_timestamp.astype("int64")), "is a number column (int64)"),
    (lambda d: d.assign(utc_timestamp=d.utc_timestamp.where(d.index != 4)), "1 missing timestamp(s) (NaT"),
    (lambda d: d.assign(utc_timestamp=d.utc_timestamp.where(d.index != 5, d.utc_timestamp[4])), "repeats 1 timestamp"),
    (lambda d: d.assign(windspeed=d.windspeed.where(d.index != 6, 1e308)), "outside its declared range [0, 120]"),
    (lambda d: d.assign(rad_horizontal=d.rad_horizontal.where(d.index != 6, -5.0)), "e.g. -5 in row 6"),
])
def test_predict_input_refuses_bad_timestamps_and_impossible_values(mutate, message):
    from windpipe.errors import WindpipeError
    from windpipe.scoring.validate import validate_input

    with pytest.raises(WindpipeError) as err:
        validate_input(mutate(_features()), where="Input in.parquet")
    assert message in str(err.value) and "in.parquet" in str(err.value), str(err.value)


def test_predict_drop_invalid_skips_impossible_values_too():
    from windpipe.scoring.validate import validate_input

    df = _features()
    df.loc[3, "windspeed"] = 1e308
    df.loc[8, "temperature"] = float("inf")
    valid = validate_input(df, drop_invalid=True)
    assert valid.dropped_rows == [3, 8] and len(valid.features) == len(df) - 2
    # shuffled rows are fine for scoring (the output keeps the input's row numbers)
    assert len(validate_input(_features().sample(frac=1, random_state=1)).features) == 20

"""Fault injection: killed servers and commands, full and read-only disks, hostile input, load (issue 16).

Tests that kill a server start their own platform (`make_platform`); the others share one. Points
inside a command are reached with the fault point of `windpipe.faults.fault_point`: the command
waits at the named point until the test has done its damage (see `Paused`).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from windpipe.pipeline.graph import build_graph
from windpipe.pipeline.interfaces import load_interfaces
from windpipe.stack import services as platform

from .conftest import REPO
from .processes import Paused, code_snapshot, kill9, popen, run

# ----------------------------------------------------------------------------------- helpers

@dataclass
class Disk:
    """A folder on a small or read-only disk, and what a command needs to run against it."""

    path: Path
    file_limit: int | None = None  # no tmpfs: a file-size limit (RLIMIT_FSIZE) stands in for the full disk

    def preexec(self) -> object:
        if self.file_limit is None:
            return None
        limit = self.file_limit

        def apply() -> None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        return apply

    def fill(self) -> None:
        """Use up the space that is left (tmpfs only)."""
        if self.file_limit is None:
            with contextlib.suppress(OSError), open(self.path / "filler", "wb") as fh:
                while True:
                    fh.write(b"\0" * 4096)
                    fh.flush()


@contextlib.contextmanager
def small_disk(tmp_path: Path, kb: int, read_only: bool = False) -> Iterator[Disk]:
    """A tmpfs of `kb` KiB (read-only if asked) where mounting works (root, as here and in CI); else a
    file-size limit for the command (read-only: a folder without write permission, unless we are root)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    opts = f"size={kb}k,mode=0777" + (",ro" if read_only else "")
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)],
                                                   capture_output=True).returncode == 0
    try:
        if mounted:
            yield Disk(mnt)
        elif read_only:
            if os.geteuid() == 0:
                pytest.skip("root without mount: no way to make a read-only folder here")
            mnt.chmod(0o555)
            yield Disk(mnt)
        else:
            yield Disk(mnt, file_limit=kb * 1024)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        else:
            mnt.chmod(0o755)


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


@pytest.mark.parametrize("args, code, named", [
    (["data", "synth", "--out", "{tmp}/raw", "--seed", "-1"], 2, "--seed"),
    (["serve", "--port", "70000"], 2, "--port"),
    (["serve", "--port", "0"], 2, "--port"),  # (was: served on the default port without a word)
    (["predict", "--input", "{tmp}/\udcffwind.parquet", "--output", "{tmp}/out.parquet"], 1, "not valid UTF-8"),
    (["predict", "--input", "{tmp}/in.parquet", "--output", "{tmp}/\udce9t\udce9.parquet"], 1, "not valid UTF-8"),
])
def test_bad_arguments_are_refused_before_anything_is_written(args, code, named, tmp_path):
    """A negative seed, a port outside 1-65535 or 0, a file name that is not UTF-8: a message, no traceback,
    nothing written (nothing runs: no platform is needed to refuse them)."""
    home = tmp_path / "state"
    os.rename(predict_input(tmp_path / "in0.parquet"), tmp_path / "\udcffwind.parquet")  # (pyarrow takes no such name)
    predict_input(tmp_path / "in.parquet")
    before = sorted(tmp_path.iterdir())
    proc = windpipe_cli(*[a.format(tmp=tmp_path) for a in args], home=home)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert named in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert sorted(tmp_path.iterdir()) == before and not home.exists()


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
    (lambda d: d.assign(utc_timestamp=d.utc_timestamp.where(d.index != 5, d.utc_timestamp[4])),
     "repeats an earlier row's time in 1 row(s) (rows, counted from 0: 5;"),
    (lambda d: d.assign(utc_timestamp=d.utc_timestamp.astype(str).where(d.index != 3, "noon")),
     "is not a time in 1 row(s) (rows, counted from 0: 3; e.g. 'noon')"),
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


# ----------------------------------------------------------------------------------- 2. a killed predict

@pytest.fixture(scope="module")
def registered(shared_platform, tmp_path_factory) -> dict:
    """A registered LR model on the shared platform (pinned by version: other tests move the aliases)."""
    from .models import log_registered_model

    return log_registered_model(shared_platform, alias=None, tmp_dir=tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def model_version(registered) -> int:
    return registered["version"]


def predict_input(path: Path, n: int = 3000) -> Path:
    import pandas as pd

    df = pd.concat([_features(n // 20)] * 20, ignore_index=True)
    df["utc_timestamp"] = pd.date_range("2016-01-01", periods=len(df), freq="h", tz="UTC")
    df.to_parquet(path, index=False)
    return path


def marts_agree_with_files(marts_url: str, outputs: list[Path], settled: bool = True) -> dict:
    """Every output file's batch is a complete batch with its rows; every complete batch's file is there.

    settled=False: a file may also hold a pending batch (its process was killed between the rename and the
    final mark; the next predict or `windpipe status` completes it)."""
    import pandas as pd
    from sqlalchemy import create_engine, text

    engine = create_engine(marts_url)
    with engine.connect() as conn:
        batches = pd.read_sql(text("select id, status, row_count, output_path from batches"), conn)
        rows = pd.read_sql(text("select batch_id, count(*) as n from output_mart group by batch_id"), conn)
    engine.dispose()
    complete = batches[batches.status == "complete"].set_index("id")
    for out in outputs:
        if out.exists():
            ids = pd.read_parquet(out, columns=["batch_id"]).batch_id.unique().tolist()
            if not settled and ids[0] in set(batches[batches.status == "pending"].id):
                continue
            assert len(ids) == 1 and ids[0] in complete.index, (out, ids, batches)
            assert complete.loc[ids[0], "row_count"] == len(pd.read_parquet(out))
            assert rows.set_index("batch_id").loc[ids[0], "n"] == complete.loc[ids[0], "row_count"]
    for bid, b in complete.iterrows():
        if b.output_path:
            path = Path(b.output_path)
            assert path.exists(), f"batch {bid} is complete but its file {path} is not there"
            assert pd.read_parquet(path, columns=["batch_id"]).batch_id.iloc[0] == bid
    return {"batches": batches, "complete": set(complete.index), "files": [o for o in outputs if o.exists()]}


@pytest.mark.slow
@pytest.mark.parametrize("point", ["predict:part", "predict:before_commit", "predict:after_commit",
                                   "predict:after_rename"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_predict_leaves_the_file_and_the_marts_in_agreement(shared_platform, model_version, tmp_path,
                                                                     point, sig):
    """predict:part: in the middle of a streamed batch (its first of three parts in the temporary file and the open
    transaction); the others: around the commit and the rename."""
    from windpipe.marts import queries, tables

    marts = f"sqlite:///{tmp_path / 'marts.db'}"
    # SIGKILL: big batches' path (the marts helper process); SIGTERM: the in-process writer. Parts of 1,000 rows.
    env = {"WINDPIPE_MARTS_URL": marts, "WINDPIPE_MARTS_HELPER_ROWS": "1" if sig == signal.SIGKILL else "0",
           "WINDPIPE_PREDICT_BATCH_ROWS": "1000"}
    inp, out = predict_input(tmp_path / "in.parquet"), tmp_path / "out.parquet"
    args = ["predict", "--input", str(inp), "--output", str(out), "--model-uri", f"models:/wind_solar/{model_version}"]
    paused = Paused(tmp_path, point)
    proc = popen(shared_platform, *args, extra_env={**env, **paused.env})
    paused.wait(proc)
    proc.send_signal(sig)
    if sig == signal.SIGTERM:
        paused.go()  # (the signal waits for the end of the commit-and-rename step when it came inside it)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    # readers trust only complete batches, also before anything tidies up (a kill -9 just after the
    # rename leaves the batch pending until then)
    state = marts_agree_with_files(marts, [out], settled=False)
    engine = tables.get_engine(marts)
    assert set(queries.latest_batches(engine).id) == state["complete"]
    from .conftest import latest_run

    run = latest_run(shared_platform, "predict")
    if sig == signal.SIGTERM:
        assert "stopped" in err and "Traceback" not in err, (proc.returncode, err[-2000:])
        assert out.exists() == (point in ("predict:after_commit", "predict:after_rename"))
        assert run.info.status == "KILLED" and "stopped" in run.data.tags["windpipe.failure_reason"]
    else:  # kill -9: the run is left RUNNING; `windpipe status` sees its process is gone and tidies up
        assert run.info.status == "RUNNING"
        status = shared_platform.windpipe("status", extra_env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        assert f"run {run.info.run_id}: marked KILLED" in status.stdout
        killed = latest_run(shared_platform, "predict")
        assert killed.info.status == "KILLED" and "process" in killed.data.tags["windpipe.failure_reason"]
        settled = {"predict:after_commit": "removed", "predict:after_rename": "completed"}.get(point)
        assert (f"batch 1: {settled}" in status.stdout) if settled else "batch" not in status.stdout, status.stdout
        marts_agree_with_files(marts, [out])
    if point in ("predict:part", "predict:before_commit"):  # no output, no row of the batch
        assert not out.exists()
        assert queries.count_rows(tables.get_engine(marts)) == {"batches": 0, "input_mart": 0, "output_mart": 0,
                                                                 "drift": 0}
    # the next predict tidies up after the killed one, and takes a batch id no file holds
    out2 = tmp_path / "out2.parquet"
    args2 = [a if a != str(out) else str(out2) for a in args]
    again = shared_platform.windpipe(*args2, extra_env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    state = marts_agree_with_files(marts, [out, out2])
    assert (state["batches"].status == "complete").all(), state["batches"]
    import pandas as pd

    ids = [pd.read_parquet(f, columns=["batch_id"]).batch_id.iloc[0] for f in state["files"]]
    assert len(set(ids)) == len(ids), "a batch id was used for two files"
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    tables.dispose_engines()



# ----------------------------------------------------------------------------------- 7. runs left RUNNING

@pytest.mark.slow
def test_sigterm_in_the_rf_grid_ends_parent_and_child_killed(shared_platform, registered, tmp_path):
    from .conftest import latest_run

    env = {**shared_platform.env, "MLFLOW_EXPERIMENT_NAME": shared_platform.settings.experiment}
    paused = Paused(tmp_path, "rf:grid_child")
    step = REPO / "projects" / "rf" / "step.py"
    proc = subprocess.Popen([sys.executable, str(step), "grid", "--data", registered["entity_uri"],
                             "--n-estimators", "4,8", "--max-depth", "3", "--min-samples-leaf", "1", "--seed", "1",
                             "--test-size", "0.2", "--split-by", "random", "--backtest-folds", "0"],
                            env={**env, **paused.env},
                            cwd=step.parent, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    paused.wait(proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "stopped" in err and "Traceback" not in err, err[-2000:]
    parent = latest_run(shared_platform, "rf", "grid")
    child = latest_run(shared_platform, "rf", "grid_child")
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert (parent.info.status, child.info.status) == ("KILLED", "KILLED")
    assert "stopped" in child.data.tags["windpipe.failure_reason"]


@pytest.mark.slow
def test_runs_whose_process_is_gone_are_found(shared_platform):
    """A RUNNING run whose process is gone (kill -9) ends KILLED; a live one, its children and other hosts' stay."""
    import mlflow

    from windpipe import identity
    from windpipe.tracking.runs import mark_killed_runs

    client = mlflow.MlflowClient(shared_platform.tracking_uri)
    exp = client.create_experiment(f"killed-{os.getpid()}-{time.time_ns()}")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    def run(process: str | None, parent: str | None = None) -> str:
        tags = {"windpipe.process": process} if process else {}
        if parent:
            tags["mlflow.parentRunId"] = parent
        return client.create_run(exp, tags=tags).info.run_id

    gone = run(str(identity.of(os.getpid())).replace(str(os.getpid()), str(dead.pid), 1))
    orphan = run(None, parent=gone)
    alive = run(str(identity.current()))
    child_of_alive = run(None, parent=alive)
    elsewhere = run(f"another-host {dead.pid} 12.00")
    reused = run(f"{identity.current().host} {os.getpid()} 12.00")  # this pid, but another start time
    assert sorted(mark_killed_runs(client, [exp])) == sorted([gone, orphan, reused])
    status = {r: client.get_run(r).info.status for r in (gone, orphan, alive, child_of_alive, elsewhere, reused)}
    assert status == {gone: "KILLED", orphan: "KILLED", reused: "KILLED", alive: "RUNNING",
                      child_of_alive: "RUNNING", elsewhere: "RUNNING"}
    assert "process" in client.get_run(gone).data.tags["windpipe.failure_reason"]
    assert "parent" in client.get_run(orphan).data.tags["windpipe.failure_reason"]


@pytest.mark.parametrize("family, params, message", [
    ("rf", {"n_estimators": "1e9", "max_depth": "10", "min_samples_leaf": "3"}, "n_estimators must be at most 5000"),
    ("keras", {"epochs": "1e9", "batch_size": "64", "learning_rate": "0.01", "hidden_units": "8", "patience": "3",
               "validation_split": "0.1", "ensemble": "1", "bins": "0"}, "epochs must be at most 10000"),
    ("gbm", {"max_iter": "1e9", "learning_rate": "0.1", "max_leaf_nodes": "31", "min_samples_leaf": "20",
             "l2_regularization": "0", "max_features": "0.5"}, "max_iter must be at most 5000"),
])
def test_parameter_bounds_refuse_absurd_sizes(family, params, message):
    from windpipe.errors import WindpipeError
    from windpipe.training import families

    with pytest.raises(WindpipeError, match=message) as err:
        families.get(family).parse(seed=1, **params)
    assert "-P" in err.value.fix


# ----------------------------------------------------------------------------------- 4. disks that say no

def _failed_run_says(platform_, text: str) -> None:
    from .conftest import latest_run

    run = latest_run(platform_, "predict")
    assert run.info.status == "FAILED" and text in run.data.tags.get("windpipe.failure_reason", ""), run.data.tags


def _complete_batches(marts: str) -> int:
    from windpipe.marts import queries, tables

    n = len(queries.latest_batches(tables.get_engine(marts)))
    tables.dispose_engines()
    return n


@pytest.mark.slow
@pytest.mark.parametrize("case", ["read-only", "full", "folder", "1e308"])
def test_predict_refuses_what_it_cannot_write_or_score(shared_platform, model_version, tmp_path, case):
    import pandas as pd

    marts = f"sqlite:///{tmp_path / 'marts.db'}"
    inp = predict_input(tmp_path / "in.parquet", n=20_000)  # ~1 MB of output
    if case == "1e308":
        df = pd.read_parquet(inp)
        df.loc[17, "windspeed"] = 1e308
        df.to_parquet(inp, index=False)
    with small_disk(tmp_path, 128, read_only=case == "read-only") as disk:
        out = tmp_path / "a-folder" if case == "folder" else disk.path / "out.parquet"
        if case == "folder":
            out.mkdir()
        proc = run(shared_platform, "predict", "--input", str(inp), "--output", str(out), "--overwrite",
                   "--model-uri", f"models:/wind_solar/{model_version}", extra_env={"WINDPIPE_MARTS_URL": marts},
                   preexec_fn=disk.preexec())
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert proc.stderr.startswith("error: ") and "fix:" in proc.stderr and "Traceback" not in proc.stderr
        expected = {"read-only": "Read-only file system", "full": "Cannot write", "folder": "is a folder, not a file",
                    "1e308": "outside its declared range [0, 120] (e.g. 1e+308 in row 17)"}[case]
        assert expected in proc.stderr, proc.stderr
        assert (out.is_dir() and not any(out.iterdir())) if case == "folder" else not out.exists()
        assert not [p for p in disk.path.iterdir() if p.name.endswith(".tmp")]
    _failed_run_says(shared_platform, expected)
    assert _complete_batches(marts) == 0


@pytest.mark.slow
@pytest.mark.parametrize("case", ["read-only", "full", "folder"])
def test_report_refuses_an_output_it_cannot_write(use_platform, registered, tmp_path, case):
    import mlflow

    mlflow.MlflowClient().set_registered_model_alias("wind_solar", "production", registered["version"])
    with small_disk(tmp_path, 64, read_only=case == "read-only") as disk:
        out = tmp_path / "a-folder" if case == "folder" else disk.path / "report.html"
        if case == "folder":
            out.mkdir()
        proc = run(use_platform, "report", "--out", str(out), preexec_fn=disk.preexec())
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
        expected = {"read-only": "Read-only file system", "full": "Cannot write", "folder": "is a folder"}[case]
        assert expected in proc.stderr, proc.stderr
        assert out.is_dir() if case == "folder" else not out.exists()
        assert not [p for p in disk.path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.slow
def test_up_on_a_full_state_folder_starts_nothing(make_platform, tmp_path):
    import psutil

    p = make_platform(start=False)
    with small_disk(tmp_path, 64) as disk:
        disk.fill()
        home = disk.path / "state"
        proc = run(p, "up", extra_env={"WINDPIPE_HOME": str(home)}, preexec_fn=disk.preexec(), timeout=120)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "error: " in proc.stderr and "fix:" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert "space" in proc.stderr or "exited while starting" in proc.stderr, proc.stderr
        ours = []
        for proc_ in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error):
                if proc_.environ().get("WINDPIPE_HOME") == str(home):
                    ours.append(proc_.pid)
        assert ours == [], "up left a server of the full state folder running"
        from windpipe.stack.procs import port_is_free

        assert port_is_free("127.0.0.1", p.settings.ftp_port) and port_is_free("127.0.0.1", p.settings.mlflow_port)


@pytest.mark.slow
def test_a_nearly_full_state_folder_is_named_by_up_status_and_a_failed_write(make_platform, tmp_path):
    """The state folder's disk: `up` refuses to start on one nearly full (nothing written); once it fills under
    running servers, `status` says DOWN for the disk (no crash in its tidying up) and a command whose write the
    tracking server answers with 503 names the disk, not MLflow's retries."""
    p = make_platform(start=False)
    inp = predict_input(tmp_path / "in.parquet", n=60)
    with small_disk(tmp_path, 300 * 1024) as disk:
        if disk.file_limit is not None:
            pytest.skip("no tmpfs here: a disk cannot be filled")
        home = disk.path / "state"
        env = {"WINDPIPE_HOME": str(home)}
        proc = run(p, "up", extra_env={**env, "WINDPIPE_MIN_FREE_MB": "1000"}, timeout=120)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"the filesystem mounted at {disk.path}" in proc.stderr and "MB free" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and not home.exists()
        try:
            proc = run(p, "up", extra_env=env, timeout=180)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            disk.fill()
            proc = run(p, "status", extra_env=env, timeout=120)
            assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
            line = next(ln for ln in proc.stdout.splitlines() if " disk " in ln)
            assert line.startswith("DOWN") and f"mounted at {disk.path}" in line, proc.stdout
            proc = run(p, "predict", "--input", str(inp), "--output", str(tmp_path / "out.parquet"), extra_env=env,
                       timeout=300)
            assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
            assert "cannot write" in proc.stderr and f"mounted at {disk.path}" in proc.stderr, proc.stderr
            assert not (tmp_path / "out.parquet").exists()
        finally:
            run(p, "down", extra_env=env, timeout=120)


def test_a_server_whose_pid_file_cannot_be_written_is_stopped_again(tmp_path):
    from windpipe.errors import WindpipeError
    from windpipe.identity import pid_alive
    from windpipe.stack.procs import start_detached

    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    started = []
    real = subprocess.Popen

    def spy(*args, **kwargs):
        started.append(real(*args, **kwargs))
        return started[-1]

    import windpipe.stack.procs as procs

    procs.subprocess.Popen = spy
    try:
        with pytest.raises(WindpipeError, match="Cannot write the pid file") as err:
            start_detached([sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ),
                           tmp_path / "log.txt", blocker / "run" / "x.pid", tmp_path)
    finally:
        procs.subprocess.Popen = real
    assert "free space" in err.value.fix
    assert len(started) == 1 and not pid_alive(started[0].pid)


@pytest.mark.slow
def test_marts_locked_too_long_or_on_a_full_disk(shared_platform, model_version, tmp_path):
    import sqlite3

    from windpipe.marts import tables

    args = ["predict", "--input", str(predict_input(tmp_path / "in.parquet")), "--model-uri",
            f"models:/wind_solar/{model_version}"]
    # another writer holds the lock longer than the (shortened) lock timeout
    db = tmp_path / "locked.db"
    tables.get_engine(f"sqlite:///{db}")
    tables.dispose_engines()
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        proc = run(shared_platform, *args, "--output", str(tmp_path / "a.parquet"),
                   extra_env={"WINDPIPE_MARTS_URL": f"sqlite:///{db}", "WINDPIPE_MARTS_LOCK_TIMEOUT": "1"})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert proc.returncode == 1 and "stayed locked by another writer" in proc.stderr, proc.stderr
    assert "WINDPIPE_MARTS_LOCK_TIMEOUT" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "a.parquet").exists()
    _failed_run_says(shared_platform, "stayed locked")
    # the marts database on a disk that fills up while the batch goes in
    with small_disk(tmp_path, 256) as disk:
        url = f"sqlite:///{disk.path / 'marts.db'}"
        tables.get_engine(url)
        tables.dispose_engines()
        disk.fill()
        proc = run(shared_platform, *args, "--output", str(tmp_path / "b.parquet"),
                   extra_env={"WINDPIPE_MARTS_URL": url, "WINDPIPE_MARTS_HELPER_ROWS": "0"}, preexec_fn=disk.preexec())
    assert proc.returncode == 1 and "is full or failing" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "b.parquet").exists()
    _failed_run_says(shared_platform, "full or failing")


# ----------------------------------------------------------------------------------- 10. file modes and secrets

def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.slow
def test_state_folder_databases_and_logs_are_private(use_platform):
    from windpipe.marts import tables

    home = use_platform.home
    tables.get_engine(settings=use_platform.settings)  # the marts database of the state folder
    tables.dispose_engines()
    assert _mode(home) == 0o700
    private = [home / "mlflow.db", home / "marts.db", *(home / "logs").glob("*.log"), *(home / "run").glob("*.pid"),
               home / "ftp_password"]
    private += [p for p in home.glob("*.db-*")]  # SQLite's WAL and shared-memory files
    assert len(private) >= 7
    assert {str(p.relative_to(home)): oct(_mode(p)) for p in private} == {
        str(p.relative_to(home)): oct(0o600) for p in private}


def test_up_makes_an_old_world_readable_state_folder_private(tmp_path):
    from windpipe.settings import Settings

    home = tmp_path / "state"
    (home / "logs").mkdir(parents=True)
    for name in ("mlflow.db", "marts.db", "logs/mlflow.log"):
        (home / name).write_text("x")
        (home / name).chmod(0o644)
    home.chmod(0o755)
    platform.ensure_state_folder(Settings(home=home))
    assert _mode(home) == 0o700
    assert {_mode(home / n) for n in ("mlflow.db", "marts.db", "logs/mlflow.log")} == {0o600}


@pytest.mark.slow
def test_ftp_user_may_list_read_mkdir_write_rename_and_nothing_else(shared_platform):
    import ftplib
    import io

    from windpipe.stack import ftp as ftp_server

    with ftplib.FTP() as ftp:
        ftp.connect("127.0.0.1", shared_platform.settings.ftp_port, timeout=10)
        ftp.login(shared_platform.settings.ftp_user, ftp_server.ftp_password(shared_platform.settings))
        folder = f"/artifacts/perm-{os.getpid()}-{time.time_ns()}"
        ftp.mkd(folder)
        ftp.cwd(folder)
        ftp.storbinary("STOR a.txt", io.BytesIO(b"hello"))
        ftp.rename("a.txt", "b.txt")
        assert ftp.nlst() == ["b.txt"]
        got = io.BytesIO()
        ftp.retrbinary("RETR b.txt", got.write)
        assert got.getvalue() == b"hello"
        for command in ("SITE CHMOD 777 b.txt", "DELE b.txt", f"RMD {folder}", "MFMT 20200101000000 b.txt"):
            with pytest.raises(ftplib.error_perm, match="550"):
                ftp.sendcmd(command)
        with pytest.raises(ftplib.error_perm, match="550"):
            ftp.storbinary("APPE b.txt", io.BytesIO(b"more"))


def test_credentials_in_the_tracking_uri_are_never_printed(tmp_path):
    from windpipe.stack.procs import free_port

    uri = f"http://alice:s3cret-pw@127.0.0.1:{free_port()}"
    env = {"MLFLOW_TRACKING_URI": uri}
    for args in (["compare"], ["models"], ["env"], ["--debug", "models"]):
        proc = windpipe_cli(*args, env=env, home=tmp_path)
        assert "s3cret-pw" not in proc.stdout + proc.stderr, (args, proc.stdout, proc.stderr)
    proc = windpipe_cli("compare", env=env, home=tmp_path)
    assert proc.returncode == 1 and "http://alice:***@127.0.0.1" in proc.stderr and "windpipe up" in proc.stderr
    exports = windpipe_cli("env", env=env, home=tmp_path).stdout
    assert "export MLFLOW_TRACKING_URI" not in exports and "alice:***@" in exports
    assert "export MLFLOW_DISABLE_TELEMETRY=true" in exports and "export MLFLOW_HTTP_REQUEST_MAX_RETRIES=2" in exports


def test_redact_masks_every_uri_password():
    from windpipe.errors import WindpipeError, redact

    text = "a http://u:p@h:5000/x and ftp://windpipe:Zx9-_~@127.0.0.1:2121/artifacts, postgresql+psycopg://m:pw@db/m"
    assert redact(text) == ("a http://u:***@h:5000/x and ftp://windpipe:***@127.0.0.1:2121/artifacts, "
                            "postgresql+psycopg://m:***@db/m")
    assert redact("http://host:5000/path@v1 sqlite:////a/b.db") == "http://host:5000/path@v1 sqlite:////a/b.db"
    assert "pw" not in str(WindpipeError("down: http://u:pw@h", "set http://u:pw@h"))


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_keep_the_users_umask(tmp_path, umask, mode):
    from windpipe.fileio import atomic_path, atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "report.html", "<html>")
        with atomic_path(tmp_path / "out.parquet") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "report.html") == mode and _mode(tmp_path / "out.parquet") == mode


@pytest.mark.slow
def test_predict_output_and_report_keep_the_users_umask(use_platform, registered, tmp_path):
    import mlflow

    mlflow.MlflowClient().set_registered_model_alias("wind_solar", "production", registered["version"])
    env = {"WINDPIPE_MARTS_URL": f"sqlite:///{tmp_path / 'marts.db'}"}
    out, report = tmp_path / "out.parquet", tmp_path / "report.html"
    proc = run(use_platform, "predict", "--input", str(predict_input(tmp_path / "in.parquet", 200)), "--output",
               str(out), "--model-uri", f"models:/wind_solar/{registered['version']}", extra_env=env,
               preexec_fn=lambda: os.umask(0o022))
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run(use_platform, "report", "--out", str(report), preexec_fn=lambda: os.umask(0o027))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (_mode(out), _mode(report)) == (0o644, 0o640)


# ----------------------------------------------------------------------------------- 3. servers that die mid-step

@pytest.mark.slow
@pytest.mark.parametrize("server", [platform.MLFLOW, platform.FTP])
def test_a_server_killed_inside_predict_is_named_within_seconds(make_platform, tmp_path, server):
    from .models import log_registered_model

    p = make_platform()
    version = log_registered_model(p, alias=None, tmp_dir=tmp_path)["version"]
    marts = f"sqlite:///{tmp_path / 'marts.db'}"
    out = tmp_path / "out.parquet"
    args = ["predict", "--input", str(predict_input(tmp_path / "in.parquet")), "--output", str(out),
            "--model-uri", f"models:/wind_solar/{version}"]
    paused = Paused(tmp_path, "predict:before_commit")
    proc = popen(p, *args, extra_env={"WINDPIPE_MARTS_URL": marts, **paused.env})
    paused.wait(proc)
    kill9(platform.running_pid(p.settings, server))
    paused.go()
    _, err = proc.communicate(timeout=120)  # it ends by itself, without MLflow's minutes of retries
    assert proc.returncode == 1, err[-3000:]
    named = "MLflow tracking server" if server == platform.MLFLOW else "FTP artifact server"
    assert err.startswith("error: ") and named in err and "windpipe up" in err, err[-3000:]
    assert "Traceback" not in err
    assert not out.exists() and _complete_batches(marts) == 0  # nothing committed
    # the server back: the same command goes through
    assert p.windpipe("up").returncode == 0
    again = p.windpipe(*args, extra_env={"WINDPIPE_MARTS_URL": marts})
    assert again.returncode == 0, again.stderr[-3000:]
    assert out.exists() and _complete_batches(marts) == 1


@pytest.mark.slow
def test_servers_killed_during_pipeline_steps_then_the_pipeline_resumes(make_platform, raw_dir, tmp_path):
    import mlflow

    from .conftest import latest_run

    snap = code_snapshot(tmp_path / "code")  # (code versions are part of the cache key)
    p = make_platform()
    mlflow.set_tracking_uri(p.tracking_uri)
    args = ["pipeline", "run", "--raw", str(raw_dir), "--quick", "--env-manager", "local", "-P", "rf.n_estimators=4",
            "-P", "rf.max_depth=4", "-P", "keras.epochs=1"]
    env = {"PYTHONPATH": str(snap)}

    def pipeline(server: str | None, step: str | None) -> tuple[int, str, str]:
        paused = Paused(tmp_path, f"step:{step}") if step else None
        proc = popen(p, *args, extra_env={**env, **(paused.env if paused else {})}, cwd=snap)
        if paused:
            paused.wait(proc)
            kill9(platform.running_pid(p.settings, server))
            paused.go()
        out, err = proc.communicate(timeout=900)
        return proc.returncode, out, err

    # the tracking server dies as the lr step starts: the pipeline ends with the server named
    code, out, err = pipeline(platform.MLFLOW, "lr")
    assert code == 1, out[-3000:] + err[-3000:]
    assert "MLflow tracking server" in err and "does not answer" in err and "windpipe up" in err, err[-3000:]
    assert "Traceback" not in err
    assert p.windpipe("up").returncode == 0
    first = latest_run(p, "pipeline")
    assert first.info.status == "RUNNING"  # the server could not be told; the next pipeline sees to it

    # the FTP server dies as lr starts again (process is reused): lr fails naming it
    code, out, err = pipeline(platform.FTP, "lr")
    assert code == 1, out[-3000:] + err[-3000:]
    assert "FTP artifact server" in err and "windpipe up" in err and "Traceback" not in err, err[-3000:]
    assert f"run {first.info.run_id}: marked KILLED" in out, out[-3000:]
    assert mlflow.get_run(first.info.run_id).info.status == "KILLED"
    lr = latest_run(p, "lr")
    assert lr.info.status == "FAILED" and "FTP artifact server" in lr.data.tags["windpipe.failure_reason"]

    # both back: the pipeline resumes; what finished before is reused, nothing is lost
    assert p.windpipe("up").returncode == 0
    code, out, err = pipeline(None, None)
    assert code == 0, out[-3000:] + err[-3000:]
    last = latest_run(p, "pipeline")
    how = {k.removeprefix("windpipe.pipeline."): v.split()[1] for k, v in last.data.tags.items()
           if k.startswith("windpipe.pipeline.")}
    # process finished in the first run: reused, not lost (keras and rf run beside lr: reused or rerun)
    reused = {s for s, ran in how.items() if ran == "reused"}
    assert "process" in reused and {"lr", "compare", "promote"}.isdisjoint(reused), how
    # every step of the training pipeline is accounted for (from the interfaces: a new family counts)
    steps = set(build_graph(load_interfaces(snap / "projects"), "training").order)
    assert set(how.values()) == {"reused", "ran"} and set(how) == steps, (how, steps)
    assert last.info.status == "FINISHED"
    running = mlflow.search_runs(experiment_names=[p.settings.experiment], output_format="list",
                                 filter_string="attributes.status = 'RUNNING'")
    assert running == []

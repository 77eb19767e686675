"""Batch prediction, data marts and drift: pure pieces in-process, the CLI and `mlflow run` on a real platform."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from windpipe.errors import WindpipeError
from windpipe.marts import dialects, local, queries, tables, writers
from windpipe.names import FEATURES, TIMESTAMP
from windpipe.scoring import drift
from windpipe.scoring.validate import validate_input
from windpipe.settings import Settings

from .conftest import latest_run, mlflow_run
from .models import log_registered_model, tiny_processed


def features(n: int = 50, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"windspeed": rng.gamma(4, 1.2, n), "temperature": rng.normal(10, 7, n),
                       "rad_horizontal": rng.uniform(0, 300, n), "rad_diffuse": rng.uniform(0, 120, n)})
    df.insert(0, TIMESTAMP, pd.date_range("2020-01-01", periods=n, freq="h", tz="UTC"))
    return df


@pytest.fixture
def engine(tmp_path):
    eng = tables.get_engine(f"sqlite:///{tmp_path / 'marts.db'}")
    yield eng
    tables.dispose_engines()


# ---------------------------------------------------------------- validation (no servers)

def test_validate_reports_extra_columns_and_keeps_order():
    df = features(5).assign(solar_GW=1.0, note="x")
    v = validate_input(df)
    assert list(v.features.columns) == FEATURES and v.features.dtypes.eq("float64").all()
    assert v.extra_columns == ["solar_GW", "note"]
    assert v.row_numbers.tolist() == [0, 1, 2, 3, 4]
    assert v.timestamps.iloc[0] == pd.Timestamp("2020-01-01", tz="UTC")


def test_validate_integers_are_accepted_as_numbers():
    df = features(3)
    df["temperature"] = [1, 2, 3]
    assert validate_input(df).features["temperature"].tolist() == [1.0, 2.0, 3.0]


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.drop(columns=["windspeed", "rad_diffuse"]), "lacks column(s) windspeed, rad_diffuse"),
    (lambda d: d.assign(temperature=d.temperature.astype(str).where(d.index != 2, "warm")),
     "Column 'temperature'"),
    (lambda d: d.head(0), "has no rows"),
    (lambda d: d.assign(windspeed=d.windspeed.mask(d.index.isin([3, 7, 11]))), "3 row(s) with missing"),
])
def test_validate_refuses_bad_input(mutate, message):
    with pytest.raises(WindpipeError) as exc:
        validate_input(mutate(features(20)))
    assert message in str(exc.value)
    assert exc.value.fix


def test_validate_nan_message_names_rows_and_drop_invalid_skips_them():
    df = features(20)
    df.loc[[3, 7], "windspeed"] = np.nan
    df.loc[11, "rad_diffuse"] = np.inf
    with pytest.raises(WindpipeError, match=r"rows, counted from 0: 3, 7, 11") as exc:
        validate_input(df)
    assert "--drop-invalid" in exc.value.fix
    v = validate_input(df, drop_invalid=True)
    assert len(v.features) == 17 and v.dropped_rows == [3, 7, 11]
    assert 3 not in v.row_numbers and v.row_numbers[3] == 4
    assert v.timestamps.iloc[3] == df[TIMESTAMP].iloc[4]


def test_validate_all_rows_invalid_is_refused_even_with_drop_invalid():
    df = features(3).assign(windspeed=np.nan)
    with pytest.raises(WindpipeError, match="nothing is left"):
        validate_input(df, drop_invalid=True)


def test_read_input_missing_and_empty_files(tmp_path):
    from windpipe.scoring.validate import read_input

    with pytest.raises(WindpipeError, match="does not exist"):
        read_input(tmp_path / "nope.parquet")
    (tmp_path / "empty.parquet").write_bytes(b"")
    with pytest.raises(WindpipeError, match="empty"):
        read_input(tmp_path / "empty.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(WindpipeError, match="Cannot read"):
        read_input(tmp_path / "junk.parquet")


def _parts(path, rows: int, **check) -> list:
    """Every part of the input file at `path`, checked as `windpipe predict` streams it."""
    from windpipe.scoring.validate import InputCheck, InputFile

    with InputFile(path) as source:
        checker = InputCheck(check.pop("columns", None), where=f"Input {path}", rows=source.rows,
                             drop_invalid=check.pop("drop_invalid", False))
        out = [checker.part(frame, first) for first, frame in source.parts(rows)]
        checker.finish()
    return out


def test_streamed_parts_are_checked_as_one_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    df = features(30)
    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path, row_group_size=8)  # 4 row groups
    parts = _parts(path, 7)
    assert [p.row_numbers[0] for p in parts] == [0, 7, 14, 21, 28] and sum(len(p.features) for p in parts) == 30
    assert pd.concat([p.timestamps for p in parts], ignore_index=True).equals(df[TIMESTAMP])
    # a bad row in the last part, a time repeated from an earlier part: named by their row in the file
    bad = df.copy()
    bad.loc[29, "windspeed"] = np.nan
    bad.to_parquet(path, row_group_size=8)
    with pytest.raises(WindpipeError, match=r"\(rows 28 to 29\) has 1 row\(s\) with missing .*counted from 0: 29\)"):
        _parts(path, 7)
    bad = df.copy()
    bad.loc[25, TIMESTAMP] = bad.loc[2, TIMESTAMP]
    bad.to_parquet(path)
    with pytest.raises(WindpipeError, match=r"of Input \S+ repeats an earlier row's time in 1 row\(s\) \(rows, "
                                            r"counted from 0: 25;"):
        _parts(path, 30)  # (within one part)
    with pytest.raises(WindpipeError, match=r"\(rows 21 to 27\) repeats an earlier row's time in 1 row\(s\) "
                                            r"\(rows, counted from 0: 25;"):
        _parts(path, 7)
    # --drop-invalid: a part whose every row goes is skipped; a file whose every row goes is refused
    holes = df.copy()
    holes.loc[7:13, "windspeed"] = np.nan
    holes.to_parquet(path)
    parts = _parts(path, 7, drop_invalid=True)
    assert [len(p.features) for p in parts] == [7, 0, 7, 7, 2]
    holes.loc[:, "windspeed"] = np.nan
    holes.to_parquet(path)
    with pytest.raises(WindpipeError, match="nothing is left"):
        _parts(path, 7, drop_invalid=True)
    df.head(0).to_parquet(path)
    with pytest.raises(WindpipeError, match="has no rows"):
        _parts(path, 7)


def test_a_time_repeated_across_parts_in_any_order_is_found():
    from windpipe.scoring.validate import _SeenTimes

    seen = _SeenTimes()
    rng = np.random.default_rng(0)
    times = rng.permutation(10_000).astype("int64")
    for part in np.array_split(times, 37):
        assert not seen.repeats(part).any()
        seen.add(part)
    assert len(seen._runs) <= 8  # merged as they grow
    again = np.array([times[5], 10_000, times[9_999], -1], dtype="int64")
    assert seen.repeats(again).tolist() == [True, False, True, False]


def test_the_times_of_a_file_in_time_order_take_flat_memory():
    """10M times a minute apart, with a gap (as a long file streams): a few progressions, not 80 MB of times; a
    repeat of any earlier part, or of a progression's last point, is still found, a time in the gap is not."""
    from windpipe.scoring.validate import _SeenTimes

    minute = 60 * 10**9
    times = np.delete(np.arange(10_000_000, dtype="int64"), np.s_[4_000_000:4_000_010]) * minute
    seen = _SeenTimes()
    for part in np.array_split(times, 100):
        assert not seen.repeats(part).any()
        seen.add(part)
    assert seen._runs == [] and len(seen._starts) <= 101  # one progression per part (and one for the gap)
    probe = np.array([0, 4_000_005, 3_999_999, 4_000_010, 9_999_999, 10_000_000, 7], dtype="int64") * minute
    assert seen.repeats(probe).tolist() == [True, False, True, True, True, False, True]
    assert seen.repeats(np.array([minute // 2], dtype="int64")).tolist() == [False]  # between two minutes


def _spliced(path):
    """`path` (two row groups, windspeed int64) with its second row group's windspeed declared DOUBLE in the footer:
    a file whose schema changes between row groups (as a spliced or damaged file has)."""
    data = bytearray(path.read_bytes())
    length = int.from_bytes(data[-8:-4], "little")
    start = len(data) - 8 - length
    footer = bytes(data[start:-8])
    # a column chunk's metadata: its type (thrift field 1, INT64 = zigzag 4), encodings, then its path (windspeed)
    names = [i for i in range(len(footer)) if footer.startswith(b"windspeed", i)]
    chunks = [footer.rfind(b"\x15\x04\x19", i - 12, i) for i in names]
    chunks = [at for at in chunks if at > 0]
    assert len(chunks) == 2  # one per row group
    data[start + chunks[-1] + 1] = 0x0A  # DOUBLE
    path.write_bytes(bytes(data))
    return path


def test_damaged_inputs_get_a_clear_message(tmp_path):
    from windpipe.scoring.validate import InputFile, read_input

    df = features(40)
    good = tmp_path / "good.parquet"
    df.to_parquet(good)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[:-200])  # a download or copy cut short: no footer
    with pytest.raises(WindpipeError, match=r"Cannot read .*cut.parquet as parquet") as exc:
        InputFile(cut)
    assert "parquet" in exc.value.fix
    mixed = tmp_path / "mixed.parquet"
    df.assign(windspeed=np.arange(40)).to_parquet(mixed, row_group_size=20, compression="none")
    with pytest.raises(WindpipeError, match=r"schema changes in row group 1 \(column 'windspeed' is DOUBLE there, "
                                            r"INT64 in the file's schema\)"):
        read_input(_spliced(mixed))
    # a page damaged after a good footer: the part that cannot be decoded is named
    broken = tmp_path / "broken.parquet"
    df.to_parquet(broken, row_group_size=20, compression="snappy")
    data = bytearray(broken.read_bytes())
    data[200:400] = bytes(200)
    broken.write_bytes(bytes(data))
    with pytest.raises(WindpipeError, match=r"Cannot read .*broken.parquet from row 0 on") as exc:
        with InputFile(broken) as source:
            list(source.parts(20))
    assert exc.value.fix


def test_a_model_out_of_memory_is_not_called_the_wrong_model():
    from windpipe.models.loading import predict

    class Hungry:
        def predict(self, X):
            raise MemoryError("Unable to allocate 30.8 GiB for an array with shape (4000000, 1035)")

    with pytest.raises(WindpipeError, match=r"ran out of memory scoring 50 rows \(Unable to allocate") as exc:
        predict(Hungry(), features(50)[FEATURES])
    assert "use a model" not in exc.value.fix and "memory" in exc.value.fix


def test_a_big_batch_is_scored_in_parts_of_bounded_size(monkeypatch):
    from windpipe.models import loading

    seen = []

    class Sizes:
        def predict(self, X):
            seen.append(len(X))
            return np.column_stack([X["windspeed"], X["temperature"]])

    monkeypatch.setattr(loading, "SCORE_ROWS", 16)
    df = features(50)[FEATURES]
    pred = loading.predict(Sizes(), df)
    assert seen == [16, 16, 16, 2]
    np.testing.assert_array_equal(pred, df[["windspeed", "temperature"]].to_numpy())


def test_requirement_mismatches_names_each_unmet_pin(tmp_path):
    from importlib.metadata import version

    from windpipe.models.loading import requirement_mismatches

    here = version("scikit-learn")
    (tmp_path / "requirements.txt").write_text(
        f"# comment\n-r other.txt\nscikit-learn=={here}\npandas==0.0.1\nno-such-package-xyz==1.0\nnumpy\n")
    assert requirement_mismatches(tmp_path) == [f"pandas==0.0.1 (installed {version('pandas')})",
                                                "no-such-package-xyz==1.0 (not installed)"]
    assert requirement_mismatches(tmp_path / "missing") == []


# ---------------------------------------------------------------- marts (SQLite in tmp)

def test_record_batch_links_output_rows_to_input_rows(engine):
    df = features(10)
    pred = np.column_stack([np.arange(10.0), np.arange(10.0) * 2])
    rows = np.array([0, 1, 2, 4, 5, 6, 7, 8, 9, 12])
    bid = writers.record_batch(engine, df[FEATURES], pred, model_name="wind_solar", model_version=3,
                               model_uri="models:/wind_solar/3", timestamps=df[TIMESTAMP], row_numbers=rows,
                               source="cli")
    b = queries.latest_batches(engine).iloc[0]
    assert b.id == bid and b.row_count == 10 and b.model_version == "3" and b.source == "cli"
    assert b.status == "complete" and b.drift_status == "unchecked" and len(b.input_hash) == 64
    assert b.input_hash == writers.input_hash(df[FEATURES], df[TIMESTAMP])
    joined = queries.batch_rows(engine, bid)
    assert joined.row_no.tolist() == rows.tolist()
    assert joined.solar_GW_pred.tolist() == pred[:, 0].tolist()
    np.testing.assert_allclose(joined[FEATURES].to_numpy(), df[FEATURES].to_numpy())
    assert pd.Timestamp(joined[TIMESTAMP].iloc[1]) == pd.Timestamp("2020-01-01 01:00")


def test_output_rows_need_an_input_row(engine):
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(tables.output_mart.insert(), [{"batch_id": 999, "row_no": 0, "solar_GW_pred": 1.0,
                                                   "wind_GW_pred": 1.0}])


@pytest.mark.parametrize("writer", ["SqliteWriter", "CoreWriter"])
def test_failed_batch_leaves_no_rows(engine, monkeypatch, writer):
    monkeypatch.setattr(dialects, "FAST_PATH", writer == "SqliteWriter")
    writers.record_batch(engine, features(5)[FEATURES], np.zeros((5, 2)), model_name="m", model_version=1,
                         model_uri="u")
    before = queries.count_rows(engine)
    cls = getattr(dialects, writer)
    real = cls.insert_columns

    def fail_on_output(self, table, columns):
        real(self, table, columns)  # the output rows are in, then the insert dies
        if table is tables.output_mart:
            raise RuntimeError("disk on fire")

    monkeypatch.setattr(cls, "insert_columns", fail_on_output)
    with pytest.raises(RuntimeError, match="disk on fire"):
        writers.record_batch(engine, features(7)[FEATURES], np.ones((7, 2)), model_name="m", model_version=1,
                             model_uri="u")
    assert queries.count_rows(engine) == before
    assert before["output_mart"] == 5


def _helper(tmp_path, rows: int = 1) -> Settings:
    """Settings that send batches of at least `rows` rows through the marts helper process (0: never)."""
    return Settings(home=tmp_path, marts_helper_rows=rows)


def _marts_state(engine) -> tuple:
    """Everything a batch wrote, without the ids and times that differ between databases."""
    b = queries.latest_batches(engine).drop(columns=["id", "created_at"])
    rows = [queries.batch_rows(engine, int(i)) for i in queries.latest_batches(engine).id]
    d = queries.drift_summary(engine).drop(columns=["batch", "created_at"])
    return b, rows, d, queries.count_rows(engine)


def test_helper_process_writes_what_the_local_path_writes(tmp_path, monkeypatch):
    from windpipe.marts import helper as marts_process

    started = []
    monkeypatch.setattr(marts_process.ProcessBatch, "__init__", lambda self, url, _real=marts_process.ProcessBatch
                        .__init__: (started.append(str(url)), _real(self, url))[1])
    df = features(300)
    df.loc[[4, 9], TIMESTAMP] = pd.NaT
    bad = drift.feature_drift(df.assign(windspeed=df.windspeed * 3.6)[FEATURES], df[FEATURES])  # km/h
    rows = np.delete(np.arange(302), [7, 100])
    pred = np.random.default_rng(1).normal(size=(300, 2))
    got = []
    for helper in (0, 1):
        eng = tables.get_engine(f"sqlite:///{tmp_path / f'm{helper}.db'}")
        bid = writers.record_batch(eng, df[FEATURES], pred, model_name="m", model_version=4, model_uri="u",
                                   timestamps=df[TIMESTAMP], row_numbers=rows, drift_rows=bad,
                                   drift_status=drift.batch_status(bad), run_id="r", rows_dropped=2,
                                   settings=_helper(tmp_path, helper))
        assert bid == 1
        got.append(_marts_state(eng))
    assert len(started) == 1 and started[0].endswith("m1.db")
    pd.testing.assert_frame_equal(got[0][0], got[1][0])
    pd.testing.assert_frame_equal(got[0][1][0], got[1][1][0])
    pd.testing.assert_frame_equal(got[0][2], got[1][2])
    assert got[1][3] == {"batches": 1, "input_mart": 300, "output_mart": 300, "drift": 4}
    joined = got[1][1][0]  # every output row found its input row, values exact
    assert joined.row_no.tolist() == rows.tolist() and joined.solar_GW_pred.tolist() == pred[:, 0].tolist()
    assert joined[FEATURES].to_numpy().tolist() == df[FEATURES].to_numpy().tolist()
    assert joined[TIMESTAMP].isna().sum() == 2 and got[1][0].drift_status.iloc[0] == "drift"
    tables.dispose_engines()


def _open_batch(tmp_path, n: int = 50) -> writers.BatchWriter:
    batch = writers.BatchWriter(f"sqlite:///{tmp_path / 'marts.db'}", rows=n, settings=_helper(tmp_path))
    batch.begin(model_name="m", model_version=1, model_uri="u")
    return batch


def test_helper_rolls_back_when_the_caller_fails(tmp_path):
    with pytest.raises(RuntimeError, match="model broke"), _open_batch(tmp_path) as batch:
        proc = batch.helper_process
        assert batch.batch_id == 1  # the header and the input rows are in, uncommitted
        raise RuntimeError("model broke")
    assert proc.poll() is not None  # the helper has ended
    assert queries.count_rows(tables.get_engine(f"sqlite:///{tmp_path / 'marts.db'}"))["batches"] == 0
    tables.dispose_engines()


def test_a_helper_that_dies_is_a_clear_error_and_leaves_nothing(tmp_path):
    with _open_batch(tmp_path) as batch:
        _ = batch.batch_id
        batch.helper_process.kill()
        batch.add(features(50)[FEATURES], np.zeros((50, 2)))
        with pytest.raises(WindpipeError, match=r"writer process stopped \(exit code -9\).*nothing of the batch"):
            batch.commit()
    assert queries.count_rows(tables.get_engine(f"sqlite:///{tmp_path / 'marts.db'}"))["input_mart"] == 0
    tables.dispose_engines()


def test_a_database_error_in_the_helper_is_reported(tmp_path):
    from sqlalchemy.engine import make_url

    from windpipe.marts.helper import ProcessBatch

    tables.get_engine(f"sqlite:///{tmp_path / 'marts.db'}")  # the tables
    batch = ProcessBatch(make_url(f"sqlite:///{tmp_path / 'marts.db'}"))
    try:
        batch.start({"created_at": None, "row_count": 1, "input_hash": "x", "source": "cli", "status": "complete"})
        with pytest.raises(WindpipeError, match="failed \\(IntegrityError: .*NOT NULL.*created_at"):
            batch.commit()
    finally:
        batch.close()
    tables.dispose_engines()


def test_the_helper_gets_the_password_by_pipe_not_argv(tmp_path):
    from sqlalchemy.engine import make_url

    from windpipe.marts.helper import ProcessBatch

    batch = ProcessBatch(make_url("postgresql://ml:s3cret-pw@127.0.0.1:1/marts"))
    try:
        assert "s3cret-pw" not in " ".join(batch.process.args)
        batch.start({})
        with pytest.raises(WindpipeError, match="data marts") as exc:  # no driver or no server: either way
            batch.commit()
        assert "s3cret-pw" not in str(exc.value)
    finally:
        batch.close()


def test_bulk_mode_pragmas_stay_with_the_bulk_connection(engine):
    bulk = local.LocalBatch(engine, bulk=True)
    assert bulk.connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 0
    bulk.close()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000


def test_sqlite_statements_split_at_any_row_count(engine, monkeypatch):
    monkeypatch.setattr(dialects, "SQLITE_ROWS", 3)  # 7 rows: two full statements and one of 1 row
    df = features(7)
    bid = writers.record_batch(engine, df[FEATURES], np.arange(14.0).reshape(7, 2), model_name="m", model_version=1,
                               model_uri="u", timestamps=df[TIMESTAMP])
    joined = queries.batch_rows(engine, bid)
    assert joined.row_no.tolist() == list(range(7)) and joined.wind_GW_pred.tolist() == list(range(1, 14, 2))
    assert pd.Timestamp(joined[TIMESTAMP].iloc[6]) == pd.Timestamp("2020-01-01 06:00")


def test_dashboard_batches_honour_the_setting(engine, tmp_path):
    off = Settings(home=tmp_path, log_dashboard_predictions=False)
    assert writers.record_batch(engine, features(2)[FEATURES], np.zeros((2, 2)), model_name="m", model_version=1,
                                model_uri="u", source="dashboard", settings=off) is None
    assert queries.count_rows(engine)["batches"] == 0
    on = Settings(home=tmp_path, log_dashboard_predictions=True)
    bid = writers.record_batch(engine, features(2)[FEATURES], np.zeros((2, 2)), model_name="m", model_version=1,
                               model_uri="u", source="dashboard", settings=on)
    assert queries.latest_batches(engine, source="dashboard").id.tolist() == [bid]


def test_bad_marts_url_is_a_clear_error():
    with pytest.raises(WindpipeError, match="Cannot open the data marts"):
        tables.get_engine("nosuchdialect://x")


# ---------------------------------------------------------------- drift (pure)

def test_drift_flags_a_shifted_batch_not_an_in_distribution_one(engine):
    train = tiny_processed()
    same = train.sample(500, random_state=1)
    shifted = same.assign(windspeed=same.windspeed * 3.6)  # km/h where the model knows m/s
    ok = drift.feature_drift(same, train)
    bad = drift.feature_drift(shifted, train)
    assert (ok.status == "ok").all(), ok
    row = bad.set_index("feature").loc["windspeed"]
    assert row.status == "drift" and row.psi > drift.PSI_MOVED and row["shift"] > drift.SHIFT_DRIFT
    assert (bad.set_index("feature").drop("windspeed").status == "ok").all()
    assert set(drift.mlflow_metrics(bad)) == {f"drift_{s}_{f}" for s in ("psi", "shift", "ks") for f in FEATURES}
    bid = writers.record_batch(engine, shifted[FEATURES], np.zeros((500, 2)), model_name="m", model_version=1,
                               model_uri="u", drift_rows=bad,
                               drift_status=drift.batch_status(bad))
    summary = queries.drift_summary(engine)
    assert summary.columns.tolist() == ["batch", "created_at", "source", "model_version", "feature", "psi", "ks",
                                        "status"]
    assert summary.batch.unique().tolist() == [bid] and summary.feature.tolist() == FEATURES
    assert queries.latest_batches(engine).drift_status.iloc[0] == "drift"


def test_psi_is_zero_for_the_same_sample_and_grows_with_shift():
    x = np.random.default_rng(0).normal(size=5000)
    assert drift.psi(x, x) == pytest.approx(0, abs=1e-9)
    assert drift.psi(x, x + 0.5) > drift.psi(x, x + 0.1) > 0


# ---------------------------------------------------------------- the command on a real platform

@pytest.fixture(scope="module")
def model(shared_platform, tmp_path_factory):
    """A registered LR model (pinned by version: other tests may move the production alias)."""
    return log_registered_model(shared_platform, tmp_dir=tmp_path_factory.mktemp("model"))


@pytest.fixture
def marts_env(use_platform, tmp_path, monkeypatch):
    """This test's own marts database, for the in-process and the subprocess command."""
    from windpipe.settings import clear_settings_cache

    url = f"sqlite:///{tmp_path / 'marts.db'}"
    monkeypatch.setenv("WINDPIPE_MARTS_URL", url)
    clear_settings_cache()
    yield {"WINDPIPE_MARTS_URL": url}
    tables.dispose_engines()


def cli(*args: str) -> tuple[int, str, str]:
    """`windpipe ...` in this process (fast); returns exit code, stdout, stderr."""
    import contextlib
    import io

    from windpipe.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code or 0
    return code, out.getvalue(), err.getvalue()


def write_input(df: pd.DataFrame, path) -> str:
    df.to_parquet(path, index=False)
    return str(path)


@pytest.mark.slow
def test_predict_cli_happy_path(model, marts_env, use_platform, tmp_path):
    import mlflow

    from windpipe.settings import get_settings

    mlflow.MlflowClient().set_registered_model_alias(get_settings().model_name, "production", model["version"])
    data = model["df"].sample(300, random_state=3).reset_index(drop=True)  # with the targets: extra columns
    inp = write_input(data, tmp_path / "in.parquet")
    out = tmp_path / "out.parquet"
    # (through the marts helper process, as big batches go)
    proc = use_platform.windpipe("predict", "--input", inp, "--output", str(out),
                                 extra_env={**marts_env, "WINDPIPE_MARTS_HELPER_ROWS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ignored column(s) not in the model's signature: solar_GW, wind_GW" in proc.stdout
    res = pd.read_parquet(out)
    assert res.columns.tolist() == ["row_no", TIMESTAMP, "solar_GW_pred", "wind_GW_pred", "model_name",
                                    "model_version", "batch_id"]
    expected = mlflow.pyfunc.load_model(model["model_uri"]).predict(data[FEATURES])
    np.testing.assert_allclose(res[["solar_GW_pred", "wind_GW_pred"]].to_numpy(), expected)
    assert (res[TIMESTAMP] == data[TIMESTAMP]).all() and res.row_no.tolist() == list(range(300))
    assert set(res.model_version.astype(str)) == {str(model["version"])} and set(res.model_name.astype(str)) == {
        "wind_solar"}

    engine = tables.get_engine(marts_env["WINDPIPE_MARTS_URL"])
    b = queries.latest_batches(engine).iloc[0]
    assert b.row_count == 300 and b.source == "cli" and b.model_name == "wind_solar"
    assert b.model_version == str(model["version"]) and b.model_uri == f"models:/wind_solar/{model['version']}"
    assert b.input_path == str(tmp_path / "in.parquet") and b.drift_status == "ok"
    assert (res.batch_id == b.id).all()
    joined = queries.batch_rows(engine, int(b.id))
    np.testing.assert_allclose(joined[["solar_GW_pred", "wind_GW_pred"]].to_numpy(), expected)
    np.testing.assert_allclose(joined[FEATURES].to_numpy(), data[FEATURES].to_numpy())

    run = latest_run(use_platform, "predict")
    assert run.info.status == "FINISHED" and run.info.run_id == b.run_id
    assert run.data.metrics["rows"] == 300
    assert {f"drift_psi_{f}" for f in FEATURES} <= set(run.data.metrics)
    assert run.data.tags["windpipe.model_version"] == str(model["version"])
    assert run.data.tags["windpipe.drift.reference"] == model["entity_uri"]
    cached = use_platform.home / "cache" / f"127.0.0.1_{use_platform.settings.mlflow_port}" / "wind_solar"
    assert (cached / f"v{model['version']}" / "processed.parquet").exists()
    assert (cached / f"v{model['version']}" / "model" / "MLmodel").exists()


def mart_counts(marts_env) -> dict:
    return queries.count_rows(tables.get_engine(marts_env["WINDPIPE_MARTS_URL"]))


@pytest.mark.slow
def test_a_finished_logged_model_is_downloaded_once_and_a_pending_one_never_cached(model, use_platform,
                                                                                   monkeypatch):
    """models:/m-<id> of a READY logged model is as immutable as a version: cached by its id, so the next
    process loads it without the tracking server's artifact store (or MLflow's slow requirement check)."""
    import mlflow

    from windpipe.models import loading

    ref = loading.resolve(model["model_uri"])
    assert ref.logged_model_id == model["model_uri"].removeprefix("models:/")
    files = loading.model_files(ref)
    server = f"127.0.0.1_{use_platform.settings.mlflow_port}"
    assert files == str(use_platform.home / "cache" / server / ref.logged_model_id / "model")
    assert (Path(files) / "MLmodel").exists()

    def no_download(**_kw):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", no_download)
    assert loading.model_files(loading.resolve(model["model_uri"])) == files
    exp = mlflow.get_experiment_by_name(use_platform.settings.experiment)
    pending = mlflow.initialize_logged_model(name="pending", experiment_id=exp.experiment_id)
    ref = loading.resolve(f"models:/{pending.model_id}")
    assert ref.logged_model_id is None and loading.model_files(ref) is None


@pytest.mark.slow
def test_predict_cli_bad_inputs_leave_nothing(model, marts_env, tmp_path, monkeypatch):
    from windpipe.settings import clear_settings_cache

    monkeypatch.setenv("WINDPIPE_MARTS_HELPER_ROWS", "1")  # the helper process starts, then rolls back
    clear_settings_cache()
    uri = f"models:/wind_solar/{model['version']}"
    good = features(30)
    nan = good.copy()
    nan.loc[[2, 5], "windspeed"] = np.nan
    text = good.assign(windspeed=good.windspeed.astype(str))
    text.loc[4, "windspeed"] = "calm"
    (tmp_path / "empty.parquet").write_bytes(b"")
    existing = tmp_path / "exists.parquet"
    existing.write_bytes(b"keep me")
    cases = [
        (write_input(good.drop(columns=["rad_diffuse"]), tmp_path / "a.parquet"), "lacks column(s) rad_diffuse"),
        (write_input(nan, tmp_path / "b.parquet"), "2 row(s) with missing (NaN) or infinite values"),
        (write_input(text, tmp_path / "c.parquet"), "Column 'windspeed'"),
        (write_input(good.head(0), tmp_path / "d.parquet"), "has no rows"),
        (str(tmp_path / "empty.parquet"), "is empty (0 bytes)"),
        (str(tmp_path / "missing.parquet"), "does not exist"),
    ]
    for inp, message in cases:
        out = tmp_path / "out.parquet"
        code, _, err = cli("predict", "--input", inp, "--output", str(out), "--model-uri", uri)
        assert code == 1, (inp, err)
        assert message in err and "fix:" in err, err
        assert not out.exists()
    code, _, err = cli("predict", "--input", write_input(good, tmp_path / "g.parquet"), "--output", str(existing),
                       "--model-uri", uri)
    assert code == 1 and "exists already" in err and "--overwrite" in err
    assert existing.read_bytes() == b"keep me"
    assert mart_counts(marts_env) == {"batches": 0, "input_mart": 0, "output_mart": 0, "drift": 0}
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_predict_cli_drop_invalid_and_overwrite(model, marts_env, tmp_path):
    uri = f"models:/wind_solar/{model['version']}"
    df = features(40)
    df.loc[[1, 30], "temperature"] = np.nan
    inp, out = write_input(df, tmp_path / "in.parquet"), tmp_path / "out.parquet"
    code, stdout, err = cli("predict", "--input", inp, "--output", str(out), "--model-uri", uri, "--drop-invalid")
    assert code == 0, err
    assert "dropped 2 row(s)" in stdout and "1, 30" in stdout
    res = pd.read_parquet(out)
    assert len(res) == 38 and 1 not in res.row_no.tolist() and res.row_no.iloc[1] == 2
    code, _, err = cli("predict", "--input", inp, "--output", str(out), "--model-uri", uri, "--drop-invalid")
    assert code == 1 and "exists already" in err
    code, _, err = cli("predict", "--input", inp, "--output", str(out), "--model-uri", uri, "--drop-invalid",
                       "--overwrite")
    assert code == 0, err
    assert pd.read_parquet(out).batch_id.iloc[0] == 2
    batches = queries.latest_batches(tables.get_engine(marts_env["WINDPIPE_MARTS_URL"]))
    assert batches.rows_dropped.tolist() == [2, 2] and batches.row_count.tolist() == [38, 38]
    assert mart_counts(marts_env)["output_mart"] == 76


@pytest.mark.slow
@pytest.mark.parametrize("helper_rows", ["0", "1"])
def test_predict_failure_while_writing_leaves_no_file_and_no_rows(model, marts_env, tmp_path, monkeypatch,
                                                                  helper_rows):
    import pyarrow.parquet as pq

    import windpipe.scoring.batch as P
    from windpipe.settings import clear_settings_cache

    monkeypatch.setenv("WINDPIPE_MARTS_HELPER_ROWS", helper_rows)
    monkeypatch.setenv("WINDPIPE_PREDICT_BATCH_ROWS", "4")  # 10 rows: three parts; the disk fills at the second
    clear_settings_cache()
    written = []

    def fills_up(self, table, *_a, **_k):
        if written:
            raise OSError("disk full")
        written.append(real(self, table))

    real = pq.ParquetWriter.write_table
    monkeypatch.setattr(pq.ParquetWriter, "write_table", fills_up)
    out = tmp_path / "out.parquet"
    with pytest.raises(WindpipeError, match=r"Cannot write .*out.parquet \(disk full\); nothing was written"):
        P.run_batch(_plain_input(tmp_path), out, f"models:/wind_solar/{model['version']}", say=lambda _m: None)
    assert not out.exists()
    assert mart_counts(marts_env)["batches"] == 0
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.slow
def test_predict_streams_a_file_of_several_row_groups(model, marts_env, tmp_path, monkeypatch):
    """Parts of 64 rows (row groups of 100) through the marts helper: the output, the marts rows and the drift are
    those of the whole file in memory; a bad row in the last row group leaves no file and no rows."""
    from windpipe.models import loading
    from windpipe.scoring.batch import run_batch
    from windpipe.settings import clear_settings_cache

    monkeypatch.setenv("WINDPIPE_PREDICT_BATCH_ROWS", "64")
    monkeypatch.setenv("WINDPIPE_MARTS_HELPER_ROWS", "1")
    clear_settings_cache()
    uri = f"models:/wind_solar/{model['version']}"
    data = model["df"].tail(300)[[TIMESTAMP, *FEATURES]].reset_index(drop=True)  # in the training data's season
    data.loc[0, "windspeed"] = np.nan  # (--drop-invalid: the scored rows' window starts an hour later)
    inp = tmp_path / "in.parquet"
    data.to_parquet(inp, row_group_size=100)
    res = run_batch(inp, tmp_path / "out.parquet", uri, drop_invalid=True, say=lambda _m: None)
    whole = validate_input(data, drop_invalid=True)
    ref = loading.resolve(uri)
    expected = loading.predict(loading.load(ref), whole.features, whole.timestamps)
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert out.row_no.tolist() == list(range(1, 300)) and res.rows == 299 and res.rows_dropped == 1
    np.testing.assert_allclose(out[["solar_GW_pred", "wind_GW_pred"]].to_numpy(), expected)
    engine = tables.get_engine(marts_env["WINDPIPE_MARTS_URL"])
    b = queries.latest_batches(engine).iloc[0]
    assert (b.row_count, b.rows_dropped, b.id) == (299, 1, res.batch_id) and (out.batch_id == b.id).all()
    assert b.input_hash == writers.input_hash(whole.features, whole.timestamps)
    np.testing.assert_allclose(queries.batch_rows(engine, res.batch_id)[FEATURES].to_numpy(),
                               whole.features.to_numpy())
    reference = loading.training_entity(ref)
    in_memory = drift.feature_drift(whole.features, reference, ref.training_entity_uri,
                                    batch_times=whole.timestamps, reference_times=reference[TIMESTAMP])
    assert in_memory.reference.iloc[0].startswith("season")
    pd.testing.assert_frame_equal(res.drift, in_memory, check_exact=False, rtol=1e-12)
    # a bad row in the last row group: refused whole, naming it
    before = queries.count_rows(engine)
    data.loc[0, "windspeed"] = 5.0
    data.loc[297, "temperature"] = np.inf
    data.to_parquet(inp, row_group_size=100)
    with pytest.raises(WindpipeError, match=r"\(rows 256 to 299\) has 1 row\(s\) .*counted from 0: 297\)"):
        run_batch(inp, tmp_path / "out2.parquet", uri, say=lambda _m: None)
    assert not (tmp_path / "out2.parquet").exists() and not list(tmp_path.glob(".*.tmp"))
    assert queries.count_rows(engine) == before


def _plain_input(tmp_path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pandas(features(10), preserve_index=False), path)
    return str(path)


@pytest.mark.slow
def test_predict_shifted_batch_flags_drift(model, marts_env, tmp_path):
    from windpipe.scoring.batch import run_batch

    shifted = model["df"].sample(400, random_state=5).reset_index(drop=True)
    shifted["windspeed"] *= 3.6  # km/h where the model knows m/s
    res = run_batch(write_input(shifted, tmp_path / "in.parquet"), tmp_path / "out.parquet",
                    f"models:/wind_solar/{model['version']}", say=lambda _m: None)
    assert res.drift_status == "drift"
    summary = queries.drift_summary(tables.get_engine(marts_env["WINDPIPE_MARTS_URL"]))
    by = summary.set_index("feature")
    assert by.loc["windspeed", "status"] == "drift" and by.loc["temperature", "status"] == "ok"


@pytest.mark.slow
def test_predict_without_production_alias_says_what_to_run(marts_env, tmp_path, monkeypatch):
    from windpipe.settings import clear_settings_cache

    monkeypatch.setenv("WINDPIPE_MODEL_NAME", "no_such_model")
    clear_settings_cache()
    code, _, err = cli("predict", "--input", write_input(features(5), tmp_path / "in.parquet"),
                       "--output", str(tmp_path / "out.parquet"))
    assert code == 1
    assert "No version of the registered model 'no_such_model' has the alias 'production'" in err
    assert "windpipe promote" in err
    assert not (tmp_path / "out.parquet").exists()


@pytest.mark.slow
def test_mlflow_run_projects_predict(model, marts_env, use_platform, tmp_path):
    data = model["df"].head(100)
    out = tmp_path / "out.parquet"
    use_platform.env.update(marts_env, WINDPIPE_MARTS_HELPER_ROWS="1")  # the helper under `mlflow run` too
    try:
        proc = mlflow_run(use_platform, "predict", "-P", f"input={write_input(data, tmp_path / 'in.parquet')}",
                          "-P", f"output={out}", "-P", f"model_uri=models:/wind_solar/{model['version']}")
    finally:
        use_platform.env.pop("WINDPIPE_MARTS_URL")
        use_platform.env.pop("WINDPIPE_MARTS_HELPER_ROWS")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(pd.read_parquet(out)) == 100
    run = latest_run(use_platform, "predict")
    assert run.info.status == "FINISHED" and run.data.metrics["rows"] == 100
    b = queries.latest_batches(tables.get_engine(marts_env["WINDPIPE_MARTS_URL"])).iloc[0]
    assert b.source == "project" and b.run_id == run.info.run_id
    assert len(queries.batch_rows(tables.get_engine(marts_env["WINDPIPE_MARTS_URL"]), int(b.id))) == 100


def test_generic_sqlalchemy_path_writes_the_same_rows(tmp_path, monkeypatch):
    """The path every non-SQLite URL takes, exercised on SQLite."""
    df = features(7)
    pred = np.arange(14.0).reshape(7, 2)
    got = []
    for fast in (True, False):
        monkeypatch.setattr(dialects, "FAST_PATH", fast)
        eng = tables.get_engine(f"sqlite:///{tmp_path / f'm{fast}.db'}")
        bid = writers.record_batch(eng, df[FEATURES], pred, model_name="m", model_version=1, model_uri="u",
                                   timestamps=df[TIMESTAMP])
        got.append(queries.batch_rows(eng, bid))
    tables.dispose_engines()
    pd.testing.assert_frame_equal(got[0], got[1])


def test_reading_a_file_in_parts_holds_one_row_group_not_all_read_so_far(tmp_path):
    """The predict input's reader (validate.InputFile.parts) keeps Arrow's memory flat across row groups: with
    pyarrow's default pre-buffering it kept every column chunk read so far (10M rows: 0.45 GB more at the end)."""
    import pyarrow as pa

    from windpipe.scoring.validate import InputFile

    rng = np.random.default_rng(0)
    n = 2_000_000
    frame = pd.DataFrame({c: rng.random(n) for c in FEATURES})
    frame[TIMESTAMP] = pd.date_range("2020-01-01", periods=n, freq="min", tz="UTC")
    path = tmp_path / "in.parquet"
    frame.to_parquet(path, row_group_size=250_000)  # 8 row groups of 10 MB (pre-buffered: 46 MB held, then 100)
    del frame
    pool = pa.default_memory_pool()
    held = []
    for _first, part in InputFile(path).parts(50_000):
        held.append(pool.bytes_allocated())
        del part
    assert len(held) == 40
    assert max(held) <= max(held[:5]) + 2_000_000, [round(h / 1e6, 1) for h in held[::5]]

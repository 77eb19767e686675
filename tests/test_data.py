"""Generated raw data and the process step's pure functions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from windpipe.data.process import process, read_raw
from windpipe.data.synth import TIMESERIES_FILE, WEATHER_FILE, generate, write_raw
from windpipe.entities.schema import PROCESSED
from windpipe.entities.store import read_entity, write_entity
from windpipe.errors import WindpipeError
from windpipe.names import FEATURES, TARGETS


def test_synth_is_deterministic_and_opsd_shaped(tmp_path):
    a = write_raw(tmp_path / "a", seed=3, years=1)
    b = write_raw(tmp_path / "b", seed=3, years=1)
    c = write_raw(tmp_path / "c", seed=4, years=1)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert a[0].read_bytes() != c[0].read_bytes()
    power = pd.read_csv(tmp_path / "a" / TIMESERIES_FILE)
    weather = pd.read_csv(tmp_path / "a" / WEATHER_FILE)
    assert {"utc_timestamp", "DE_solar_generation_actual", "DE_wind_generation_actual"} <= set(power.columns)
    assert {"DE_windspeed_10m", "DE_temperature", "DE_radiation_direct_horizontal",
            "DE_radiation_diffuse_horizontal"} <= set(weather.columns)


def test_default_size_matches_real_data():
    power, _ = generate()
    stamps = pd.to_datetime(power["utc_timestamp"], utc=True)
    assert stamps.min() < pd.Timestamp("2013-01-01", tz="UTC")
    assert stamps.max() == pd.Timestamp("2016-12-31 23:00", tz="UTC")
    assert 35_000 < len(power) < 35_100


def test_synth_physics_is_sensible():
    power, weather = generate(seed=1, years=1)
    df = process(power, weather)
    night = df[df.rad_horizontal + df.rad_diffuse == 0]
    assert (night.solar_GW < 0.05).all()  # no sun, no solar power
    assert np.corrcoef(df.rad_horizontal + df.rad_diffuse, df.solar_GW)[0, 1] > 0.9
    assert np.corrcoef(df.windspeed**3, df.wind_GW)[0, 1] > 0.5
    summer = df[df.utc_timestamp.dt.month.isin([6, 7])].temperature.mean()
    winter = df[df.utc_timestamp.dt.month.isin([12, 1])].temperature.mean()
    assert summer > winter + 8
    # saturation: the windiest hours do not keep growing with the cube
    top = df.nlargest(200, "windspeed")
    assert top.wind_GW.max() < 1.3 * df.wind_GW.quantile(0.99)


def test_process_joins_cuts_converts_and_drops(raw_dir):
    power, weather = read_raw(raw_dir)
    df = process(power, weather)
    assert list(df.columns) == ["utc_timestamp", *TARGETS, *FEATURES]
    assert df.utc_timestamp.min() == pd.Timestamp("2013-01-01", tz="UTC")
    assert not df.isna().any().any()
    assert len(df) < len(power) - 6  # the 6 hours of 2012 and the gaps are gone
    raw_solar = pd.to_numeric(power.DE_solar_generation_actual).max()
    assert df.solar_GW.max() == pytest.approx(raw_solar / 1000)


def test_entity_roundtrip_is_atomic_and_validated(tmp_path, raw_dir):
    df = process(*read_raw(raw_dir))
    path = write_entity(PROCESSED, df, tmp_path / "p.parquet")
    back = read_entity(PROCESSED, path)
    pd.testing.assert_frame_equal(back, df)
    assert [p.name for p in tmp_path.iterdir()] == ["p.parquet"]  # no temp file left
    with pytest.raises(WindpipeError, match="lacks column"):
        write_entity(PROCESSED, df.drop(columns=["wind_GW"]), tmp_path / "q.parquet")
    assert not (tmp_path / "q.parquet").exists()


def _raw(tmp_path, power=None, weather=None):
    write_raw(tmp_path, seed=1, years=1)
    if power is not None:
        (tmp_path / TIMESERIES_FILE).write_text(power)
    if weather is not None:
        (tmp_path / WEATHER_FILE).write_text(weather)
    return tmp_path


@pytest.mark.parametrize("case, match, fix", [
    ("missing_dir", "does not exist", "windpipe data synth"),
    ("missing_file", "is missing", "windpipe data synth"),
    ("missing_column", "lacks column", "DE_"),
    ("empty", "is empty", "regenerate"),
    ("header_only", "no rows", "regenerate"),
    ("non_numeric", "non-numeric", "fix or remove"),
])
def test_bad_raw_input_is_named(tmp_path, case, match, fix):
    if case == "missing_dir":
        raw = tmp_path / "nope"
    elif case == "missing_file":
        raw = _raw(tmp_path)
        (raw / WEATHER_FILE).unlink()
    elif case == "missing_column":
        raw = _raw(tmp_path, weather="utc_timestamp,DE_windspeed_10m\n2013-01-01T00:00:00Z,3\n")
    elif case == "empty":
        raw = _raw(tmp_path, power="")
    elif case == "header_only":
        raw = _raw(tmp_path, power="utc_timestamp,DE_solar_generation_actual,DE_wind_generation_actual\n")
    else:
        raw = _raw(tmp_path, power="utc_timestamp,DE_solar_generation_actual,DE_wind_generation_actual\n"
                                   "2013-01-01T00:00:00Z,1.0,2.0\n2013-01-01T01:00:00Z,lots,2.0\n")
    with pytest.raises(WindpipeError, match=match) as err:
        process(*read_raw(raw))
    assert fix in str(err.value)


def test_synth_cli_writes_files(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "windpipe", "data", "synth", "--out", str(tmp_path),
                           "--years", "1", "--seed", "5"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / TIMESERIES_FILE).exists() and (tmp_path / WEATHER_FILE).exists()
    bad = subprocess.run([sys.executable, "-m", "windpipe", "data", "synth", "--out", str(tmp_path / "x"),
                          "--years", "0"], capture_output=True, text=True)
    assert bad.returncode == 1 and "years must be at least 1" in bad.stderr


def test_an_entity_datasets_digest_is_mlflows_without_mlflows_look_at_every_cell():
    """typed_digest gives the digest MLflow computes for a dataset of the frame (compute_pandas_digest: what the
    UI compares datasets by), also past the 10,000 rows MLflow hashes and with integer and boolean columns;
    a frame with strings, or none at all, is left to MLflow."""
    import numpy as np
    from mlflow.data.digest_utils import compute_pandas_digest

    from windpipe.entities.store import typed_digest

    from .models import tiny_processed

    year = tiny_processed(24 * 366)
    later = year.assign(utc_timestamp=year["utc_timestamp"] + pd.Timedelta(days=366))
    frame = pd.concat([year, later], ignore_index=True)  # (two years: beyond the 10,000 rows MLflow hashes)
    mixed = frame.assign(count=np.arange(len(frame)), flag=frame["wind_GW"] > 5).iloc[:, ::-1]
    for df in (frame, mixed, frame.head(50)):
        assert typed_digest(df) == compute_pandas_digest(df)
    assert typed_digest(frame) != typed_digest(frame.head(11_000))  # (the row count counts)
    assert typed_digest(frame) != typed_digest(frame.assign(wind_GW=frame["wind_GW"] + 1))
    assert typed_digest(frame.assign(version="v1")) is None and typed_digest(frame.head(0)) is None

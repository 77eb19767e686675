"""Honest forecasting: time features, the time split, the backtest, models that follow the trend,
season-matched drift, performance monitoring and processed files a user brings (pure parts, tiny data;
the few that fit models on years of generated data are marked slow)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from windpipe import names
from windpipe.data.process import check_processed, process, read_processed
from windpipe.data.synth import generate
from windpipe.errors import WindpipeError
from windpipe.names import FEATURES, TARGETS, TIME_FEATURES, TIMESTAMP
from windpipe.scoring import drift
from windpipe.scoring.monitor import batch_errors, read_actuals
from windpipe.training import families
from windpipe.training.backtest import fold_metrics, folds_from_metrics, run_backtest, summary
from windpipe.training.capacity import capacity_line, capacity_lines
from windpipe.training.families import lr as LR
from windpipe.training.families import rf as RF
from windpipe.training.features import MODEL_COLUMNS, model_input, time_features
from windpipe.training.metrics import regression_metrics
from windpipe.training.split import SplitSpec, backtest_splits, split, time_window, validation_split, xy

# the real data: never committed; benchmarks/common.py reads the same variable
GERMANY = Path(os.environ.get("WINDPIPE_GERMANY_CSV",
                              Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "germany.csv"))
_YEARS: dict[int, pd.DataFrame] = {}


def years(n: int = 4) -> pd.DataFrame:
    """`n` years of the generated processed data (cached)."""
    if n not in _YEARS:
        _YEARS[n] = process(*generate(seed=42, years=n))
    return _YEARS[n]


def hourly(n: int, start: str = "2013-01-01") -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({TIMESTAMP: pd.date_range(start, periods=n, freq="h", tz="UTC"),
                         **{t: rng.uniform(0, 10, n) for t in TARGETS},
                         **{f: rng.uniform(0, 10, n) for f in FEATURES}})


# ------------------------------------------------------------------------------------------- time features

def test_time_features_follow_the_documented_formula():
    ts = pd.Series(pd.to_datetime(["2013-01-01T00:00Z", "2014-01-01T06:00Z", "2013-07-02T18:30Z"]))
    tf = time_features(ts)
    assert list(tf.columns) == TIME_FEATURES and (tf.dtypes == "float64").all()
    np.testing.assert_allclose(tf.iloc[0], [0, 1, 0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(tf.loc[1, ["hour_sin", "hour_cos"]], [1, 0], atol=1e-12)  # 06:00
    assert tf.loc[1, "trend"] == pytest.approx((365 + 0.25) / 365.25)
    doy = 182 + 18.5 / 24  # 2 July 18:30: day of year 183, counted from 0
    np.testing.assert_allclose(tf.loc[2, ["doy_sin", "doy_cos"]],
                               [np.sin(2 * np.pi * doy / 365.25), np.cos(2 * np.pi * doy / 365.25)])
    # naive times are UTC; other zones are converted
    naive = time_features(pd.Series(pd.to_datetime(["2014-01-01 06:00"])))
    berlin = time_features(pd.Series(pd.to_datetime(["2014-01-01 07:00"]).tz_localize("Europe/Berlin")))
    pd.testing.assert_frame_equal(naive, tf.iloc[[1]].reset_index(drop=True))
    pd.testing.assert_frame_equal(berlin, naive)


def test_model_input_derives_time_columns_and_needs_timestamps():
    df = hourly(5)
    X = model_input(df[FEATURES], MODEL_COLUMNS, df[TIMESTAMP])
    assert list(X.columns) == MODEL_COLUMNS
    pd.testing.assert_frame_equal(X[TIME_FEATURES], time_features(df[TIMESTAMP]))
    pd.testing.assert_frame_equal(model_input(df, MODEL_COLUMNS), X)  # the column works as well
    with pytest.raises(WindpipeError, match="derived from utc_timestamp") as err:
        model_input(df[FEATURES], MODEL_COLUMNS)
    assert "add a utc_timestamp column" in err.value.fix
    with pytest.raises(WindpipeError, match="missing in 1 row"):
        model_input(df[FEATURES], MODEL_COLUMNS, df[TIMESTAMP].where(df.index != 2))
    assert model_input(df[FEATURES], FEATURES) is not None  # weather-only models need no time


# ------------------------------------------------------------------------------------------- splits

def test_time_split_holds_out_the_newest_weeks_and_trains_on_the_past():
    df = hourly(24 * 7 * 10).sample(frac=1, random_state=0)  # 10 weeks, shuffled
    train, test = split(df, split_by="time", holdout_weeks=2)
    assert len(test) == 24 * 14 and len(train) == 24 * 7 * 8
    assert train[TIMESTAMP].max() < test[TIMESTAMP].min()  # no holdout hour is older than a training hour
    assert test[TIMESTAMP].max() == df[TIMESTAMP].max()
    spec = SplitSpec(split_by="time", holdout_weeks=2.0)
    again = SplitSpec.from_params({k: str(v) for k, v in spec.params().items()})
    assert again == spec and again.cut(df)[1].index.equals(test.index)
    # runs logged before the window existed: a fraction of the rows by time, or sklearn's random split
    assert SplitSpec.from_params({"split_by": "time", "test_size": "0.25"}).cut(df)[1].shape[0] == 24 * 7 * 10 // 4
    assert SplitSpec.from_params({}).split_by == "random"


def test_holdout_longer_than_the_data_is_refused():
    with pytest.raises(WindpipeError, match="holdout window of 13 weeks is longer than the data") as err:
        split(hourly(24 * 30), split_by="time", holdout_weeks=13)
    assert "holdout_weeks" in err.value.fix and "split_by=random" in err.value.fix
    with pytest.raises(WindpipeError, match="greater than 0"):
        split(hourly(48), split_by="time", holdout_weeks=0)


def test_backtest_folds_are_in_time_order_disjoint_and_end_with_the_holdout():
    df = hourly(24 * 7 * 12)
    folds = backtest_splits(df, folds=4, holdout_weeks=2)
    tests = [f[3] for f in folds]
    for (start, end, train, test), later in zip(folds, tests[1:] + [None], strict=True):
        assert train[TIMESTAMP].max() < start <= test[TIMESTAMP].min() and test[TIMESTAMP].max() < end
        assert len(train) == (df[TIMESTAMP] < start).sum()  # everything before the window
        if later is not None:
            assert test[TIMESTAMP].max() < later[TIMESTAMP].min()  # in order, disjoint
    assert sum(len(t) for t in tests) == 24 * 7 * 8
    holdout = split(df, split_by="time", holdout_weeks=2)[1]
    assert tests[-1].index.equals(holdout.index)
    # a backtest with fewer rows than folds, or folds that reach back past the data's start
    with pytest.raises(WindpipeError, match="4 folds but the data only 3 row"):
        backtest_splits(hourly(3), folds=4, holdout_weeks=1)
    with pytest.raises(WindpipeError, match="7 backtest folds of 2 weeks reach back") as err:
        backtest_splits(df, folds=7, holdout_weeks=2)
    assert "fewer -P backtest_folds" in err.value.fix
    with pytest.raises(WindpipeError, match="at least 1"):
        backtest_splits(df, folds=0, holdout_weeks=2)


def test_run_backtest_scores_each_fold_with_a_model_of_its_past():
    df = hourly(24 * 7 * 6)
    seen = []

    def fit(train: pd.DataFrame) -> object:
        seen.append(train[TIMESTAMP].max())
        return families.natural(LR.train_lr(*xy(train)), time_features=False)

    table = run_backtest(df, fit, folds=3, holdout_weeks=1)
    assert table["fold"].tolist() == [1, 2, 3] and len(seen) == 3 and seen == sorted(seen)
    assert (table["train_rows"].diff().dropna() == 24 * 7).all()
    means = summary(table)
    assert means["backtest_r2"] == pytest.approx(table["r2"].mean()) and means["backtest_folds"] == 3
    back = folds_from_metrics(fold_metrics(table))
    np.testing.assert_allclose(back["r2"], table["r2"])
    assert folds_from_metrics({"rmse": 1.0}).empty


def test_validation_rows_come_from_the_training_window():
    train = hourly(100).sample(frac=1, random_state=1)
    fit, val = validation_split(train, 0.1, "time")
    assert len(val) == 10 and fit[TIMESTAMP].max() < val[TIMESTAMP].min()
    fit, val = validation_split(train, 0.1, "random", seed=3)
    assert len(val) == 10 and set(fit.index).isdisjoint(val.index)
    assert set(fit.index) | set(val.index) == set(train.index)


# ------------------------------------------------------------------------------------------- metrics and names

def test_bias_is_the_mean_error_and_ranks_by_distance_from_zero():
    y = np.array([[1.0, 10.0], [3.0, 20.0]])
    m = regression_metrics(y, y + np.array([[1.0, -2.0], [1.0, -4.0]]))
    assert m["bias_solar_GW"] == 1.0 and m["bias_wind_GW"] == -3.0 and "bias" not in m
    assert names.zero_is_best("bias_wind_GW") and names.zero_is_best("backtest_fold2_bias_solar_GW")
    assert names.better(-0.5, 1.0, "bias_wind_GW") and not names.better(2.0, -1.0, "holdout_bias_wind_GW")
    assert names.higher_is_better("backtest_r2") and names.higher_is_better("backtest_fold3_r2_wind_GW")
    assert not names.higher_is_better("backtest_rmse")
    from windpipe.models.compare import rank_runs

    runs = pd.DataFrame({"run_id": ["a", "b", "c"], "model_uri": ["m1", "m2", "m3"],
                         "bias_wind_GW": [-3.0, 0.5, -1.0], "start_time": pd.Timestamp("2020-01-01", tz="UTC")})
    assert rank_runs(runs, "bias_wind_GW")["run_id"].tolist() == ["b", "c", "a"]


def test_pinball_coverage_and_width_on_a_known_distribution():
    """Exact normal quantiles: 80 % coverage, width 2 z_0.9, and the pinball loss E[rho_q(Y - z_q)] = phi(z_q)
    averaged over P10/P50/P90; quantiles shifted by one sigma cover less and lose more."""
    from scipy.stats import norm

    from windpipe.training.metrics import quantile_metrics

    rng = np.random.default_rng(0)
    y = rng.normal(size=(200_000, 2))
    exact = np.broadcast_to(norm.ppf(names.QUANTILES), (len(y), 2, 3))
    m = quantile_metrics(y, exact)
    assert m["coverage80"] == pytest.approx(0.8, abs=0.005) and m["coverage80_wind_GW"] == pytest.approx(0.8, abs=0.005)
    assert m["width80"] == pytest.approx(2 * norm.ppf(0.9))
    assert m["pinball"] == pytest.approx(norm.pdf(norm.ppf(names.QUANTILES)).mean(), rel=0.01)
    shifted = quantile_metrics(y, exact + 1.0)
    assert shifted["coverage80"] < 0.62 and shifted["pinball"] > m["pinball"] * 1.4
    assert names.better(0.79, 0.9, "holdout_coverage80") and names.better(0.82, 0.75, "coverage80_wind_GW")
    assert names.nominal("coverage80") == 0.8 and not names.higher_is_better("pinball")


def test_certain_hours_are_left_out_of_coverage():
    """Solar at night (recorded 0 inside [0, 0]) would count as covered by any method: coverage leaves it out."""
    from windpipe.training.metrics import quantile_metrics

    y = np.array([[0.0, 5.0], [0.0, 5.0], [3.0, 5.0], [3.0, 5.0]])
    q = np.zeros((4, 2, 3))
    q[2:, 0] = [2.0, 3.0, 4.0]  # day: covered, then not
    q[3, 0] = [3.5, 4.0, 4.5]
    q[:, 1] = [4.0, 5.0, 6.0]
    m = quantile_metrics(y, q)
    assert m["coverage80_solar_GW"] == 0.5 and m["coverage80_wind_GW"] == 1.0


def test_conformal_intervals_follow_the_hour_and_cover_new_rows():
    """Residuals three times as wide at midday: the calibrated intervals are about three times as wide there,
    cover about 80 % of new rows of the same kind, stay ordered inside [0, capacity] and move with the point."""
    from windpipe.training.inputs import INTERVALS_KEY, Head
    from windpipe.training.uncertainty import conformal_intervals

    rng = np.random.default_rng(1)

    def rows(days: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        times = pd.date_range("2016-01-01", periods=24 * days, freq="h", tz="UTC")
        X = pd.DataFrame(time_features(times), columns=TIME_FEATURES).assign(windspeed=5.0)
        spread = np.where((times.hour >= 10) & (times.hour <= 14), 3.0, 1.0)
        point = np.full((len(X), 2), 30.0)
        return X, point, point + rng.normal(size=(len(X), 2)) * spread[:, None]

    head = {"targets": TARGETS, "trend": "trend", "lines": [[100.0, 0.0], [100.0, 0.0]], "factor": [1.0, 1.0]}
    X, point, y = rows(200)
    spec = conformal_intervals(X, y, point, head)
    model = Head({**head, INTERVALS_KEY: spec})
    X_new, point_new, y_new = rows(100)
    q = model.quantiles(X_new, point_new)
    noon, night = X_new.index[::24][:50] + 12, X_new.index[::24][:50] + 2
    width = q[:, :, 2] - q[:, :, 0]
    assert width[noon].mean() / width[night].mean() == pytest.approx(3.0, rel=0.15)
    from windpipe.training.metrics import quantile_metrics

    assert quantile_metrics(y_new, q)["coverage80"] == pytest.approx(0.8, abs=0.02)
    assert (np.diff(q, axis=2) >= 0).all() and (q >= 0).all() and (q <= 100).all()
    assert model.columns() == [*TARGETS, *names.QUANTILE_COLUMNS]
    higher = model.quantiles(X_new, point_new + 10.0)
    assert (higher >= q).all()  # the quantiles rise with the point forecast


def test_climatology_is_the_training_data_quantiles_at_the_same_hour_and_season():
    """GEFCom's benchmark: each hour gets the quantiles of the training values at its hour of day within +-15 days
    of its day of the year, every training year (here: values that are the hour of day plus uniform noise)."""
    from windpipe.training.uncertainty import climatology

    times = pd.date_range("2013-01-01", "2015-12-31 23:00", freq="h", tz="UTC")
    noise = np.random.default_rng(1).uniform(size=len(times))
    values = np.column_stack([times.hour + noise, 100 + noise])
    when = pd.DatetimeIndex(["2016-03-01 12:00", "2016-12-31 03:00"], tz="UTC")
    got = climatology(times, values, when)
    assert got.shape == (2, 2, 3)
    np.testing.assert_allclose(got[:, 0, :], [[12.1, 12.5, 12.9], [3.1, 3.5, 3.9]], atol=0.15)
    np.testing.assert_allclose(got[:, 1, :], [[100.1, 100.5, 100.9]] * 2, atol=0.15)
    near = (times.hour == 12) & (abs(times.dayofyear - 61) <= 15)  # (1 March 2016 is day 61)
    np.testing.assert_allclose(got[0, 0], np.quantile(values[near, 0], names.QUANTILES))
    wrapped = (times.hour == 3) & ((times.dayofyear >= 365 - 15) | (times.dayofyear <= 15))  # 31 Dec takes January
    np.testing.assert_allclose(got[1, 0], np.quantile(values[wrapped, 0], names.QUANTILES))


# ------------------------------------------------------------------------------------------- models

def test_capacity_lines_find_the_generators_growth():
    df = years(4)
    X, y = xy(df, time_features=True)
    lines = capacity_lines(X["trend"], X["windspeed"], y)
    cap = capacity_line(lines, np.array([0.5, 3.5]))
    from windpipe.data.synth import SOLAR_GROWTH, WIND_GROWTH

    for i, growth in enumerate((SOLAR_GROWTH, WIND_GROWTH)):
        expected = (1 + growth * 3.5) / (1 + growth * 0.5)
        assert cap[1, i] / cap[0, i] == pytest.approx(expected, rel=0.08), TARGETS[i]
    assert np.mean(capacity_line(lines, X["trend"]), axis=0) == pytest.approx([1, 1])  # mean 1 on the rows
    short = xy(df.head(24 * 300), time_features=True)  # under two years: growth and season look alike
    np.testing.assert_array_equal(capacity_lines(short[0]["trend"], short[0]["windspeed"], short[1]),
                                  [[1, 0], [1, 0]])


def test_fitted_models_take_their_natural_inputs():
    """Every family's model takes utc_timestamp (column or DatetimeIndex) and the weather; its core the columns
    derived from them."""
    df = hourly(24 * 20)
    weather = families.natural(LR.train_lr(*xy(df)), time_features=False)
    trend = families.natural(LR.train_lr(*xy(df, time_features=True)), time_features=True)
    assert families.core_columns(weather) == FEATURES and families.core_columns(trend) == MODEL_COLUMNS
    assert families.natural_columns(trend) == [TIMESTAMP, *FEATURES] and families.natural_columns(weather) == FEATURES
    expected = trend[-1].predict(xy(df, time_features=True)[0])
    np.testing.assert_allclose(families.predict_fitted(trend, df), expected)
    np.testing.assert_allclose(trend.predict(df.set_index(TIMESTAMP)[FEATURES]), expected)  # the DatetimeIndex
    assert families.predict_fitted(weather, df).shape == (len(df), 2)
    with pytest.raises(WindpipeError, match="only some of the time columns"):
        LR.train_lr(xy(df, time_features=True)[0].drop(columns="trend"), xy(df)[1])


def test_capacity_forests_multiply_the_forests_by_the_capacity_line():
    df = years(3)
    X, y = xy(df, time_features=True)
    p = RF.RFParams.check(n_estimators=4, max_depth=4, min_samples_leaf=3, seed=0, n_jobs=1)
    model = RF.train_rf(X, y, p)
    lines = capacity_lines(X["trend"], X["windspeed"], y)
    factors = np.column_stack([f.predict(X[list(c)]) for f, c in zip(model.estimators, model.columns, strict=True)])
    direct = factors * capacity_line(lines, X["trend"])
    np.testing.assert_allclose(model.predict(X), direct, rtol=1e-9)
    assert lines[1, 1] > 0  # wind capacity grows


@pytest.mark.slow
def test_synthetic_data_teaches_the_real_lesson():
    """Random split flatters (r2 within 0.05 of the real data's 0.867); the newest quarter shows the gap;
    the models that follow the trend close it."""
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.model_selection import train_test_split

    df = years(4)
    rf = RandomForestRegressor(n_estimators=64, max_depth=10, random_state=0, n_jobs=2)
    tr, te = train_test_split(df, test_size=0.2, random_state=42)
    random_r2 = regression_metrics(te[TARGETS], rf.fit(tr[FEATURES], tr[TARGETS]).predict(te[FEATURES]))["r2"]
    assert abs(random_r2 - 0.867) <= 0.05
    tr, te = time_window(df, pd.Timestamp("2016-10-01", tz="UTC"))
    weather = regression_metrics(te[TARGETS], rf.fit(tr[FEATURES], tr[TARGETS]).predict(te[FEATURES]))
    assert weather["r2"] < random_r2 - 0.04 and weather["bias_wind_GW"] < -2.0  # the fleet grew
    X, y = xy(tr, time_features=True)
    Xt, yt = xy(te, time_features=True)
    for model in (LR.train_lr(X, y), RF.train_rf(X, y, RF.RFParams.check(32, 10, 3, 0, 2))):
        m = regression_metrics(yt, model.predict(Xt))
        assert m["r2"] > weather["r2"] + 0.05 and abs(m["bias_wind_GW"]) < 1.0


# ------------------------------------------------------------------------------------------- drift

def _drift(batch: pd.DataFrame, reference: pd.DataFrame) -> pd.DataFrame:
    return drift.feature_drift(batch, reference, batch_times=batch[TIMESTAMP],
                               reference_times=reference[TIMESTAMP]).set_index("feature")


UNIT_ERRORS = {"windspeed": lambda x: x * 3.6, "temperature": lambda x: x * 1.8 + 32}  # km/h, Fahrenheit


def test_season_matched_drift_passes_a_normal_winter_and_flags_unit_errors():
    df = years(3)
    cut = pd.Timestamp("2015-10-01", tz="UTC")
    reference, batch = df[df[TIMESTAMP] < cut], df[df[TIMESTAMP] >= cut]
    got = _drift(batch, reference)
    assert (got["status"] == "ok").all(), got
    assert got["reference"].iloc[0].startswith("season 10-01 to 12-31, 2 year(s)")
    assert got["training_rows"].iloc[0] < len(reference) / 3  # October to December only
    for feature, convert in UNIT_ERRORS.items():
        wrong = _drift(batch.assign(**{feature: convert(batch[feature])}), reference)
        assert wrong.loc[feature, "status"] == "drift", (feature, wrong)
        assert (wrong.drop(index=feature)["status"] == "ok").all()
    # the whole year as reference: the winter looks moved (PSI far past 0.2), though no more than weather moves
    whole = drift.feature_drift(batch, reference).set_index("feature")
    assert whole.loc["temperature", "psi"] > 1.0 and whole.loc["temperature", "status"] != "drift"
    assert whole.loc["temperature", "psi"] > 5 * got.loc["temperature", "psi"]


def test_drift_status_needs_a_move_and_its_size():
    assert drift.status(0.15, 9.0) == "ok"  # barely moved
    assert drift.status(0.5, 0.5) == "ok" and drift.status(0.5, 1.5) == "warn" and drift.status(0.5, 2.5) == "drift"
    x = np.random.default_rng(0).normal(10, 2, 5000)
    assert drift.shift(x, x) == 0 and drift.shift(x, x + 4) == pytest.approx(2, rel=0.02)
    assert drift.shift(x, x / 1000) > 6  # the spread shrank a thousandfold (kW/m^2 for W/m^2)
    season = drift.season(3, pd.Series(pd.to_datetime(["2013-05-01", "2014-05-02", "2014-09-01"], utc=True)),
                          pd.Series(pd.to_datetime(["2015-05-01", "2015-05-03"], utc=True)))
    assert season.rows.tolist() == [True, True, False] and "2 year(s)" in season.label
    assert drift.season(3, None, None).label == "all"


@pytest.mark.skipif(not GERMANY.exists(), reason="the real data (../shared/data/germany.csv) is not here")
def test_real_2016_q4_is_not_drift_but_its_unit_errors_are():
    from windpipe.data.process import load_processed

    df = load_processed(GERMANY)
    reference, batch = time_window(df, pd.Timestamp("2016-10-01", tz="UTC"))
    got = _drift(batch, reference)
    assert (got["status"] == "ok").all(), got
    for feature, convert in UNIT_ERRORS.items():
        wrong = _drift(batch.assign(**{feature: convert(batch[feature])}), reference)
        assert wrong.loc[feature, "status"] == "drift" and wrong.loc[feature, "psi"] > 5


# ------------------------------------------------------------------------------------------- monitoring

def test_batch_errors_one_row_per_batch_with_actuals(tmp_path):
    times = pd.date_range("2016-01-01", periods=6, freq="h", tz="UTC")
    scored = pd.DataFrame({"batch_id": [1, 1, 1, 2, 2, 3], "row_no": range(6),
                           TIMESTAMP: times.tz_localize(None), "solar_GW_pred": [1.0, 2, 3, 4, 5, 6],
                           "wind_GW_pred": [1.0, 1, 1, 9, 9, 9], "model_name": "m",
                           "model_version": ["1", "1", "1", "2", "2", "3"], "row_count": [3, 3, 3, 2, 2, 1]})
    actuals = pd.DataFrame({TIMESTAMP: times[:5], "solar_GW": [1.0, 2, 3, 4, 5], "wind_GW": [1.0, 1, 1, 1, 1]})
    rows = batch_errors(scored, actuals, {("m", "1"): 0.5, ("m", "2"): 1.0}, ratio_limit=1.5)
    assert rows["batch_id"].tolist() == [1, 2]  # batch 3's hour has no recorded power yet
    one, two = rows.iloc[0], rows.iloc[1]
    assert one["rmse"] == 0 and one["status"] == "ok" and one["rows_with_actuals"] == 3
    assert two["rmse_wind_GW"] == 8 and two["bias_wind_GW"] == 8 and two["ratio"] == pytest.approx(4.0)
    assert two["status"] == "degraded" and two["first_time"] == times[3]
    assert batch_errors(scored, actuals, {}, 1.5)["status"].tolist() == ["unknown", "unknown"]
    path = tmp_path / "a.csv"
    actuals.assign(extra=1).to_csv(path, index=False)
    pd.testing.assert_frame_equal(read_actuals(path), actuals)
    pd.concat([actuals, actuals.tail(1)]).to_csv(path, index=False)
    with pytest.raises(WindpipeError, match="records 1 hour"):
        read_actuals(path)
    actuals.drop(columns="wind_GW").to_csv(path, index=False)
    with pytest.raises(WindpipeError, match="lacks column"):
        read_actuals(path)
    with pytest.raises(WindpipeError, match="does not exist"):
        read_actuals(tmp_path / "none.csv")


# ------------------------------------------------------------------------------------------- processed files

def _processed(n: int = 24 * 10) -> pd.DataFrame:
    return years(1).head(n).reset_index(drop=True)


@pytest.mark.parametrize(("case", "problem", "fix"), [
    ("missing column", "lacks column(s) wind_GW", "produce the processed entity"),
    ("no timestamps", "has no timestamps", "name the column of UTC times utc_timestamp"),
    ("bad times", "are not times", "UTC times"),
    ("gaps", "has gaps: 2 row(s) with empty values in temperature", "drop or fill"),
    ("duplicate", "repeats 1 hour(s)", "drop_duplicates"),
    ("unsorted", "is not sorted by time", "sort the rows"),
    ("long gap", "has a gap of 8.0 days", "fill the gap"),
    ("empty", "has no rows", "check the step"),
])
def test_bad_processed_files_are_named(tmp_path, case, problem, fix):
    df = _processed(24 * 20).assign(**{TIMESTAMP: lambda d: d[TIMESTAMP].dt.strftime("%Y-%m-%dT%H:%M:%SZ")})
    if case == "missing column":
        df = df.drop(columns="wind_GW")
    elif case == "no timestamps":
        df = df.rename(columns={TIMESTAMP: "time"})
    elif case == "bad times":
        df.loc[3, TIMESTAMP] = "yesterday"
    elif case == "gaps":
        df.loc[[4, 9], "temperature"] = np.nan
    elif case == "duplicate":
        df = pd.concat([df.iloc[:5], df.iloc[[4]], df.iloc[5:]])
    elif case == "unsorted":
        df = df.iloc[[1, 0, *range(2, len(df))]]
    elif case == "long gap":
        df = pd.concat([df.iloc[:24], df.iloc[24 * 9:]])  # 1 January, then from 10 January
    elif case == "empty":
        df = df.head(0)
    path = tmp_path / "p.csv"
    df.to_csv(path, index=False)
    with pytest.raises(WindpipeError, match=problem.replace("(", r"\(").replace(")", r"\)")) as err:
        check_processed(read_processed(path), f"The processed file {path}")
    assert fix in err.value.fix and str(path) in err.value.problem


def test_a_good_processed_file_becomes_the_processed_entity(tmp_path):
    df = _processed()
    for suffix in ("csv", "parquet"):
        path = tmp_path / f"p.{suffix}"
        (df.to_csv if suffix == "csv" else df.to_parquet)(path, index=False)
        got = check_processed(read_processed(path), "p")
        pd.testing.assert_frame_equal(got, df, check_dtype=False)
    repeated = pd.concat([df.iloc[:5], df.iloc[[4]].assign(windspeed=99.0), df.iloc[5:]]).reset_index(drop=True)
    kept = check_processed(repeated, "p", duplicates="first")  # the workshop file repeats DST hours
    pd.testing.assert_frame_equal(kept, df)
    for bad, message in ((tmp_path / "none.csv", "does not exist"), (tmp_path, "is a folder"),
                         (tmp_path / "p.txt", "neither CSV nor parquet")):
        if bad.suffix == ".txt":
            bad.write_text("x")
        with pytest.raises(WindpipeError, match=message):
            read_processed(bad)


def test_processed_file_wires_into_the_process_step_through_the_plan(tmp_path):
    from windpipe.pipeline.cache import input_values
    from windpipe.pipeline.interfaces import load_interfaces
    from windpipe.pipeline.plan import make_plan

    path = tmp_path / "p.parquet"
    plan = make_plan(load_interfaces(), "training", external={"processed_file": str(path)})
    assert input_values(plan, plan.step("process"), {}) == {"processed": str(path)}
    raw = make_plan(load_interfaces(), "training", external={"raw": str(tmp_path)})
    assert input_values(raw, raw.step("process"), {}) == {"raw_dir": str(tmp_path)}
    assert raw.step("process").params["processed"] == ""

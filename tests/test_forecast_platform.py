"""Honest forecasting on a real platform: the gate on the newest window, a trend model through
`windpipe predict`, performance monitoring into the marts, and a processed file the user brings."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from windpipe.errors import WindpipeError
from windpipe.marts import queries, tables
from windpipe.names import FEATURES, QUANTILE_COLUMNS, TARGETS, TIMESTAMP

from .conftest import latest_run, mlflow_run
from .models import log_registered_model, tiny_processed
from .registry_helpers import log_candidate, make_scope, small_df
from .test_predict import cli, write_input

pytestmark = pytest.mark.slow


@pytest.fixture
def scope(use_platform, monkeypatch):
    return make_scope(use_platform, monkeypatch)


@pytest.fixture
def marts(use_platform, tmp_path, monkeypatch):
    from windpipe.settings import clear_settings_cache

    url = f"sqlite:///{tmp_path / 'marts.db'}"
    monkeypatch.setenv("WINDPIPE_MARTS_URL", url)
    clear_settings_cache()
    yield tables.get_engine(url)
    tables.dispose_engines()


# ------------------------------------------------------------------------------------------- the gate

def test_gate_scores_challenger_and_production_on_the_same_newest_window(scope):
    from windpipe.models import loading
    from windpipe.models.promotion import promote
    from windpipe.training.metrics import regression_metrics

    first = log_candidate(scope, scale=1.3, split_by="time", holdout_weeks=1)
    assert promote(scope.settings, run_id=first).promoted
    second = log_candidate(scope, scale=1.0, split_by="time", holdout_weeks=1)
    res = promote(scope.settings, run_id=second)
    assert res.promoted and res.previous == 1 and "newest 1 weeks" in res.holdout
    # the window: the entity's newest week, which neither run trained on
    df = small_df()
    window = df[df[TIMESTAMP] > df[TIMESTAMP].max() - pd.Timedelta(weeks=1)]
    assert f"{len(window)} rows" in res.holdout and f"{window[TIMESTAMP].min():%Y-%m-%d %H:%M}" in res.holdout
    for version, got in ((1, res.production_metrics), (2, res.challenger_metrics)):
        model, _ = loading.load_uri(f"models:/{scope.model_name}/{version}", scope.settings)
        pred = loading.predict(model, window[FEATURES], window[TIMESTAMP])
        assert got["rmse"] == pytest.approx(regression_metrics(window[TARGETS], pred)["rmse"], rel=1e-9)
    tags = mlflow.MlflowClient().get_model_version(scope.model_name, "2").tags
    assert "newest 1 weeks" in tags["windpipe.holdout"]


def test_the_gate_refuses_a_forecast_whose_interval_covers_too_little_or_too_much(scope, tmp_path):
    """The candidate's 80 % interval must cover between the settings' coverage_low and coverage_high of the
    holdout: outside, it is not promoted (the reason says how far and which way); inside, it is."""
    from windpipe.entities.schema import PROCESSED
    from windpipe.entities.store import write_entity
    from windpipe.models.promotion import promote
    from windpipe.steps import train as T

    path = tmp_path / "processed.parquet"
    write_entity(PROCESSED, tiny_processed(), path)
    T.train("lr", data=str(path), seed="42", test_size="0.2", split_by="time", holdout_weeks="1",
            time_features="true", backtest_folds="0")
    strict = scope.settings.model_copy(update={"coverage_low": 0.99, "coverage_high": 1.0})
    res = promote(strict)
    coverage = res.challenger_metrics["coverage80"]
    assert (res.promoted, res.production) == (False, None) and coverage < 0.99
    assert f"covers {coverage:.3f} of the holdout" in res.reason and "outside 0.99-1" in res.reason
    assert "too narrow" in res.reason
    loose = scope.settings.model_copy(update={"coverage_low": 0.0, "coverage_high": coverage - 0.01})
    assert "too wide" in promote(loose).reason
    fair = scope.settings.model_copy(update={"coverage_low": coverage - 0.01, "coverage_high": coverage + 0.01})
    res = promote(fair)
    assert (res.promoted, res.production) == (True, res.version)


# ------------------------------------------------------------------------------------------- a trend model scores

@pytest.fixture
def trend_model(use_platform, tmp_path):
    """An lr model of the steps (splines x trend), trained on 60 days with the newest week held out, registered."""
    from windpipe.entities.schema import PROCESSED
    from windpipe.entities.store import write_entity
    from windpipe.steps import train as T

    path = tmp_path / "processed.parquet"
    df = tiny_processed()
    write_entity(PROCESSED, df, path)
    out = T.train("lr", data=str(path), seed="42", test_size="0.2", split_by="time", holdout_weeks="1",
                  time_features="true", backtest_folds="0")
    version = mlflow.register_model(out["model_uri"], "wind_solar_trend")
    return {"df": df, "uri": f"models:/wind_solar_trend/{version.version}", "model_uri": out["model_uri"],
            "trained": out}


def test_trend_model_scores_from_utc_timestamp_and_refuses_rows_without_it(trend_model, marts, tmp_path):
    from windpipe.scoring.batch import run_batch

    rows = trend_model["df"].tail(48).reset_index(drop=True)
    res = run_batch(write_input(rows[[TIMESTAMP, *FEATURES]], tmp_path / "in.parquet"), tmp_path / "out.parquet",
                    trend_model["uri"], say=lambda _m: None)
    out = pd.read_parquet(res.output)
    plain = mlflow.pyfunc.load_model(trend_model["model_uri"]).predict(rows.set_index(TIMESTAMP)[FEATURES])
    np.testing.assert_allclose(out[["solar_GW_pred", "wind_GW_pred"]].to_numpy(), plain[TARGETS].to_numpy())
    with pytest.raises(WindpipeError, match=r"has no utc_timestamp column \(and no DatetimeIndex\), but the model "
                                            "follows the trend") as err:
        run_batch(write_input(rows[FEATURES], tmp_path / "no_time.parquet"), tmp_path / "out2.parquet",
                  trend_model["uri"], say=lambda _m: None)
    assert "add utc_timestamp" in err.value.fix and not (tmp_path / "out2.parquet").exists()
    code, _out, err_text = cli("predict", "--input", str(tmp_path / "no_time.parquet"), "--output",
                               str(tmp_path / "out3.parquet"), "--model-uri", trend_model["uri"])
    assert code == 1 and "derived from utc_timestamp" in err_text and "Traceback" not in err_text


def test_the_forecast_says_how_sure_it_is_everywhere_the_model_goes(trend_model, marts, tmp_path):
    """P10 <= P50 <= P90 per target beside the point forecast, the same numbers from pyfunc, `windpipe predict`
    (its output file and the marts) and plain `mlflow models serve`; the training run logged the pinball loss
    and the 80 % interval's coverage and width on its holdout."""
    from windpipe.deploy import serving
    from windpipe.scoring.batch import run_batch
    from windpipe.settings import get_settings
    from windpipe.stack.procs import free_port

    trained = trend_model["trained"]
    assert 0.5 <= trained["coverage80"] <= 1.0 and trained["width80"] > 0 and trained["pinball"] > 0
    rows = trend_model["df"].tail(48).reset_index(drop=True)
    naive = rows[[TIMESTAMP, *FEATURES]].assign(**{TIMESTAMP: rows[TIMESTAMP].dt.tz_localize(None)})  # (MLflow's)
    local = mlflow.pyfunc.load_model(trend_model["model_uri"]).predict(naive)
    assert list(local.columns) == [*TARGETS, *QUANTILE_COLUMNS]
    q = local[QUANTILE_COLUMNS].to_numpy().reshape(len(rows), len(TARGETS), 3)
    assert (np.diff(q, axis=2) >= 0).all() and (q >= 0).all()
    assert (q[:, 1, 2] - q[:, 1, 0]).mean() > 0.05  # wind's interval has a width
    res = run_batch(write_input(rows[[TIMESTAMP, *FEATURES]], tmp_path / "in.parquet"), tmp_path / "out.parquet",
                    trend_model["uri"], say=lambda _m: None)
    np.testing.assert_allclose(pd.read_parquet(res.output)[QUANTILE_COLUMNS], local[QUANTILE_COLUMNS])
    np.testing.assert_allclose(queries.batch_rows(marts, res.batch_id)[QUANTILE_COLUMNS], local[QUANTILE_COLUMNS])
    proc, url = serving.start(get_settings(), free_port(), model_uri=trend_model["uri"], log=tmp_path / "serve.log")
    try:
        served = serving.request_predictions(url, rows[[TIMESTAMP, *FEATURES]], columns=[TIMESTAMP, *FEATURES])
    finally:
        serving.stop(proc)
    assert list(served.columns) == [*TARGETS, *QUANTILE_COLUMNS]
    np.testing.assert_allclose(served.to_numpy(), local.to_numpy(), rtol=1e-6, atol=1e-9)


def test_a_nine_column_version_still_serves_with_its_time_columns_in_the_payload(use_platform, tmp_path):
    """A version logged before the natural inputs, under plain `mlflow models serve`: the client derives its time
    columns (as loading does), and the curl `windpipe serve` would print for it works."""
    import subprocess

    from windpipe.deploy import serving
    from windpipe.models import loading
    from windpipe.settings import get_settings
    from windpipe.stack.procs import free_port
    from windpipe.training.features import MODEL_COLUMNS

    from .models import log_nine_column_model

    old = log_nine_column_model(use_platform, tmp_dir=tmp_path)
    settings = get_settings()
    columns, tensor = serving.input_spec(settings, old["uri"])
    assert columns == MODEL_COLUMNS and not tensor
    rows = old["df"].tail(24)
    proc, url = serving.start(settings, free_port(), old["uri"], log=tmp_path / "serve.log")
    try:
        served = serving.request_predictions(url, rows, columns)
        model, _ = loading.load_uri(old["uri"], settings)
        np.testing.assert_allclose(served.to_numpy(), loading.predict(model, rows[FEATURES], rows[TIMESTAMP]),
                                   rtol=1e-6)
        with pytest.raises(WindpipeError, match="refused"):  # the four weather columns alone are not enough
            serving.request_predictions(url, rows)
        out = subprocess.run(serving.curl_example(url, columns), shell=True, capture_output=True, text=True,
                             timeout=30)
        assert '"predictions"' in out.stdout and "hour_sin" in serving.curl_example(url, columns), out.stdout
    finally:
        serving.stop(proc)


# ------------------------------------------------------------------------------------------- monitoring

def test_monitor_writes_one_row_per_scored_batch_with_actuals(marts, use_platform, tmp_path):
    from windpipe.scoring.batch import run_batch
    from windpipe.settings import get_settings

    model = log_registered_model(use_platform, tmp_dir=tmp_path)
    uri = f"models:/{get_settings().model_name}/{model['version']}"
    df = model["df"]
    ids = []
    for name, part in (("a", df.iloc[:100]), ("b", df.iloc[500:600]), ("c", df.iloc[1000:1010])):
        res = run_batch(write_input(part[[TIMESTAMP, *FEATURES]], tmp_path / f"{name}.parquet"),
                        tmp_path / f"{name}_out.parquet", uri, say=lambda _m: None)
        ids.append(res.batch_id)
    actuals = pd.concat([df.iloc[:50], df.iloc[520:530]])  # batch c's hours: no recorded power yet
    path = tmp_path / "actuals.csv"
    actuals.to_csv(path, index=False)
    code, out, err = cli("monitor", "--actuals", str(path))
    assert code == 0, err
    rows = queries.performance_history(marts).set_index("batch_id")
    assert rows.index.tolist() == ids[:2] and rows["rows_with_actuals"].tolist() == [50, 10]
    assert rows["status"].eq("unknown").all()  # this version has no error at promotion on record
    served = pd.read_parquet(tmp_path / "a_out.parquet").head(50)
    diff = served[["solar_GW_pred", "wind_GW_pred"]].to_numpy() - df.iloc[:50][TARGETS].to_numpy()
    assert rows.loc[ids[0], "rmse"] == pytest.approx(np.sqrt((diff ** 2).mean(axis=0)).mean())
    run = latest_run(use_platform, "monitor")
    assert run.info.status == "FINISHED" and run.data.metrics["batches"] == 2
    assert run.data.tags["windpipe.monitor_status"] == "ok"
    # an error at promotion far below: both batches degrade; running again replaces the rows
    mlflow.MlflowClient().set_model_version_tag(get_settings().model_name, str(model["version"]), "holdout_rmse",
                                                "0.001")
    code, out, err = cli("monitor", "--actuals", str(path), "--threshold", "2")
    assert code == 0, err
    rows = queries.performance_history(marts)
    assert len(rows) == 2 and rows["status"].eq("degraded").all() and (rows["ratio"] > 2).all()
    assert out.count("warning: batch") == 2 and latest_run(use_platform, "monitor").data.tags[
        "windpipe.monitor_status"] == "degraded"
    # recorded power for hours nobody scored, or a bad file: a clear error, nothing written
    df.iloc[1300:1310].to_csv(path, index=False)
    code, _out, err = cli("monitor", "--actuals", str(path))
    assert code == 1 and "No scored rows fall in the actuals' hours" in err
    code, _out, err = cli("monitor", "--actuals", str(tmp_path / "nope.csv"))
    assert code == 1 and "does not exist" in err
    assert len(queries.performance_history(marts)) == 2


# ------------------------------------------------------------------------------------------- a processed file

def test_process_step_logs_a_processed_file_and_refuses_a_bad_one(use_platform, tmp_path):
    from windpipe.entities.schema import PROCESSED
    from windpipe.entities.store import read_entity, resolve_uri

    df = tiny_processed(24 * 20)
    good = tmp_path / "germany_like.csv"
    df.to_csv(good, index=False)
    proc = mlflow_run(use_platform, "process", "-P", f"processed={good}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = latest_run(use_platform, "process")
    assert run.data.params["processed_file"] == str(good)
    logged = read_entity(PROCESSED, resolve_uri(run.data.tags["windpipe.entity.processed"], tmp_path / "dl"))
    pd.testing.assert_frame_equal(logged, df, check_dtype=False)

    bad = tmp_path / "repeated.csv"
    pd.concat([df.iloc[:5], df.iloc[[4]], df.iloc[5:]]).to_csv(bad, index=False)
    proc = mlflow_run(use_platform, "process", "-P", f"processed={bad}")
    assert proc.returncode != 0 and "repeats 1 hour(s)" in proc.stderr and "fix:" in proc.stderr
    run = latest_run(use_platform, "process")
    assert run.info.status == "FAILED" and "repeats 1 hour(s)" in run.data.tags["windpipe.failure_reason"]
    # the pipeline refuses it before any run starts
    before = len(mlflow.search_runs(experiment_names=[use_platform.settings.experiment], output_format="list"))
    res = use_platform.windpipe("pipeline", "run", "--processed", str(bad), "--quick")
    assert res.returncode == 1 and "repeats 1 hour(s)" in res.stderr and "Traceback" not in res.stderr
    res = use_platform.windpipe("pipeline", "run", "--processed", str(bad), "--raw", str(tmp_path))
    assert res.returncode == 2 and "--raw and --processed both given" in res.stderr
    after = len(mlflow.search_runs(experiment_names=[use_platform.settings.experiment], output_format="list"))
    assert after == before

"""`mlflow run projects/{lr,rf,keras}` as a user types it, against a real platform (gbm runs in the pipeline's tests).

One small processed entity (from tests/models.py) is written once and passed by path; the
`latest` default is checked once, after a real process run.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from windpipe.entities.schema import PROCESSED
from windpipe.entities.store import write_entity
from windpipe.models import loading
from windpipe.names import FEATURES, QUANTILE_COLUMNS, TARGETS, TIMESTAMP
from windpipe.training.features import MODEL_COLUMNS

from .conftest import latest_run, mlflow_run
from .models import tiny_processed

pytestmark = pytest.mark.slow

METRICS = {"rmse", "mae", "r2", "rmse_solar_GW", "mae_solar_GW", "r2_solar_GW", "rmse_wind_GW", "r2_wind_GW",
           "bias_solar_GW", "bias_wind_GW"}
# the entity holds 30 days: hold out the last week (the default, 13 weeks, is longer than the data)
WEEK = ("-P", "holdout_weeks=1", "-P", "backtest_folds=0")


@pytest.fixture(scope="module")
def entity(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("entity") / "processed.parquet"
    write_entity(PROCESSED, tiny_processed(24 * 30), path)
    return str(path)


def ok(proc):
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])


def assert_trained(run, family: str, entity_uri: str) -> str:
    assert run.info.status == "FINISHED"
    assert METRICS <= set(run.data.metrics)
    tags = run.data.tags
    assert tags["windpipe.model_family"] == family
    assert tags["windpipe.input.processed"] == entity_uri and "windpipe.entity.processed" not in tags
    assert tags["windpipe.data_date"].isdigit() and tags["windpipe.model_uri"].startswith("models:/m-")
    assert {"split_seed", "test_size", "split_by", "holdout_weeks", "holdout_start"} <= set(run.data.params)
    assert run.data.params["split_by"] == "time" and run.data.params["time_features"] == "true"
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["processed"]
    assert "figures/predicted_vs_recorded.html" in [a.path for a in mlflow.MlflowClient().list_artifacts(
        run.info.run_id, "figures")]
    model = mlflow.pyfunc.load_model(tags["windpipe.model_uri"])
    # the model takes its natural inputs, and its MLmodel names the columns its core derives from them
    assert model.metadata.get_input_schema().input_names() == [TIMESTAMP, *FEATURES]
    assert model.metadata.metadata["windpipe.input_columns"] == MODEL_COLUMNS
    # plain pyfunc, as `mlflow models serve` calls it: utc_timestamp (naive UTC) and the weather
    weather = pd.DataFrame([[5.0, 10.0, 100.0, 50.0]], columns=FEATURES)
    plain = model.predict(weather.assign(**{TIMESTAMP: pd.to_datetime(["2013-01-20 12:00"])}))
    assert list(plain.columns) == [*TARGETS, *QUANTILE_COLUMNS]  # the point forecast, then P10, P50, P90
    # through windpipe's one loader (a tz-aware time) the same numbers
    ours = loading.quantile_frame(*loading.predict_quantiles(model, weather,
                                                             pd.Series(pd.to_datetime(["2013-01-20T12:00:00Z"]))))
    np.testing.assert_allclose(ours.to_numpy(), plain.to_numpy(dtype="float64"), rtol=1e-6)
    return tags["windpipe.model_uri"]


def test_lr_main_with_backtest_then_evaluate(use_platform, entity):
    ok(mlflow_run(use_platform, "lr", "-P", f"data={entity}", "-P", "holdout_weeks=1", "-P", "backtest_folds=2"))
    run = latest_run(use_platform, "lr", "main")
    model_uri = assert_trained(run, "lr", entity)
    # the holdout is the newest week: every training row is older than every holdout row
    last = pd.read_parquet(entity)["utc_timestamp"].max()
    assert pd.Timestamp(run.data.params["holdout_start"]) == last - pd.Timedelta(days=7) + pd.Timedelta(hours=1)
    assert pd.Timestamp(run.data.tags["windpipe.data_date"], tz="UTC") < pd.Timestamp(run.data.params["holdout_start"])
    # the rolling-origin backtest: two folds, their metrics and mean, a figure and the fold table
    metrics = run.data.metrics
    assert {"backtest_r2", "backtest_bias_wind_GW", "backtest_fold1_r2", "backtest_fold2_r2"} <= set(metrics)
    assert metrics["backtest_r2"] == pytest.approx((metrics["backtest_fold1_r2"] + metrics["backtest_fold2_r2"]) / 2)
    assert metrics["backtest_fold2_r2"] == pytest.approx(metrics["r2"])  # the last fold is the holdout
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "figures")}
    assert "figures/backtest.html" in artifacts
    ok(mlflow_run(use_platform, "lr", "-e", "evaluate", "-P", f"model_uri={model_uri}", "-P", f"data={entity}",
                  "-P", "scope=all"))
    run = latest_run(use_platform, "lr", "evaluate")
    assert run.info.status == "FINISHED"
    assert run.data.metrics["eval_r2"] > 0.5 and run.data.params["eval_rows"] == str(24 * 30)
    assert not run.outputs or not run.outputs.model_outputs


def test_rf_main_and_small_grid(use_platform, entity):
    ok(mlflow_run(use_platform, "rf", "-P", f"data={entity}", "-P", "n_estimators=4", "-P", "max_depth=4", *WEEK))
    assert_trained(latest_run(use_platform, "rf", "main"), "rf", entity)
    ok(mlflow_run(use_platform, "rf", "-e", "grid", "-P", f"data={entity}", "-P", "n_estimators=2,4",
                  "-P", "max_depth=3,none", *WEEK))
    parent = latest_run(use_platform, "rf", "grid")
    assert_trained(parent, "rf", entity)
    children = mlflow.search_runs(experiment_ids=[parent.info.experiment_id], output_format="list",
                                  filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 4
    best = max(children, key=lambda r: r.data.metrics["r2"])
    assert parent.data.tags["windpipe.best_run_id"] == best.info.run_id
    assert parent.data.metrics["r2"] == pytest.approx(best.data.metrics["r2"])
    assert all(not c.outputs or not c.outputs.model_outputs for c in children)


def test_keras_main_logs_epochs_and_model(use_platform, entity):
    ok(mlflow_run(use_platform, "keras", "-P", f"data={entity}", "-P", "epochs=2", "-P", "hidden_units=8",
                  "-P", "learning_rate=0.01", *WEEK))
    run = latest_run(use_platform, "keras", "main")
    assert_trained(run, "keras", entity)
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
    assert len(history) == 2  # autolog: one point per epoch
    assert run.data.params["learning_rate"] == "0.01"


def test_latest_reads_what_the_newest_process_run_wrote(use_platform, raw_dir, entity):
    """`data=latest` is the newest process output, even after a training run read a file of its own."""
    ok(mlflow_run(use_platform, "process", "-P", f"raw_dir={raw_dir}"))
    written = latest_run(use_platform, "process").data.tags["windpipe.entity.processed"]
    ok(use_platform.windpipe("run", "lr", "-P", f"data={entity}", *WEEK))  # newer than the process run
    ok(mlflow_run(use_platform, "lr", *WEEK))
    run = latest_run(use_platform, "lr", "main")
    assert run.data.params["data_uri"] == written


@pytest.fixture(scope="module")
def bad_entities(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("bad")
    df = tiny_processed(48)
    df.drop(columns="windspeed").to_parquet(out / "missing.parquet", index=False)
    df.head(0).to_parquet(out / "empty.parquet", index=False)
    return {"missing_column": str(out / "missing.parquet"), "empty": str(out / "empty.parquet"),
            "no_file": str(out / "nowhere.parquet"), "no_run": "runs:/0123456789abcdef0123456789abcdef/x.parquet"}


@pytest.mark.parametrize(("project", "params", "message"), [
    ("rf", {"n_estimators": "-3"}, "n_estimators must be at least 1"),
    ("keras", {"epochs": "0"}, "epochs must be at least 1"),
    ("keras", {"learning_rate": "abc"}, "learning_rate must be a number"),
    ("lr", {"data": "missing_column"}, "lacks column(s) windspeed"),
    ("lr", {"data": "empty"}, "has no rows"),
    ("rf", {"data": "no_file"}, "does not exist"),
    ("lr", {"data": "no_run"}, "Cannot fetch the entity"),
    ("lr", {}, "holdout window of 13 weeks is longer than the data"),  # 30 days of data
    ("rf", {"holdout_weeks": "1", "backtest_folds": "5"}, "5 backtest folds of 1 weeks reach back"),
    ("keras", {"split_by": "season"}, "split_by must be one of time, random"),
    ("gbm", {"learning_rate": "2"}, "learning_rate must be between 0.0 and 1.0"),
])
def test_bad_input_fails_the_run_with_reason_and_no_model(use_platform, entity, bad_entities, project, params,
                                                          message):
    params = {"data": entity, **params}
    params["data"] = bad_entities.get(params["data"], params["data"])
    args = [a for k, v in params.items() for a in ("-P", f"{k}={v}")]
    proc = mlflow_run(use_platform, project, *args)
    assert proc.returncode != 0
    assert "error: " in proc.stderr and message in proc.stderr and "fix:" in proc.stderr
    run = latest_run(use_platform, project, "main")
    assert run.info.status == "FAILED"
    assert message in run.data.tags["windpipe.failure_reason"]
    assert not run.outputs or not run.outputs.model_outputs
    assert "windpipe.model_uri" not in run.data.tags
    models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id],
                                         filter_string=f"source_run_id = '{run.info.run_id}'", output_format="list")
    assert models == []


def test_evaluate_bad_model_uri_fails(use_platform, entity):
    proc = mlflow_run(use_platform, "lr", "-e", "evaluate", "-P", "model_uri=models:/m-doesnotexist",
                      "-P", f"data={entity}", "-P", "holdout_weeks=1")
    assert proc.returncode != 0 and "Cannot resolve the model models:/m-doesnotexist" in proc.stderr
    run = latest_run(use_platform, "lr", "evaluate")
    assert run.info.status == "FAILED"
    assert "Cannot resolve the model models:/m-doesnotexist" in run.data.tags["windpipe.failure_reason"]


def test_lr_runs_in_its_own_virtualenv(use_platform, entity):
    """The default environment manager builds the env from python_env.yaml (same deps as process: cached)."""
    ok(mlflow_run(use_platform, "lr", "-P", f"data={entity}", *WEEK, env_manager="", timeout=1500))
    run = latest_run(use_platform, "lr", "main")
    assert run.data.tags.get("mlflow.project.env") == "virtualenv" and run.info.status == "FINISHED"


def test_windpipe_run_makes_the_run_mlflow_run_makes_in_one_process(use_platform, entity, bad_entities):
    """`windpipe run STEP` = `mlflow run projects/STEP --env-manager local`, with one Python start-up."""
    args = ["-e", "grid", "-P", f"data={entity}", "-P", "n_estimators=2,4", "-P", "max_depth=3", *WEEK]
    ok(mlflow_run(use_platform, "rf", *args))
    by_mlflow = latest_run(use_platform, "rf", "grid")
    proc = use_platform.windpipe("run", "rf", *args)
    ok(proc)
    ours = latest_run(use_platform, "rf", "grid")
    assert ours.info.run_id != by_mlflow.info.run_id and ours.info.run_id in proc.stdout
    assert_trained(ours, "rf", entity)
    assert ours.data.params == by_mlflow.data.params  # the parameters MLflow Projects logs
    for tag in ("mlflow.source.name", "mlflow.source.type", "mlflow.project.entryPoint", "mlflow.user",
                "mlflow.source.git.commit", "mlflow.source.git.repoURL", "mlflow.project.backend",
                "windpipe.code_version"):
        assert ours.data.tags.get(tag) == by_mlflow.data.tags.get(tag), tag
    assert ours.data.tags["mlflow.source.name"].startswith("file://")  # (this checkout is a git repository)
    assert ours.data.metrics["r2"] == pytest.approx(by_mlflow.data.metrics["r2"])

    proc = use_platform.windpipe("run", "lr", "-P", f"data={bad_entities['missing_column']}")
    assert proc.returncode == 1 and "lacks column(s) windspeed" in proc.stderr
    assert latest_run(use_platform, "lr", "main").info.status == "FAILED"
    before = _run_ids(use_platform)
    proc = use_platform.windpipe("run", "lr", "-P", "dat=x")  # a name the MLproject does not have: no run
    assert proc.returncode == 2 and "takes data, seed, split_by, holdout_weeks" in proc.stderr, proc.stderr
    proc = use_platform.windpipe("run", "lr", "-e", "evaluate")  # model_uri has no default: no run either
    assert proc.returncode == 2 and "needs model_uri" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert _run_ids(use_platform) == before


def _run_ids(platform) -> set[str]:
    return {r.info.run_id for r in mlflow.search_runs(experiment_names=[platform.settings.experiment],
                                                       output_format="list", max_results=10000)}

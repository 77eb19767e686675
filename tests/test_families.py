"""Model families and their natural inputs: the registry, a family made by `new-step --family`, and every
family's logged model answering `mlflow models serve`, pyfunc and `windpipe predict` from utc_timestamp and
the four weather columns (older nine-column models still score)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.entities import LoggedModelStatus

from windpipe.errors import UsageError, WindpipeError
from windpipe.models.loading import quantile_frame
from windpipe.names import FEATURES, QUANTILE_COLUMNS, TARGETS, TIMESTAMP
from windpipe.pipeline.interfaces import load_interfaces
from windpipe.training import families
from windpipe.training.families import Family, TrainingRows, register

from .conftest import REPO
from .models import tiny_processed

NATURAL = [TIMESTAMP, *FEATURES]
# tiny settings per family (a second or two each); the defaults live in the projects' MLprojects
TINY = {"lr": {}, "rf": {"n_estimators": 4, "max_depth": 4, "min_samples_leaf": 3},
        "gbm": {"max_iter": 10, "learning_rate": 0.1, "max_leaf_nodes": 15, "min_samples_leaf": 20,
                "l2_regularization": 0, "max_features": 1.0},
        "keras": {"epochs": 1, "batch_size": 256, "learning_rate": 0.01, "hidden_units": "8", "patience": 1,
                  "validation_split": 0.1, "ensemble": 1, "bins": 4}}


def fit(family: str, df: pd.DataFrame, time_features: bool = True) -> object:
    fam = families.get(family)
    return fam.fit_natural(TrainingRows(df, time_features), fam.parse(seed=0, **TINY[family]))


# ---------------------------------------------------------------------------------------------- the registry

def test_every_project_that_trains_is_a_registered_family():
    trainers = {s.name for s in load_interfaces(REPO / "projects") if "model" in [p.entity for p in s.outputs]}
    assert trainers == set(families.names()) == {"lr", "rf", "keras", "gbm"}
    assert families.get("keras").flavor == "keras" and families.get("keras").tensor
    with pytest.raises(WindpipeError, match="Unknown model family 'xgb'") as err:
        families.get("xgb")
    assert "gbm, keras, lr, rf" in err.value.fix
    with pytest.raises(WindpipeError, match="flavor 'onnx'"):
        register(Family(name="onnx_test", summary="", parse=dict, fit=lambda rows, p: None, flavor="onnx"))


@pytest.mark.parametrize("family", ["gbm", "lr", "rf"])
def test_power_rises_with_what_drives_it_and_ignores_the_rest(family):
    """Planted dips (less power at middling wind speed and radiation than below them) cannot bend the model, and
    wind ignores the radiation, solar the wind speed (the promotion gate's rules, built into the families)."""
    from windpipe.training.inputs import with_repeated_times

    df = tiny_processed(24 * 60)
    for feature, target in (("windspeed", "wind_GW"), ("rad_horizontal", "solar_GW")):
        middle = df[feature].between(df[feature].quantile(0.5), df[feature].quantile(0.8))
        df.loc[middle, target] = 0.0
    model = fit(family, df)
    stamp = df[TIMESTAMP].iloc[-1]
    grid = pd.DataFrame({f: np.full(41, float(df[f].median())) for f in FEATURES})
    for feature, target in (("windspeed", 1), ("rad_horizontal", 0), ("rad_diffuse", 0)):
        sweep = grid.assign(**{feature: np.linspace(0, df[feature].max() * 1.2, 41)})
        pred = with_repeated_times(model).predict(sweep.assign(**{TIMESTAMP: stamp}))
        rising, other = TARGETS[target], TARGETS[1 - target]
        for q in ("", "_p10", "_p50", "_p90"):  # the point forecast and its quantiles
            assert (np.diff(pred[rising + q]) >= -1e-9).all(), (feature, q)
            assert np.ptp(pred[other + q]) < 1e-9, (feature, q)  # the other target ignores it
    with pytest.raises(Exception, match="repeats an earlier row's time"):  # the model itself refuses repeats
        model.predict(grid.assign(**{TIMESTAMP: stamp}))


def test_power_is_clipped_inside_the_model_to_zero_and_the_capacity_it_knows():
    """A core that predicts -5 GW and 10^6 GW gives 0 and the ceiling; lr's negative nights are clipped and
    counted (clipped_share), and what the model returns never leaves [0, capacity]."""
    from sklearn.dummy import DummyRegressor

    from windpipe.training.families import clipped_fitted, forecaster_of, predict_fitted
    from windpipe.training.inputs import Head
    from windpipe.training.metrics import clipped_metrics
    from windpipe.training.split import xy

    df = tiny_processed(24 * 40)
    rows = TrainingRows(df, time_features=True)
    X, y = xy(df, time_features=True)
    core = DummyRegressor(strategy="constant", constant=[-5.0, 1e6]).fit(X, y)
    wild = families.natural(core, time_features=True, head=rows.head())
    ceiling = Head(forecaster_of(wild).head).ceiling(X)
    assert (ceiling > 0).all() and (ceiling < 1e3).all()
    np.testing.assert_array_equal(predict_fitted(wild, df), np.column_stack([np.zeros(len(df)), ceiling[:, 1]]))
    assert clipped_metrics(clipped_fitted(wild, df))["clipped_share"] == 1.0
    # just above the ceiling is clipped too (one pass of the core: score_fitted)
    above = DummyRegressor(strategy="constant", constant=list(1.1 * ceiling.max(axis=0))).fit(X, y)
    assert families.score_fitted(families.natural(above, time_features=True, head=rows.head()), df).clipped.all()

    lr = fit("lr", df)
    pred, clipped = predict_fitted(lr, df), clipped_fitted(lr, df)
    assert (pred >= 0).all() and (pred <= ceiling + 1e-9).all()
    share = clipped_metrics(clipped)
    assert 0 < share["clipped_share_solar_GW"] < 1 and share["clipped_share"] == pytest.approx(clipped.mean())
    # a run's metrics score the core once: the same forecast, quantiles and clipped rows as the model's predict
    scored, (point, quantiles) = families.score_fitted(lr, df), families.predict_quantiles_fitted(lr, df)
    assert quantiles is not None and quantiles.shape == (len(df), 2, 3)
    np.testing.assert_array_equal(scored.point, point)
    np.testing.assert_array_equal(scored.quantiles, quantiles)
    np.testing.assert_array_equal(scored.clipped, clipped)
    # and a row counts as clipped exactly where the head changed the core's own number
    raw = forecaster_of(lr).raw(lr[:-1].transform(df[[TIMESTAMP, *FEATURES]])).reshape(len(df), -1)
    assert scored.clipped.any() and not scored.clipped.all()
    np.testing.assert_array_equal(scored.clipped, scored.point != raw)


def test_a_family_that_forgets_a_skops_type_is_refused_before_logging():
    from windpipe.steps.train import check_trusted

    model = fit("rf", tiny_processed(24 * 20))
    with pytest.raises(WindpipeError, match="sklearn.tree._tree.Tree") as err:
        check_trusted(families.get("rf"), model, ["windpipe_inputs.NaturalInputs"])
    assert "skops_trusted" in err.value.fix


@pytest.mark.parametrize("rising", [(0,), (0, 1)])
@pytest.mark.parametrize("calendar", [True, False])
def test_lr_folded_ridge_predicts_what_its_design_and_ridge_predict(rising, calendar):
    """MonotoneRidge (lr's core) fits as Pipeline(MonotoneDesign, positive Ridge) and predicts its numbers without
    building the design, within the training range and beyond it (the splines' constant extrapolation)."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline

    from windpipe.training.families.lr import ALPHA, TOL
    from windpipe.training.inputs import MonotoneDesign, MonotoneRidge, positive_ridge

    rng = np.random.default_rng(len(rising) + 2 * calendar)
    other = (len(rising),)
    cal = tuple(range(len(rising) + 1, len(rising) + 5)) if calendar else ()

    def rows(n: int, spread: float) -> np.ndarray:
        X = rng.normal(size=(n, len(rising) + 1 + len(cal))) * spread
        X[:, list(cal)] = np.sin(X[:, list(cal)])  # (the calendar's cycles lie in [-1, 1])
        return X

    X = rows(2000, 1.0)
    y = np.maximum(X[:, list(rising)], 0).sum(axis=1) * (1 + 0.3 * X[:, other[0]] ** 2) + 0.1 * rng.normal(size=2000)
    if calendar:
        y += 0.5 * X[:, cal[0]] * X[:, other[0]]
    folded = MonotoneRidge(rising=rising, other=other, calendar=cal, alpha=ALPHA, tol=TOL).fit(X, y)
    design = MonotoneDesign(rising=rising, other=other, calendar=cal).fit(X)
    unfolded = Pipeline([("design", design),
                         ("ridge", positive_ridge(design.transform(X), y, ALPHA, signed=design.n_signed_))])
    np.testing.assert_array_equal(folded.ridge_.coef_, unfolded["ridge"].coef_)  # the same fit
    assert isinstance(unfolded["ridge"], Ridge)  # (what models logged before MonotoneRidge hold)
    new = rows(5000, 2.0)  # a quarter beyond the training range
    expected = unfolded.predict(new)
    assert np.ptp(expected) > 1.0  # (a response worth comparing)
    np.testing.assert_allclose(folded.predict(new), expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())


def test_the_positive_ridge_is_fitted_at_the_optimum_of_its_problem(monkeypatch):
    """lr's positive Ridge (windpipe.training.inputs.positive_ridge) solves min ||y - b - Dw||^2 + alpha ||w||^2,
    w >= 0, exactly: the optimality (KKT) conditions hold, and its objective is no higher than scikit-learn's own
    solver at a tight tolerance; should the exact solver fail, scikit-learn's fits."""
    import scipy.optimize
    from sklearn.linear_model import Ridge

    from windpipe.training.inputs import positive_ridge

    rng = np.random.default_rng(7)
    D = np.abs(rng.normal(size=(600, 40)))
    D[:, 20:] = -D[:, :20]  # (lr's free columns enter with both signs: a singular Gram without the penalty)
    y = D[:, :5] @ np.array([1.0, 0.5, 0.0, 2.0, 0.3]) - D[:, 5] + 3.0 + 0.1 * rng.normal(size=600)
    alpha = 0.1

    def objective(r: Ridge) -> float:
        return float(np.sum((y - r.predict(D)) ** 2) + alpha * np.sum(r.coef_ ** 2))

    exact = positive_ridge(D, y, alpha)
    w = exact.coef_
    assert (w >= 0).all() and (w > 0).sum() >= 5
    assert np.mean(y - exact.predict(D)) == pytest.approx(0.0, abs=1e-9)  # the intercept is optimal
    centred = D - D.mean(axis=0)
    gradient = 2 * (centred.T @ (centred @ w - (y - y.mean())) + alpha * w)
    scale = np.abs(centred.T @ (y - y.mean())).max()
    assert np.abs(gradient[w > 0]).max() <= 1e-8 * scale  # stationary where free
    assert gradient[w == 0].min() >= -1e-8 * scale  # and no zero coefficient would lower it by rising
    reference = Ridge(alpha=alpha, positive=True, tol=1e-10, max_iter=100_000).fit(D, y)
    assert objective(exact) <= objective(reference) * (1 + 1e-9)

    # weighted: the same optimum as the rows repeated by their weights
    weights = rng.integers(1, 4, size=600)
    weighted = positive_ridge(D, y, alpha, sample_weight=weights)
    repeated = positive_ridge(np.repeat(D, weights, axis=0), np.repeat(y, weights), alpha)
    np.testing.assert_allclose(weighted.coef_, repeated.coef_, atol=1e-9)
    assert weighted.intercept_ == pytest.approx(repeated.intercept_, abs=1e-9)
    assert not np.allclose(weighted.coef_, w, atol=1e-3)  # (the weights changed the fit)

    # lr's design: constrained columns, then free ones and their negatives: projecting the free ones out (signed=)
    # reaches the same optimum as nnls over every column, in the design's form (one of each pair 0)
    mixed = np.hstack([np.abs(rng.normal(size=(600, 12))), rng.normal(size=(600, 9))])
    mixed = np.hstack([mixed, -mixed[:, 12:]])
    ym = mixed[:, :3] @ np.array([1.0, 0.0, 2.0]) - 1.5 * mixed[:, 13] + 0.1 * rng.normal(size=600)
    for cols, yy, signed in ((D, y, 20), (mixed, ym, 9)):
        full = positive_ridge(cols, yy, alpha, sample_weight=weights)
        projected = positive_ridge(cols, yy, alpha, sample_weight=weights, signed=signed)
        np.testing.assert_allclose(projected.coef_, full.coef_, atol=1e-7)
        assert projected.intercept_ == pytest.approx(full.intercept_, abs=1e-7)
        pairs = projected.coef_[-2 * signed:].reshape(2, signed)
        assert (projected.coef_ >= 0).all() and (pairs.min(axis=0) == 0).all()
    assert (projected.coef_[12:21] > 0).any() and (projected.coef_[21:] > 0).any()  # (both signs were needed)

    def fails(*_a, **_k):
        raise RuntimeError("Maximum number of iterations reached.")

    monkeypatch.setattr(scipy.optimize, "nnls", fails)
    fallback = positive_ridge(D, y, alpha, tol=1e-10)
    assert fallback.solver_ == "lbfgs" and objective(fallback) == pytest.approx(objective(exact), rel=1e-2)


def test_lr_models_round_trip_through_skops_folded_and_as_logged_before():
    """A lr model saved with skops and the types train.log_model trusts loads and predicts the same, and so does
    the Pipeline(MonotoneDesign, Ridge) core models were logged with before MonotoneRidge."""
    import skops.io

    from windpipe.steps.train import check_trusted, skops_trusted
    from windpipe.training.inputs import MonotoneRidge

    df = tiny_processed(24 * 20)
    model = fit("lr", df)
    trusted = check_trusted(families.get("lr"), model, skops_trusted(families.get("lr")))
    loaded = skops.io.loads(skops.io.dumps(model), trusted=trusted)
    rows = df[NATURAL].tail(48)
    pd.testing.assert_frame_equal(loaded.predict(rows), model.predict(rows))

    core = next(e for e in _estimators(model) if isinstance(e, MonotoneRidge))
    old = skops.io.loads(skops.io.dumps(core.unfolded()), trusted=trusted)
    X = np.random.default_rng(0).normal(size=(100, core.n_features_in_))
    np.testing.assert_allclose(old.predict(X), core.predict(X), rtol=1e-9, atol=1e-12)


def _estimators(obj: object) -> list[object]:
    """Every estimator nested inside `obj` (Pipelines, ColumnTransformers, frozen and voting members)."""
    from sklearn.base import BaseEstimator

    if isinstance(obj, list | tuple):
        return [e for child in obj for e in _estimators(child)]
    if not isinstance(obj, BaseEstimator):
        return []
    return [obj, *(e for child in vars(obj).values() for e in _estimators(child))]

# ---------------------------------------------------------------------------------------------- new-step --family

@pytest.fixture
def projects(tmp_path):
    """A copy of the repository's step folders (their interfaces and MLprojects) in a temporary folder."""
    dest = tmp_path / "projects"
    for folder in (REPO / "projects").iterdir():
        if (folder / "step.yaml").exists():
            shutil.copytree(folder, dest / folder.name, ignore=shutil.ignore_patterns("windpipe", "__pycache__"))
    return dest


@pytest.mark.slow
def test_a_family_made_by_new_step_joins_training_the_pipeline_and_the_dag(projects, tmp_path, monkeypatch,
                                                                         use_platform):
    from windpipe.entities.schema import PROCESSED
    from windpipe.entities.store import write_entity
    from windpipe.pipeline.dags import dag_layout
    from windpipe.pipeline.plan import make_plan
    from windpipe.pipeline.scaffold import new_family
    from windpipe.steps.train import train

    family_dir = tmp_path / "families"
    family_dir.mkdir()
    folder, module = new_family("ridge_demo", dest=projects, family_dir=family_dir)
    assert module == family_dir / "ridge_demo.py" and (folder / "MLproject").exists()
    monkeypatch.setattr(families, "__path__", [*families.__path__, str(family_dir)])
    monkeypatch.setattr(families, "_REGISTRY", dict(families._REGISTRY))  # (the test family leaves with the test)
    # training: the step's entry point finds the family by name and logs a model that takes the natural inputs
    data = tmp_path / "processed.parquet"
    write_entity(PROCESSED, tiny_processed(24 * 30), data)
    out = train("ridge_demo", data=str(data), seed="42", test_size="0.2", split_by="time", holdout_weeks="1",
                time_features="true", backtest_folds="0", step_dir=folder, alpha="0.5")
    model = mlflow.pyfunc.load_model(out["model_uri"])
    assert model.metadata.get_input_schema().input_names() == NATURAL
    run = mlflow.get_run(model.metadata.run_id)
    assert run.data.params["alpha"] == "0.5" and run.data.tags["windpipe.model_family"] == "ridge_demo"
    # the pipeline and the Airflow DAG: a trainer beside the others, upstream of compare
    specs = load_interfaces(projects)
    plan = make_plan(specs, "training", external={"raw": "/raw"})
    assert "ridge_demo" in plan.step("compare").needs and plan.step("ridge_demo").needs == ("process",)
    assert plan.step("ridge_demo").params["backtest_folds"] == "4"  # its MLproject's defaults
    tasks = {t.task_id: t for t in dag_layout("training", projects)}
    assert "ridge_demo" in tasks["compare"].upstream and tasks["ridge_demo"].upstream == ("process",)
    # a second one of the same name, or a family name taken by a module: refused, nothing written
    with pytest.raises(UsageError, match="exists already"):
        new_family("ridge_demo", dest=projects, family_dir=family_dir)
    with pytest.raises(UsageError, match="exists already"):
        new_family("gbm", dest=tmp_path / "elsewhere", family_dir=family_dir)
    assert not (tmp_path / "elsewhere" / "gbm").exists()


# ---------------------------------------------------------------------------------------------- natural inputs

@pytest.fixture(scope="module")
def logged(shared_platform, tmp_path_factory):
    """One tiny model of every family, fitted on 40 days and logged as the steps log them (models:/m-...)."""
    from windpipe.steps.train import log_model

    mlflow.set_tracking_uri(shared_platform.tracking_uri)
    mlflow.set_experiment(shared_platform.settings.experiment)
    df = tiny_processed(24 * 40)
    out = {}
    for family in TINY:
        model = fit(family, df.iloc[:-48])
        with mlflow.start_run(tags={"windpipe.step": family}):
            out[family] = (log_model(families.get(family), model, df.iloc[-48:]).model_uri, model)
    return {"models": out, "rows": df.tail(24).reset_index(drop=True)}


def natural_rows(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[NATURAL].assign(**{TIMESTAMP: rows[TIMESTAMP].dt.tz_localize(None)})  # (MLflow: naive datetimes)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["lr", "rf", "gbm", "keras"])
def test_mlflow_models_serve_answers_curl_with_the_natural_columns(family, logged, use_platform, tmp_path):
    from windpipe.deploy import serving
    from windpipe.settings import get_settings
    from windpipe.stack.procs import free_port

    uri, model = logged["models"][family]
    rows = logged["rows"]
    expected = quantile_frame(*families.predict_quantiles_fitted(model, rows))  # the point, then the quantiles
    proc, url = serving.start(get_settings(), free_port(), uri, log=tmp_path / "serve.log")
    try:
        body = json.dumps(serving.payload(natural_rows(rows)))
        assert '"2013-02-' in body and "Z" not in body  # ISO times, naive UTC
        curl = subprocess.run(["curl", "-s", f"{url}/invocations", "-H", "Content-Type: application/json",
                               "-d", body], capture_output=True, text=True, timeout=60)
        served = pd.DataFrame(json.loads(curl.stdout)["predictions"])
        assert list(served.columns) == [*TARGETS, *QUANTILE_COLUMNS]
        np.testing.assert_allclose(served.to_numpy(dtype="float64"), expected.to_numpy(), rtol=1e-5, atol=1e-6)
        # a repeated hour is the model's own clear error (HTTP 400), naming the rows
        repeated = natural_rows(rows).assign(**{TIMESTAMP: rows[TIMESTAMP].dt.tz_localize(None).iloc[0]})
        with pytest.raises(WindpipeError, match=r"HTTP 400.*repeats an earlier row's time in 23 row\(s\)"):
            serving.request_predictions(url, repeated, NATURAL)
        # MLflow 3.17's datetime type takes no zone: a time ending in Z is refused before the model (docs say so)
        zoned = re.sub(r'(T\d\d:\d\d:\d\d)"', r'\1Z"', body)
        refused = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{url}/invocations", "-H",
                                  "Content-Type: application/json", "-d", zoned], capture_output=True, text=True,
                                 timeout=60)
        assert '00Z"' in zoned and refused.stdout == "400"
    finally:
        serving.stop(proc)


@pytest.mark.slow
def test_a_family_that_forgets_a_skops_type_logs_no_model(logged, use_platform):
    """log_model trusts no type up front (a second skops dump of every model): MLflow's save loads the file back
    with the family's types before storing anything, and the step then names the type and where to list it."""
    import dataclasses

    from windpipe.steps.train import log_model

    forgetful = dataclasses.replace(families.get("rf"), skops_trusted=())
    with mlflow.start_run() as run:
        with pytest.raises(WindpipeError, match=r"sklearn\.tree\._tree\.Tree") as err:
            log_model(forgetful, logged["models"]["rf"][1], logged["rows"])
    assert "skops_trusted" in err.value.fix
    stored = mlflow.search_logged_models(filter_string=f"source_run_id = '{run.info.run_id}'", output_format="list")
    assert all(m.status != LoggedModelStatus.READY for m in stored)


@pytest.mark.slow
def test_every_family_loads_without_windpipe_and_takes_the_datetimeindex(logged, tmp_path):
    """pyfunc in a process where windpipe cannot be imported: the model carries windpipe_inputs."""
    rows = logged["rows"]
    rows.set_index(TIMESTAMP)[FEATURES].to_parquet(tmp_path / "rows.parquet")  # the usual shape: tz-aware index
    for family, (_uri, model) in logged["models"].items():
        np.save(tmp_path / f"{family}.npy", quantile_frame(*families.predict_quantiles_fitted(model, rows)).to_numpy())
    uris = {f: u for f, (u, _m) in logged["models"].items()}
    code = ("import sys, json; sys.modules['windpipe'] = None\n"  # any import of windpipe fails
            "import numpy as np, pandas as pd, mlflow.pyfunc\n"
            "rows = pd.read_parquet('rows.parquet')\n"
            "for family, uri in json.loads(sys.argv[1]).items():\n"
            "    m = mlflow.pyfunc.load_model(uri)\n"
            "    assert sys.modules['windpipe_inputs'].__file__.endswith('/code/windpipe_inputs.py'), family\n"
            "    np.testing.assert_allclose(np.asarray(m.predict(rows), dtype='float64'), np.load(family + '.npy'),\n"
            "                               rtol=1e-6, err_msg=family)\n"
            "    try:\n"
            "        m.predict(rows.reset_index(drop=True))\n"
            "    except Exception as exc:\n"
            "        assert 'no utc_timestamp column and no DatetimeIndex' in str(exc), exc\n"
            "    else:\n"
            "        raise AssertionError(family + ': no time, no error')\n"
            "print('ok')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["MLFLOW_TRACKING_URI"] = mlflow.get_tracking_uri()
    proc = subprocess.run([sys.executable, "-I", "-c", code, json.dumps(uris)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


# ---------------------------------------------------------------------------------------------- windpipe predict

@pytest.fixture
def registered(logged, use_platform):
    """The gbm model of `logged`, registered (pinned by version)."""
    version = mlflow.register_model(logged["models"]["gbm"][0], "wind_solar_natural")
    return f"models:/wind_solar_natural/{version.version}"


@pytest.mark.slow
def test_windpipe_predict_takes_a_datetimeindex_file_and_names_bad_times(registered, logged, tmp_path,
                                                                        monkeypatch):
    from windpipe.settings import clear_settings_cache

    from .test_predict import cli

    monkeypatch.setenv("WINDPIPE_MARTS_URL", f"sqlite:///{tmp_path / 'marts.db'}")
    clear_settings_cache()
    rows = logged["rows"]
    indexed = tmp_path / "indexed.parquet"
    rows.set_index(TIMESTAMP)[FEATURES].to_parquet(indexed)
    code, _out, err = cli("predict", "--input", str(indexed), "--output", str(tmp_path / "out.parquet"),
                          "--model-uri", registered)
    assert code == 0, err
    out = pd.read_parquet(tmp_path / "out.parquet")
    np.testing.assert_allclose(out[[f"{t}_pred" for t in TARGETS]].to_numpy(),
                               families.predict_fitted(logged["models"]["gbm"][1], rows))
    assert (out[TIMESTAMP] == rows[TIMESTAMP]).all()
    # a time that is not one, and a repeated hour: refused, the rows named, nothing written
    for bad, message in ((rows.assign(**{TIMESTAMP: rows[TIMESTAMP].astype(str).where(rows.index != 3, "soon")}),
                          r"is not a time in 1 row\(s\) \(rows, counted from 0: 3; e.g. 'soon'\)"),
                         (rows.assign(**{TIMESTAMP: rows[TIMESTAMP].where(~rows.index.isin([5, 9]),
                                                                          rows[TIMESTAMP].iloc[0])}),
                          r"repeats an earlier row's time in 2 row\(s\) \(rows, counted from 0: 5, 9")):
        bad.to_parquet(tmp_path / "bad.parquet")
        code, _out, err = cli("predict", "--input", str(tmp_path / "bad.parquet"), "--output",
                              str(tmp_path / "bad_out.parquet"), "--model-uri", registered)
        assert code == 1 and "Traceback" not in err and not (tmp_path / "bad_out.parquet").exists()
        assert re.search(message, err), err


@pytest.mark.slow
def test_a_nine_column_model_logged_before_still_scores_and_serves(use_platform, tmp_path, monkeypatch):
    """A version logged before the natural inputs (its signature: the weather and the five time columns) still
    scores in `windpipe predict` and passes `windpipe serve`'s check: windpipe derives its time columns."""
    from windpipe.deploy.follow import build_slot
    from windpipe.models import loading
    from windpipe.settings import clear_settings_cache, get_settings

    from .models import log_nine_column_model
    from .test_predict import cli

    monkeypatch.setenv("WINDPIPE_MARTS_URL", f"sqlite:///{tmp_path / 'marts.db'}")
    clear_settings_cache()
    old = log_nine_column_model(use_platform, tmp_dir=tmp_path)
    rows = old["df"].tail(24).reset_index(drop=True)
    rows[NATURAL].to_parquet(tmp_path / "in.parquet")
    code, _out, err = cli("predict", "--input", str(tmp_path / "in.parquet"), "--output",
                          str(tmp_path / "out.parquet"), "--model-uri", old["uri"])
    assert code == 0, err
    out = pd.read_parquet(tmp_path / "out.parquet")
    np.testing.assert_allclose(out[[f"{t}_pred" for t in TARGETS]].to_numpy(), old["predict"](rows))
    slot = build_slot(loading.resolve(old["uri"], get_settings()), get_settings())
    assert slot.version == str(old["version"])

"""The workshop notebooks (1_starting_point, 2_tracked) run headless with tiny parameters.

Each notebook runs in a fresh kernel (nbclient) in a temporary folder; the tracked ones log to
either stack: the shared local platform, or the session's team platform (PostgreSQL, artifacts
proxied to S3, basic auth). The kernel's environment is a user's after `eval "$(windpipe env)"`:
MLFLOW_TRACKING_URI, and on the team stack MLFLOW_TRACKING_USERNAME / _PASSWORD.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from tests.conftest import Platform, point_at, stored_artifacts
from windpipe.errors import WindpipeError
from windpipe.settings import clear_settings_cache
from windpipe.workbench.notebooks import INJECTED_TAG, inject_parameters, main, run_notebook

REPO = Path(__file__).resolve().parent.parent
START = REPO / "1_starting_point"
TRACKED = REPO / "2_tracked"
NOTEBOOKS = ["make_processed_data", "model_linreg", "model_rf", "model_keras"]
PROCESSED_COLUMNS = ["solar_GW", "wind_GW", "windspeed", "temperature", "rad_horizontal", "rad_diffuse"]
# three weeks of hourly rows, 8 trees, 2 epochs: enough to exercise every cell
TINY = {"sample_rows": 24 * 21, "n_estimators": 8, "max_depth": 4, "epochs": 2, "batch_size": 32}


def _params(notebook: str, **paths: str) -> dict:
    """The tiny parameters a notebook declares (injecting undeclared names would be harmless, but noisy)."""
    declared = _declared(START / f"{notebook}.ipynb") | _declared(TRACKED / f"{notebook}.ipynb")
    return {k: v for k, v in {**TINY, **paths}.items() if k in declared}


def _declared(path: Path) -> set[str]:
    if not path.exists():
        return set()
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    return {line.split("=")[0].strip() for line in cell.source.splitlines() if "=" in line and line[0].isalpha()}


# ---- every notebook is well-formed -------------------------------------------------------------

@pytest.mark.parametrize("folder", [START, TRACKED], ids=["1_starting_point", "2_tracked"])
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_has_parameters_first_and_no_outputs(folder: Path, name: str):
    nb = nbformat.read(folder / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell holds the parameters"
    assert all(not c.outputs for c in code), "notebooks are committed without outputs"
    text = "\n".join(c.source for c in code)
    if folder == START:
        assert "mlflow" not in text
    else:
        assert "mlflow.set_experiment" in text and "mlflow.log_input" in text
        assert any(c.cell_type == "markdown" and "What changed" in c.source for c in nb.cells)


def test_inject_parameters_adds_one_cell_after_the_parameters_cell():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# t"),
                                         nbformat.v4.new_code_cell("a = 1", metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell("print(a)")])
    inject_parameters(nb, {"a": 2, "b": "x"})
    inject_parameters(nb, {"a": 3})  # injecting again replaces, it does not stack
    assert [c.source for c in nb.cells][1:3] == ["a = 1", "# Injected parameters\na = 3\n"]
    assert nb.cells[2].metadata["tags"] == [INJECTED_TAG]
    assert len(nb.cells) == 4


def test_inject_parameters_without_parameters_cell_is_an_error():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("a = 1")])
    with pytest.raises(WindpipeError, match="no cell tagged 'parameters'"):
        inject_parameters(nb, {"a": 2})
    assert inject_parameters(nb, {}).cells[0].source == "a = 1"  # nothing to inject: fine


def test_run_notebook_missing_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture):
    with pytest.raises(WindpipeError, match="does not exist"):
        run_notebook(tmp_path / "nope.ipynb")
    assert main([str(tmp_path / "nope.ipynb")]) == 1
    assert "error: Notebook" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(tmp_path / "nope.ipynb"), "-p", "no-equals-sign"])


# ---- 1_starting_point: untracked, but it runs ---------------------------------------------------

def _load_app(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Dash looks its module up to find the assets folder
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


@pytest.mark.slow
def test_starting_point_notebooks_report_and_dashboard(raw_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    data = tmp_path / "data" / "processed.csv"
    run_notebook(START / "make_processed_data.ipynb", _params("make_processed_data", raw_dir=str(raw_dir),
                                                               data_path=str(data)), cwd=tmp_path, env=env)
    df = pd.read_csv(data, index_col=0, parse_dates=True)
    assert df.index.name == "utc_timestamp" and list(df.columns) == PROCESSED_COLUMNS
    assert df.index.min() == pd.Timestamp("2013-01-01", tz="UTC") and not df.isna().any().any()
    assert 0 < df["wind_GW"].max() < 100  # GW, not MW

    for name in NOTEBOOKS[1:]:
        run_notebook(START / f"{name}.ipynb", _params(name, data_path=str(data), out_dir="outputs"),
                     cwd=tmp_path, env=env)
    assert {p.name for p in (tmp_path / "outputs").iterdir()} == {"model_linreg.pkl", "model_rf.pkl",
                                                                 "model_keras.keras"}

    # the report script, as the team runs it: from its folder's defaults, in a working folder
    proc = subprocess.run([sys.executable, str(START / "create_report.py"), "--out", "weekly.html"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    html = (tmp_path / "weekly.html").read_text()
    assert "weekly report" in html and html.count("plotly-graph-div") == 2

    # the dashboard: importable with paths from the environment; layout and callback work without serving
    monkeypatch.setenv("DATA_PATH", str(data))
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "outputs" / "model_rf.pkl"))
    app = _load_app(START / "app.py", "starting_point_app")
    assert app.app.layout is not None and app.server is app.app.server
    fig = app.update_graph("solar_GW", 7)
    assert [t.name for t in fig.data] == ["recorded", "predicted"] and 0 < len(fig.data[0].x) <= 24 * 7


# ---- 2_tracked: the same notebooks log to MLflow ------------------------------------------------

@pytest.fixture(params=["local", "team"])
def stack_client(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    """This process is a client of either stack's session platform (the local one, or the team one)."""
    p = request.getfixturevalue("shared_platform" if request.param == "local" else "team_platform")
    yield point_at(p, monkeypatch)
    clear_settings_cache()


@pytest.mark.slow
def test_tracked_notebooks_log_runs_datasets_and_loadable_models(stack_client, raw_dir: Path, tmp_path: Path):
    import mlflow

    p = stack_client
    env = dict(p.env)  # the tracking URI (and on the team stack the login), PATH with this interpreter
    data = tmp_path / "data" / "processed.csv"
    for name in NOTEBOOKS:
        params = _params(name, raw_dir=str(raw_dir), data_path=str(data))
        run_notebook(TRACKED / f"{name}.ipynb", params, cwd=tmp_path, env=env)
    assert list(pd.read_csv(data, index_col=0).columns) == PROCESSED_COLUMNS

    runs = mlflow.search_runs(experiment_names=["predicting_wind_solar"], output_format="list",
                              filter_string="tags.`workshop.folder` = '2_tracked'")
    by_name = {r.info.run_name: r for r in runs}
    assert set(by_name) == set(NOTEBOOKS) and all(r.info.status == "FINISHED" for r in runs)

    proc_run = by_name["make_processed_data"]
    assert proc_run.data.metrics["rows_processed"] == len(pd.read_csv(data))
    assert [a.path for a in mlflow.MlflowClient().list_artifacts(proc_run.info.run_id, "data")] == [
        "data/processed.csv"]
    assert [d.dataset.name for d in proc_run.inputs.dataset_inputs] == ["processed"]
    # the data went through the tracking server's proxy into the stack's store (FTP, or S3), and comes back
    assert proc_run.info.artifact_uri.startswith("mlflow-artifacts:/")
    exp = proc_run.info.experiment_id
    assert "artifacts/data/processed.csv" in stored_artifacts(p, f"{exp}/{proc_run.info.run_id}")
    copy = mlflow.artifacts.download_artifacts(run_id=proc_run.info.run_id, artifact_path="data/processed.csv",
                                               dst_path=str(tmp_path / "download"))
    assert Path(copy).read_bytes() == data.read_bytes()

    features = pd.read_csv(data)[["windspeed", "temperature", "rad_horizontal", "rad_diffuse"]].head(5)
    for name in NOTEBOOKS[1:]:
        run = by_name[name]
        assert {"rmse", "mae", "r2", "rmse_solar_GW", "r2_wind_GW"} <= set(run.data.metrics), name
        assert 0 < run.data.metrics["rmse"] < 20
        assert run.data.params["sample_rows"] == str(TINY["sample_rows"])
        assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["processed"]
        models = mlflow.search_logged_models(experiment_ids=[run.info.experiment_id], output_format="list",
                                             filter_string=f"source_run_id = '{run.info.run_id}'")
        assert len(models) == 1, name
        assert "artifacts/MLmodel" in stored_artifacts(p, f"{exp}/models/{models[0].model_id}"), name
        pred = mlflow.pyfunc.load_model(f"models:/{models[0].model_id}").predict(features)
        assert pd.DataFrame(pred).shape == (5, 2), name
    assert by_name["model_rf"].data.params["n_estimators"] == "8"
    keras_run = by_name["model_keras"]
    assert keras_run.data.params["epochs"] == "2" and "loss" in keras_run.data.metrics  # from autolog
    assert len(mlflow.MlflowClient().get_metric_history(keras_run.info.run_id, "loss")) == 2


# ---- notebooks/: the honest-evaluation lesson ---------------------------------------------------

@pytest.mark.slow
def test_honest_evaluation_notebook_shows_the_random_split_flatters(tmp_path: Path):
    """The same forest scores better on a random split than on the newest weeks, where it under-forecasts
    wind (the fleet grew); the model that follows the trend is unbiased there."""
    out = tmp_path / "results.csv"
    nb = REPO / "notebooks" / "honest_evaluation.ipynb"
    assert "parameters" in nbformat.read(nb, as_version=4).cells[1].metadata.get("tags", [])
    run_notebook(nb, {"years": 4, "n_estimators": 8, "out": str(out)}, cwd=tmp_path)
    res = pd.read_csv(out)
    one = res[res["part"] == 1].set_index("holdout")
    random, future = one.loc["random 20 %"], one.loc["newest 13 weeks"]
    assert random["r2"] > future["r2"] + 0.04
    assert abs(random["mean wind error (GW)"]) < 0.3 and future["mean wind error (GW)"] < -2.0
    two = res[(res["part"] == 2) & (res["holdout"] == "newest 13 weeks")].set_index("model")
    assert abs(two.loc["lr: splines x trend", "mean wind error (GW)"]) < 1.0
    assert two.loc["lr: splines x trend", "r2"] > two.loc["forest, weather only", "r2"]

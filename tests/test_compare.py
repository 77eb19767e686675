"""Compare runs: direction-aware sorting, formats, figures, and the CLI's errors."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace as NS

import pandas as pd
import pytest

from windpipe.errors import WindpipeError
from windpipe.models.compare import (
    family_figure,
    format_runs,
    higher_is_better,
    learning_curve_figure,
    rank_runs,
    runs_frame,
    varying_params,
)

from .registry_helpers import make_scope


def fake_run(run_id: str, family: str, metrics: dict, params: dict | None = None, model: str | None = "auto",
             entry: str = "main", start: int = 0) -> NS:
    tags = {"windpipe.step": family, "windpipe.model_family": family, "windpipe.entry_point": entry}
    if model:
        tags["windpipe.model_uri"] = f"models:/m-{run_id}" if model == "auto" else model
    return NS(info=NS(run_id=run_id, run_name=f"name-{run_id}", status="FINISHED", start_time=start),
              data=NS(tags=tags, metrics=metrics, params=params or {}))


@pytest.fixture
def frame() -> pd.DataFrame:
    return runs_frame([
        fake_run("a", "lr", {"rmse": 2.0, "r2": 0.80}, {"split_seed": "42", "n_estimators": "8"}),
        fake_run("b", "rf", {"rmse": 1.0, "r2": 0.90}, {"split_seed": "42", "n_estimators": "64"}),
        fake_run("c", "rf", {"rmse": 1.5, "r2": 0.95}, {"split_seed": "42", "n_estimators": "32"}),
        fake_run("d", "keras", {"rmse": 0.5}, model=None),                     # no model
        fake_run("e", "keras", {"r2": 0.99}),                                  # no rmse
        fake_run("f", "rf", {"rmse": 1.0, "r2": 0.90}, model="models:/m-b", entry="grid"),  # b's model again
    ])


def test_metric_directions():
    assert all(higher_is_better(m) for m in ("r2", "r2_solar_GW", "holdout_r2"))
    assert not any(higher_is_better(m) for m in ("rmse", "mae", "rmse_wind_GW", "loss", "val_loss", "mse"))


def test_rank_sorts_by_direction_and_keeps_runs_with_metric_and_model(frame):
    assert rank_runs(frame, "rmse")["run_id"].tolist() == ["b", "c", "a"]
    assert rank_runs(frame, "r2")["run_id"].tolist() == ["e", "c", "b", "a"]
    assert rank_runs(frame, "rmse", require_model=False)["run_id"].tolist()[0] == "d"
    top = rank_runs(frame, "rmse", top=2)
    assert top["rank"].tolist() == [1, 2] and top["run_id"].tolist() == ["b", "c"]
    with pytest.raises(WindpipeError, match="--top"):
        rank_runs(frame, "rmse", top=0)
    with pytest.raises(WindpipeError, match="accuracy"):
        rank_runs(frame, "accuracy")


def test_formats(frame):
    ranked = rank_runs(frame, "rmse")
    csv = pd.read_csv(io.StringIO(format_runs(ranked, "rmse", "csv")))
    assert csv["run_id"].tolist() == ["b", "c", "a"] and "params.n_estimators" in csv
    records = json.loads(format_runs(ranked, "rmse", "json"))
    assert [r["run_id"] for r in records] == ["b", "c", "a"] and records[0]["r2"] == 0.9
    table = format_runs(ranked, "rmse", "table")
    assert table.startswith("sorted by rmse (lower is better)")
    assert "n_estimators" in table and "split_seed" not in table  # only the params that vary
    assert varying_params(ranked) == ["params.n_estimators"]
    assert "higher is better" in format_runs(rank_runs(frame, "r2"), "r2")
    with pytest.raises(WindpipeError, match="Unknown format"):
        format_runs(ranked, "rmse", "xml")


def test_figures(frame):
    fig = family_figure(rank_runs(frame, "rmse"), "rmse")
    assert {t.name for t in fig.data} >= {"lr", "rf", "best (b)"}
    curves = pd.DataFrame({"run_id": ["k1"] * 4, "key": ["loss", "loss", "val_loss", "val_loss"],
                           "step": [0, 1, 0, 1], "value": [3.0, 2.0, 3.5, 2.5]})
    assert len(learning_curve_figure(curves).data) == 2


@pytest.mark.slow
def test_compare_cli_against_a_real_experiment(use_platform, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from windpipe.models.compare import compare_runs, learning_curves

    scope = make_scope(use_platform, monkeypatch)
    client = MlflowClient(use_platform.tracking_uri)
    exp_id = client.create_experiment(scope.experiment)
    ids = {}
    for key, family, rmse, r2 in (("lr", "lr", 2.0, 0.8), ("rf", "rf", 1.0, 0.9), ("keras", "keras", 1.5, 0.95)):
        run = client.create_run(exp_id, tags={"windpipe.model_family": family, "windpipe.step": family,
                                              "windpipe.entry_point": "main", "windpipe.model_uri": f"models:/m-{key}"})
        client.log_batch(run.info.run_id, metrics=[mlflow.entities.Metric("rmse", rmse, 0, 0),
                                                   mlflow.entities.Metric("r2", r2, 0, 0)],
                         params=[mlflow.entities.Param("family_param", key)])
        if family == "keras":
            client.log_batch(run.info.run_id, metrics=[mlflow.entities.Metric(k, 3.0 - e + (k == "val_loss"), 0, e)
                                                       for e in range(3) for k in ("loss", "val_loss")])
        client.set_terminated(run.info.run_id)
        ids[key] = run.info.run_id
    no_model = client.create_run(exp_id, tags={"windpipe.step": "lr"})
    client.log_metric(no_model.info.run_id, "rmse", 0.1)
    client.set_terminated(no_model.info.run_id)
    failed = client.create_run(exp_id, tags={"windpipe.step": "lr", "windpipe.model_uri": "models:/m-x"})
    client.log_metric(failed.info.run_id, "rmse", 0.05)
    client.set_terminated(failed.info.run_id, status="FAILED")

    df = compare_runs(scope.settings)
    assert df["run_id"].tolist() == [ids["rf"], ids["keras"], ids["lr"]]
    curves = learning_curves([ids["keras"]], settings=scope.settings)
    assert curves[curves.key == "loss"]["value"].tolist() == [3.0, 2.0, 1.0]
    assert curves[curves.key == "val_loss"]["step"].tolist() == [0, 1, 2]
    with pytest.raises(WindpipeError, match="is not valid"):
        compare_runs(scope.settings, filter_string="params.x ===")
    with pytest.raises(WindpipeError, match="no finished runs matching"):
        compare_runs(scope.settings, filter_string="params.family_param = 'nothing'")

    calls = {
        "json": ("compare", "--format", "json"),
        "r2 csv": ("compare", "--metric", "r2", "--format", "csv"),
        "filter top": ("compare", "--filter", "tags.`windpipe.model_family` != 'rf'", "--top", "1"),
        "unknown metric": ("compare", "--metric", "accuracy"),
        "unknown experiment": ("compare", "--experiment", "no_such_experiment"),
    }
    with ThreadPoolExecutor(max_workers=3) as pool:
        procs = dict(zip(calls, pool.map(lambda a: scope.cli(*a), calls.values()), strict=True))
    for case in ("json", "r2 csv", "filter top"):
        assert procs[case].returncode == 0, (case, procs[case].stderr)
    assert [r["run_id"] for r in json.loads(procs["json"].stdout)] == [ids["rf"], ids["keras"], ids["lr"]]
    assert pd.read_csv(io.StringIO(procs["r2 csv"].stdout))["run_id"].tolist() == [ids["keras"], ids["rf"], ids["lr"]]
    out = procs["filter top"].stdout
    assert ids["keras"] in out and ids["rf"] not in out and ids["lr"] not in out
    for case, text in (("unknown metric", "available: rmse, r2"), ("unknown experiment", scope.experiment)):
        proc = procs[case]
        assert proc.returncode == 1, (case, proc.stderr)
        assert proc.stderr.startswith("error: ") and text in proc.stderr and "Traceback" not in proc.stderr, case

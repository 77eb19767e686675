"""The dashboard: pure data/figure functions, callbacks called as functions, and a real headless browser."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.browser import chrome
from tests.models import log_registered_model, tiny_processed
from windpipe.errors import WindpipeError
from windpipe.names import FEATURES, QUANTILE_COLUMNS, QUANTILES, TARGETS, quantile_column
from windpipe.settings import Settings, get_settings
from windpipe.views import figures as F
from windpipe.views import frames as D
from windpipe.views import source as S

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"


class SumModel:
    """A stand-in pyfunc: solar = rad_horizontal / 100, wind = windspeed."""

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        assert list(df.columns) == FEATURES and all(df.dtypes == "float64")
        return np.column_stack([df["rad_horizontal"].to_numpy() / 100, df["windspeed"].to_numpy()])


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return D.index_frame(tiny_processed())


def fake_model(frame: pd.DataFrame, version: int = 1) -> S.ProductionModel:
    return S.ProductionModel("wind_solar", version, "run1", {"windpipe.instance_name": f"wind_solar_v{version}_x",
                                                             "holdout_rmse": "1.5", "holdout_r2": "0.9"},
                             SumModel(), frame)


# --- pure functions ---------------------------------------------------------------------------------

def test_weekly_rolling_one_row_per_day(frame):
    weekly = D.weekly_rolling(frame)
    assert set(weekly.columns) >= {"year", "day_of_year", *TARGETS}
    assert len(weekly) in (60, 61) and weekly["year"].unique().tolist() == [2013]
    # a 7-day rolling mean is smoother than the hourly data
    assert weekly["solar_GW"].std() < frame["solar_GW"].std()
    fig = F.history_figure(weekly)
    assert len(fig["data"]) == 2 and fig["data"][0]["name"] == "2013"


def test_parse_range_and_its_errors(frame):
    rng = D.parse_range("2013-01-05", "2013-01-05", frame)
    assert rng.end - rng.start == pd.Timedelta(days=1)
    with pytest.raises(WindpipeError, match="reversed"):
        D.parse_range("2013-02-01", "2013-01-01", frame)
    with pytest.raises(WindpipeError, match="No data"):
        D.parse_range("2020-01-01", "2020-02-01", frame)
    with pytest.raises(WindpipeError, match="not a date range"):
        D.parse_range("yesterday", "2013-01-01", frame)
    with pytest.raises(WindpipeError, match="Enter a start"):
        D.parse_range("", None, frame)


def month_rows(frame: pd.DataFrame) -> int:
    """Rows in the default range: the last 31 full days (744 hours less the generator's rare gaps)."""
    rng = D.parse_range(*D.default_range(frame), frame)
    return int(((frame.index >= rng.start) & (frame.index < rng.end)).sum())


def test_default_range_is_a_month_of_hours(frame):
    start, end = D.default_range(frame)
    rng = D.parse_range(start, end, frame)
    assert rng.end - rng.start == pd.Timedelta(days=31) and rng.end == frame.index.max().normalize()
    assert 744 - 3 <= month_rows(frame) <= 744


def test_predict_frame_errors_and_figure(frame):
    out = D.predict_frame(SumModel(), frame.head(48))
    assert list(out.columns) == [*TARGETS, "pred_solar_GW", "pred_wind_GW"]
    np.testing.assert_allclose(out["pred_wind_GW"], frame["windspeed"].head(48))
    errs = D.errors(out)
    diff = out["pred_solar_GW"] - out["solar_GW"]
    assert errs["solar_GW"]["rmse"] == pytest.approx(float(np.sqrt((diff ** 2).mean())))
    assert errs["solar_GW"]["mae"] == pytest.approx(float(diff.abs().mean()))
    fig = F.prediction_figure(out, "t")
    assert len(fig["data"]) == 4 and fig["layout"]["title"]["text"] == "t"
    np.testing.assert_allclose(fig["data"][3]["y"], out["pred_wind_GW"].round(4))
    assert fig["data"][0]["x"][0] == f"{frame.index[0]:%Y-%m-%d %H:%M}"
    assert F.as_figure(fig).data[1].name == "predicted solar_GW"  # a valid plotly figure
    assert "no data" in F.empty_figure("no data")["layout"]["annotations"][0]["text"]


class QuantileModel(SumModel):
    """SumModel with quantiles: P10, P50, P90 = the point - 1, the point, the point + 2 (a model with intervals)."""

    def predict(self, df: pd.DataFrame) -> pd.DataFrame:
        point = super().predict(df)
        out = pd.DataFrame(point, columns=TARGETS)
        for t, target in enumerate(TARGETS):
            for q, shift in zip(QUANTILES, (-1.0, 0.0, 2.0), strict=True):
                out[quantile_column(target, q)] = point[:, t] + shift
        return out


def test_the_pages_draw_the_80_percent_interval_of_a_model_with_quantiles(frame, tmp_path):
    """The predictions chart and the what-if curves draw P10..P90 as a band, the what-if cards say the interval,
    and the dashboard's batches carry the quantiles into the marts; a model without quantiles draws no band."""
    from windpipe.marts import queries, tables
    from windpipe.marts.writers import record_dashboard
    from windpipe.views.dashboard.components import interval_text

    out = D.predict_frame(QuantileModel(), frame.head(48))
    np.testing.assert_allclose(out["pred_wind_GW_p90"], frame["windspeed"].head(48) + 2.0)
    bands = [t for t in F.prediction_figure(out)["data"] if t.get("fill") == "tonexty"]
    assert [t["name"] for t in bands] == ["80 % interval solar_GW (P10..P90)", "80 % interval wind_GW (P10..P90)"]
    np.testing.assert_allclose(bands[1]["y"], out["pred_wind_GW_p90"].round(4))
    assert not [t for t in F.prediction_figure(D.predict_frame(SumModel(), frame.head(48)))["data"] if "fill" in t]
    vals = {"windspeed": 5, "temperature": 10, "rad_horizontal": 300, "rad_diffuse": 50}
    pred = D.whatif(QuantileModel(), vals)
    assert (pred["wind_GW"], pred["wind_GW_p10"], pred["wind_GW_p90"]) == (5.0, 4.0, 7.0)
    assert "80 % interval: 4.00 - 7.00 GW" in str(interval_text(pred, "wind_GW"))
    assert interval_text(D.whatif(SumModel(), vals), "wind_GW") == []
    curves = D.response_curves(QuantileModel(), vals, points=11)
    fig = F.response_figure(curves, {k: float(v) for k, v in vals.items()}, pred)
    assert len([t for t in fig["data"] if t.get("fill") == "tonexty"]) == 4  # two targets on two sweeps
    settings = Settings(home=tmp_path, marts_url=f"sqlite:///{tmp_path / 'marts.db'}")
    quantiles = out[[f"pred_{c}" for c in QUANTILE_COLUMNS]].to_numpy().reshape(len(out), len(TARGETS), 3)
    batch = record_dashboard(None, frame.head(48)[FEATURES], out[["pred_solar_GW", "pred_wind_GW"]].to_numpy(),
                             pd.Series(frame.head(48).index), model_name="m", model_version=1, model_uri=None,
                             settings=settings, quantiles=quantiles)
    rows = queries.batch_rows(tables.get_engine(settings=settings), batch)
    np.testing.assert_allclose(rows["wind_GW_p10"], frame["windspeed"].head(48) - 1.0)
    tables.dispose_engines()


def test_whatif_and_its_errors():
    vals = {"windspeed": 5, "temperature": 10, "rad_horizontal": 300, "rad_diffuse": 50}
    assert D.whatif(SumModel(), vals) == {"solar_GW": 3.0, "wind_GW": 5.0}
    with pytest.raises(WindpipeError, match="windspeed"):
        D.whatif(SumModel(), {**vals, "windspeed": None})
    with pytest.raises(WindpipeError, match="numbers"):
        D.whatif(SumModel(), {**vals, "temperature": "warm"})
    with pytest.raises(WindpipeError, match="negative"):
        D.whatif(SumModel(), {**vals, "rad_diffuse": -1})
    for bad in ("inf", "-inf", "nan", 1e200, 1e308):  # were HTTP 500 with the previous result still shown
        with pytest.raises(WindpipeError, match=r"temperature must be a finite number in \[-100, 70\]"):
            D.whatif(SumModel(), {**vals, "temperature": bad})


def test_response_curves_sweep_one_input_and_mark_the_chosen_point():
    vals = {"windspeed": 5, "temperature": 10, "rad_horizontal": 300, "rad_diffuse": 50}
    curves = D.response_curves(SumModel(), vals, points=11)
    wind, rad = curves["windspeed"], curves["rad_horizontal"]
    np.testing.assert_allclose(wind["wind_GW"], np.linspace(0, 25, 11))  # wind follows the swept wind speed
    assert (wind["solar_GW"] == 3.0).all()  # ... and solar stays at the chosen radiation's value
    np.testing.assert_allclose(rad["solar_GW"], np.linspace(0, 10, 11))
    assert (rad["wind_GW"] == 5.0).all()
    fig = F.response_figure(curves, {k: float(v) for k, v in vals.items()}, D.whatif(SumModel(), vals))
    marks = [t for t in fig["data"] if t["mode"] == "markers"]
    assert [(t["xaxis"], t["x"], t["y"]) for t in marks] == [
        ("x", [5.0], [3.0]), ("x", [5.0], [5.0]), ("x2", [300.0], [3.0]), ("x2", [300.0], [5.0])]
    with pytest.raises(WindpipeError, match="negative"):
        D.response_curves(SumModel(), {**vals, "windspeed": -1})


def test_alias_timeline_and_drift_figures():
    from windpipe.models.history import Move, frame

    t = [pd.Timestamp(f"2026-11-0{d} 12:00", tz="UTC").to_pydatetime() for d in (1, 2, 3)]
    moves = frame([Move(t[0], "production", None, 1, "first", "ada", "lab", "no production version yet"),
                   Move(t[1], "production", 1, 3, "promote", "ada", "lab", "better by 12%"),
                   Move(t[2], "production", 3, 1, "rollback", "bo", "ci", "windpipe rollback"),
                   Move(None, "production", 1, 4, "outside", reason="changed outside windpipe", recorded=False)])
    now = pd.Timestamp("2026-11-05", tz="UTC")
    fig = F.alias_timeline_figure(moves, now)
    line, marks = fig["data"]
    assert line["y"] == [1, 3, 1, 4, 4] and line["x"][-1] == "2026-11-05 00:00" and line["line"]["shape"] == "hv"
    assert marks["marker"]["color"] == [F.ACTION_COLORS[a] for a in ("first", "promote", "rollback", "outside")]
    assert "bo@ci" in marks["text"][2] and "v3 -> v1 (rollback)" in marks["text"][2]
    summary = pd.DataFrame({"batch": [2, 2, 1, 1],
                            "created_at": ["2026-11-02", "2026-11-02", "2026-11-01", "2026-11-01"],
                            "feature": ["windspeed", "temperature"] * 2, "psi": [6.4, 0.1, 0.05, 0.1],
                            "status": ["drift", "ok", "ok", "ok"]})
    fig = F.drift_figure(summary, 0.2)
    wind = next(t for t in fig["data"] if t["name"] == "windspeed")
    assert wind["y"] == [0.05, 6.4] and wind["marker"]["color"][1] == "#d62728"  # oldest first; the drifted batch red
    assert fig["data"][-1]["y"] == [0.2, 0.2]


def test_model_source_loads_each_version_once(frame):
    calls = []

    def loader(_settings: Settings, version: int) -> S.ProductionModel:
        calls.append(version)
        return fake_model(frame, version)

    src = S.ModelSource(Settings(), loader=loader, max_versions=2)
    for v in (1, 1, 2, 1, 2):
        assert src.get(v).version == v
    assert calls == [1, 2] and src.loads == 2
    assert src.cached(3) is None


def test_callbacks_as_functions_with_a_fake_source(frame):
    from windpipe.views.dashboard.app import create_app

    class Src(S.ModelSource):
        def status(self) -> S.SourceStatus:
            return S.SourceStatus("ok", 1)

    src = Src(Settings(), loader=lambda _s, v: fake_model(frame, v))
    logged = []
    app = create_app(Settings(), source=src, prediction_logger=lambda scored, fr, pm: logged.append(len(fr)))
    board = app.windpipe
    store, banner, start, end = board.refresh(None, None, None)
    assert store["state"] == "ok" and (start, end) == D.default_range(frame)
    assert board.refresh(store, start, end)[0] is __import__("dash").no_update  # unchanged: no re-render
    fig, msg, _colour, table = board.predictions(store, start, end)
    assert msg == "" and len(fig["data"][0]["x"]) == month_rows(frame) and table is not None
    board.flush()
    assert logged == [month_rows(frame)]
    _fig, msg, colour, _t = board.predictions(store, end, start)
    assert "reversed" in msg and colour == "warning"
    assert "No data" in board.predictions(store, "2030-01-01", "2030-01-31")[1]
    assert "wind_solar_v1_x" in str(board.model_card(store))
    assert "holdout_rmse" in str(board.model_card(store))
    assert "GW" in str(board.whatif(store, {"windspeed": 5, "temperature": 1, "rad_horizontal": 1,
                                            "rad_diffuse": 1}))
    assert "whatif-error" in str(board.whatif(store, dict.fromkeys(FEATURES)))
    assert len(board.history(store)["data"]) == 2 and src.loads == 1
    # the layout serves without touching any server
    resp = app.server.test_client().get("/_dash-layout")
    assert resp.status_code == 200 and b"DatePickerRange" in resp.data and b"range-start" in resp.data
    assert b'"whatif-in-windspeed"' in resp.data and b"Slider" in resp.data
    page = board.whatif(store, {"windspeed": 5, "temperature": 1, "rad_horizontal": 1, "rad_diffuse": 1})
    assert "whatif-curves" in str(page)
    assert app.server.test_client().get("/assets/bootstrap.min.css").status_code == 200



def test_marts_queue_is_bounded_and_a_repeated_range_is_not_a_new_batch(frame):
    """A burst of requests never waits and never queues more than settings.dashboard_queue batches for the
    marts: the rest are dropped and counted. Hours already recorded (or queued) are not queued again."""
    from windpipe.views.dashboard.app import create_app

    class Src(S.ModelSource):
        def status(self) -> S.SourceStatus:
            return S.SourceStatus("ok", 1)

    gate, logged = threading.Event(), []

    def slow_marts(scored, fr, pm) -> None:  # the marts writer, stuck until the test lets it go
        gate.wait(30)
        logged.append((str(fr.index[0]), str(fr.index[-1])))

    settings = Settings(dashboard_queue=3)
    board = create_app(settings, source=Src(settings, loader=lambda _s, v: fake_model(frame, v)),
                       prediction_logger=slow_marts).windpipe
    store, _banner, start, end = board.refresh(None, None, None)
    days = pd.date_range(start, end, freq="D").strftime("%Y-%m-%d")
    ranges = [(days[0], day) for day in days[1:11]]  # 10 distinct ranges
    for a, b in ranges + ranges[:2]:  # and two repeats
        _fig, msg, _c, _t = board.predictions(store, a, b)  # returns although the marts are stuck
        assert msg == ""
    assert board.recorder.dropped == 7 and board.recorder.repeated == 2
    gate.set()
    board.flush()
    assert len(logged) == 3 and len(set(logged)) == 3
    board.predictions(store, *ranges[0])  # recorded already
    board.predictions(store, *ranges[5])  # dropped before: recorded now
    board.flush()
    assert len(logged) == 4 and board.recorder.repeated == 3


# --- against a real tracking server -----------------------------------------------------------------

@pytest.mark.slow
def test_empty_state_without_production_model(use_platform):
    from windpipe.views.dashboard.app import create_app

    settings = get_settings(model_name="nobody_promoted_this")
    app = create_app(settings, prediction_logger=None)
    board = app.windpipe
    store, banner, start, end = board.refresh(None, None, None)
    assert store["state"] == "no_model" and store["version"] is None
    text = str(board.model_card(store))
    assert "No production model yet" in text and "windpipe pipeline run" in text
    fig = board.predictions(store, "2013-01-01", "2013-01-02")[0]
    assert "windpipe pipeline run" in fig["layout"]["annotations"][0]["text"]
    assert "Traceback" not in str(banner)


@pytest.mark.slow
def test_server_down_banner_then_recovery(make_platform, monkeypatch):
    import mlflow

    from windpipe.stack import services as plat
    from windpipe.views.dashboard.app import create_app

    p = make_platform()
    info = log_registered_model(p)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", p.tracking_uri)
    settings = p.settings
    app = create_app(settings, prediction_logger=None, refresh_seconds=1)
    board = app.windpipe
    store, *_ = board.refresh(None, None, None)
    assert store == {"state": "ok", "version": info["version"], "message": "", "fix": ""}
    plat.down(settings, say=lambda _m: None)
    down, banner, *_ = board.refresh(store, "2013-01-01", "2013-01-07")
    assert down["state"] == "down" and "windpipe up" in down["fix"]
    assert "server-down" in str(banner)
    # pages keep working from the cached model while the server is away
    hours = D.index_frame(info["df"]).loc["2013-01-01":"2013-01-07"]
    assert len(board.predictions(down, "2013-01-01", "2013-01-07")[0]["data"][0]["x"]) == len(hours) > 160
    assert "does not answer" in str(board.pipeline(down))
    plat.up(settings, say=lambda _m: None)
    mlflow.set_tracking_uri(p.tracking_uri)
    back, banner, *_ = board.refresh(down, "2013-01-01", "2013-01-07")
    assert back["state"] == "ok" and "ok-banner" in str(banner)
    assert board.source.loads == 1


@pytest.mark.slow
def test_promotion_is_followed_and_each_version_loads_once(use_platform):
    from windpipe.views.dashboard.app import create_app

    first = log_registered_model(use_platform)
    app = create_app(get_settings(), prediction_logger=None)
    board = app.windpipe
    store, _b, start, end = board.refresh(None, None, None)
    assert store["version"] == first["version"]
    fig1 = board.predictions(store, "2013-01-08", "2013-01-14")[0]
    for _ in range(3):
        board.predictions(store, start, end)
        board.history(store)
        store2, *_ = board.refresh(store, start, end)
        assert store2 is __import__("dash").no_update
    assert board.source.loads == 1
    # another training set gives other coefficients (note: `scale` leaves a linear model unchanged)
    second = log_registered_model(use_platform, df=tiny_processed(n=24 * 45, seed=3))  # moves the alias
    store, *_ = board.refresh(store, start, end)
    assert store["version"] == second["version"]
    assert f"wind_solar_v{second['version']}_" in str(board.model_card(store))
    fig2 = board.predictions(store, "2013-01-08", "2013-01-14")[0]
    assert not np.allclose(fig1["data"][1]["y"], fig2["data"][1]["y"])
    assert board.source.loads == 2
    from windpipe.views.dashboard.fetchers import pipeline_status

    steps = pipeline_status(get_settings())
    assert any(s.step == "lr" and s.status == "FINISHED" for s in steps)
    view = str(board.pipeline(store))
    assert "pipeline-table" in view
    assert "pipeline-graph" in view
    assert "<b>lr</b><br>finished" in view  # the DAG node of lr, labelled with its latest run


@pytest.mark.slow
def test_cli_detach_and_stop(use_platform):
    import urllib.request

    from windpipe.stack.procs import free_port

    port = free_port()
    proc = use_platform.windpipe("dashboard", "--detach", "--port", str(port), check=True, timeout=120)
    assert f"http://127.0.0.1:{port}/" in proc.stdout
    try:
        again = use_platform.windpipe("dashboard", "--detach", "--port", str(port), check=True)
        assert "running" in again.stdout  # idempotent: the same one
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_dash-layout", timeout=10) as resp:
            assert b"prediction-graph" in resp.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/assets/bootstrap.min.css", timeout=10) as resp:
            assert b"Bootstrap" in resp.read(400)
        # `windpipe status` lists the detached dashboard (at the port it was started on) while it runs
        status = use_platform.windpipe("status").stdout
        assert any(line.startswith("up   dashboard") and f"http://127.0.0.1:{port}/" in line and "layout ok" in line
                   for line in status.splitlines()), status
    finally:
        stopped = use_platform.windpipe("dashboard", "--stop", check=True)
    assert "stopped" in stopped.stdout
    assert "not running" in use_platform.windpipe("dashboard", "--stop", check=True).stdout


class DashClient:
    """Calls a running dashboard's callbacks over HTTP as the browser does: POST /_dash-update-component with
    the output, the inputs and states (values by "id.property") of a callback read from /_dash-dependencies."""

    def __init__(self, base: str) -> None:
        import requests

        self.base, self.http = base.rstrip("/"), requests.Session()
        deps = self.http.get(f"{self.base}/_dash-dependencies", timeout=30).json()
        self.deps = {d["output"]: d for d in deps}

    def output_of(self, *props: str) -> str:
        return next(o for o in self.deps if all(p in o for p in props))

    def body(self, output: str, values: dict[str, object], changed: str) -> dict:
        def items(deps: list[dict]) -> list[dict]:
            return [{**d, "value": values.get(f"{d['id']}.{d['property']}")} for d in deps]

        outs = [{"id": o.rsplit(".", 1)[0], "property": o.rsplit(".", 1)[1]} for o in output.strip(".").split("...")]
        dep = self.deps[output]
        return {"output": output, "outputs": outs if output.startswith("..") else outs[0],
                "inputs": items(dep["inputs"]), "state": items(dep["state"]), "changedPropIds": [changed]}

    def call(self, output: str, values: dict[str, object], changed: str, timeout: float = 120) -> object:
        """The HTTP response. Non-finite floats go as JSON's NaN/Infinity tokens (Python's parser reads them)."""
        import json

        body = json.dumps(self.body(output, values, changed))
        return self.http.post(f"{self.base}/_dash-update-component", data=body, timeout=timeout,
                              headers={"Content-Type": "application/json"})


def _tree_rss(pid: int) -> int:
    """Resident memory of a process and its children (gunicorn's arbiter and worker), in bytes."""
    import psutil

    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


@pytest.mark.slow
def test_a_burst_against_the_running_server_is_answered_bounded_and_recorded_once(use_platform, tmp_path):
    """300 predictions of distinct ranges over HTTP, half of them while the marts are locked: every one answers,
    the locked half queues at most the queue's bound of batches, the marts hold each hour of the version once
    (never more rows than hours of data), the server's memory stays put; and what-if with inf, nan or 1e200 gets
    a message, not an error."""
    import os
    import random
    import signal
    import sqlite3
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import select

    from windpipe.marts import queries, tables
    from windpipe.stack.procs import free_port, wait_until
    from windpipe.views.dashboard.serve import check_ready

    bound, requests_n = 4, 150
    info = log_registered_model(use_platform, df=tiny_processed(n=24 * 365))  # a year: 8760 rows
    data = D.index_frame(info["df"])
    version = str(info["version"])
    days = pd.date_range(data.index.min().normalize(), data.index.max().normalize(), freq="D").strftime("%Y-%m-%d")

    settings = use_platform.settings
    engine = tables.get_engine(settings=settings)

    def dashboard_batches() -> pd.DataFrame:
        found = queries.latest_batches(engine, limit=100_000, source="dashboard")
        return found[found["model_version"] == version]

    def recorded_hours() -> pd.Series:
        with engine.connect() as conn:
            return pd.Series(list(conn.execute(select(tables.input_mart.c.utc_timestamp).join(
                tables.batches, tables.batches.c.id == tables.input_mart.c.batch_id).where(
                (tables.batches.c.source == "dashboard") & (tables.batches.c.model_version == version))).scalars()))

    port = free_port()
    env = {**use_platform.env, "WINDPIPE_DASHBOARD_QUEUE": str(bound), "WINDPIPE_MARTS_LOCK_TIMEOUT": "900"}
    log = open(tmp_path / "dashboard.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "windpipe", "dashboard", "--port", str(port)], env=env,
                              cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    lock = None
    try:
        base = f"http://127.0.0.1:{port}/"
        wait_until(lambda: check_ready(base), 120, "The dashboard", alive=lambda: server.poll() is None)
        dash_ = DashClient(base)
        status_out, predict_out = dash_.output_of("status.data"), dash_.output_of("prediction-graph.figure")
        store = dash_.call(status_out, {}, "refresh.n_clicks").json()["response"]["status"]["data"]
        assert store["state"] == "ok" and store["version"] == info["version"]

        def predict(rng: tuple[str, str]) -> tuple[int, str]:
            resp = dash_.call(predict_out, {"status.data": store, "predict.n_clicks": 1, "range.start_date": rng[0],
                                            "range.end_date": rng[1]}, "predict.n_clicks")
            message = resp.json()["response"]["range-message"]["children"] if resp.status_code == 200 else resp.text
            return resp.status_code, message

        def recorded_after(rng: tuple[str, str], before: int) -> pd.DataFrame:
            """Ask for `rng` (hours nobody asked for yet) until its batch is in the marts (the queue may be full);
            FIFO: what was queued before it is written too."""
            span = D.parse_range(*rng, data)
            wanted = set(data.index[(data.index >= span.start) & (data.index < span.end)].tz_localize(None))

            def check() -> pd.DataFrame:
                assert predict(rng) == (200, "")
                if not wanted <= set(pd.DatetimeIndex(recorded_hours())):
                    raise WindpipeError(f"{rng} not recorded yet")
                now = dashboard_batches()
                return now.head(len(now) - before)
            return wait_until(check, 180, "The marts", interval=2)

        warm = recorded_after((days[0], days[30]), len(dashboard_batches()))  # the model loaded, the marts made
        assert len(warm) == 1
        start = len(dashboard_batches())
        rss_before = _tree_rss(server.pid)

        # the marts writer is stuck behind another writer's lock for the first half of the burst
        lock = sqlite3.connect(settings.effective_marts_url.removeprefix("sqlite:///"), timeout=60)
        lock.execute("BEGIN EXCLUSIVE")
        ranges = [(days[0], days[300 - k]) for k in range(30)]  # nested: after the first, each adds no hour
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(predict, [ranges[i % len(ranges)] for i in range(requests_n)]))
        assert answers == [(200, "")] * requests_n  # every request answered at once, none waited for the marts
        lock.rollback()
        lock.close()
        lock = None
        got = recorded_after((days[320], days[325]), start)  # hours nobody asked for, queued after the burst's
        assert 1 <= len(got) - 1 <= bound, got  # the rest were dropped (and counted), not queued

        # the other half with the writer free: distinct random ranges, each wave recorded while the next comes
        rng_ = random.Random(5)
        free = sorted({tuple(days[d] for d in sorted(rng_.sample(range(340), 2))) for _ in range(requests_n)})
        with ThreadPoolExecutor(max_workers=8) as pool:
            assert set(pool.map(predict, free)) == {(200, "")}
        recorded_after((days[350], days[355]), len(dashboard_batches()))
        rss_after = _tree_rss(server.pid)
        hours = recorded_hours()
        print(f"\ndashboard burst: {requests_n} requests of {len(ranges)} nested ranges (marts locked) and "
              f"{len(free)} of distinct ranges (marts free) against pid {server.pid}: all answered 200; the marts "
              f"hold {len(hours)} rows of version {version} in {len(dashboard_batches())} batches for "
              f"{len(data)} hours of data; RSS before {rss_before / 1e6:.0f} MB, after {rss_after / 1e6:.0f} MB "
              f"(+{(rss_after - rss_before) / 1e6:.0f} MB)")
        assert hours.is_unique and len(hours) <= len(data)  # one row per hour of data per version
        assert rss_after - rss_before < 150e6

        # what-if with values no weather has, as a hostile client sends them: a message, never an HTTP 500
        whatif_out = dash_.output_of("whatif-result.children")
        fine = {"windspeed": 5.0, "temperature": 10.0, "rad_horizontal": 200.0, "rad_diffuse": 80.0}

        def whatif(**bad: object) -> object:
            values = {"status.data": store, "whatif-go.n_clicks": 1,
                      **{f"whatif-in-{f}.value": v for f, v in {**fine, **bad}.items()}}
            return dash_.call(whatif_out, values, "whatif-go.n_clicks")

        ok = whatif()
        assert ok.status_code == 200 and "whatif-solar_GW" in ok.text and "whatif-error" not in ok.text
        cases = {"1e200": whatif(windspeed=1e200), "Infinity": whatif(windspeed=float("inf")),
                 "NaN": whatif(rad_horizontal=float("nan")), "-Infinity": whatif(temperature=float("-inf")),
                 "'inf' typed": whatif(temperature="inf"), "'nan' typed": whatif(rad_diffuse="nan"),
                 "-1e200": whatif(temperature=-1e200)}
        for case, resp in cases.items():
            assert resp.status_code == 200, (case, resp.status_code, resp.text[:500])
            assert "whatif-error" in resp.text and "must be a finite number" in resp.text, (case, resp.text[:500])
        assert server.poll() is None
    finally:
        if lock is not None:
            lock.close()
        os.killpg(server.pid, signal.SIGTERM)  # the group this test started: the command and its gunicorn worker
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()
        tables.dispose_engines()


# --- a real browser ---------------------------------------------------------------------------------

class ServerThread(threading.Thread):
    def __init__(self, app, port: int) -> None:
        super().__init__(daemon=True)
        from werkzeug.serving import make_server

        self.srv = make_server("127.0.0.1", port, app.server, threaded=True)

    def run(self) -> None:
        self.srv.serve_forever()

    def stop(self) -> None:
        self.srv.shutdown()




FIRST_X = """const g = document.querySelector('#prediction-graph .js-plotly-plot');
return g && g.data && g.data.length ? String(g.data[0].x[0]) + '|' + g.data[0].x.length : null;"""


CURVE_MARK = """const g = document.querySelector('#whatif-curves .js-plotly-plot');
if (!g || !g.data) return null;
const m = g.data.filter(t => t.mode === 'markers' && t.xaxis === 'x');
return m.length ? m[0].x[0] + '|' + m[1].y[0] : null;"""


def _type_date(box, value: str) -> None:
    from selenium.webdriver.common.keys import Keys

    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(value, Keys.ENTER)


@pytest.mark.slow
@pytest.mark.browser
def test_browser_reads_every_page_at_a_glance(use_platform, tmp_path):
    """Date-range picker, what-if sliders with response curves, the alias timeline and drift over time."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from windpipe.marts import tables
    from windpipe.marts.writers import record_batch
    from windpipe.scoring.drift import feature_drift
    from windpipe.stack.procs import free_port
    from windpipe.views.dashboard.app import create_app

    info = log_registered_model(use_platform)
    df = D.index_frame(info["df"])
    week = len(df.loc["2013-01-08":"2013-01-14"])
    settings = get_settings()
    # two scored batches in the marts: the second with wind speed in km/h (a unit error: drift)
    engine = tables.get_engine(settings=settings)
    for scale in (1.0, 3.6):
        batch = df.iloc[-200:][FEATURES].assign(windspeed=lambda b, s=scale: b["windspeed"] * s)
        drift = feature_drift(batch, df[FEATURES], batch_times=pd.Series(batch.index),
                              reference_times=pd.Series(df.index))
        record_batch(engine, batch, np.zeros((len(batch), 2)), model_name=settings.model_name, model_version=1,
                     model_uri="u", timestamps=pd.Series(batch.index), drift_rows=drift,
                     drift_status="drift" if (drift["status"] == "drift").any() else "ok")
    app = create_app(settings, prediction_logger=None)
    port = free_port()
    server = ServerThread(app, port)
    server.start()
    driver = chrome(tmp_path / "chrome")
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 60)
        first = wait.until(lambda d: d.execute_script(FIRST_X))
        assert first.endswith(f"|{month_rows(df)}")  # the default range: the last 31 days
        # the date-range picker: type both dates
        _type_date(driver.find_element(By.ID, "range-start"), "2013-01-08")
        _type_date(driver.find_element(By.ID, "range-end"), "2013-01-14")
        driver.find_element(By.ID, "predict").click()
        changed = wait.until(lambda d: (x := d.execute_script(FIRST_X)) and x != first and x.endswith(f"|{week}") and x)
        assert changed.startswith("2013-01-08")
        time.sleep(1.0)  # let plotly finish drawing before the picture
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "dashboard.png"))

        # what-if: the curves show, and moving the wind-speed slider moves the chosen point along them
        driver.find_element(By.LINK_TEXT, "What-if").click()
        before = wait.until(lambda d: d.execute_script(CURVE_MARK))
        assert before.split("|")[0] == "5"
        handle = driver.find_element(By.CSS_SELECTOR, "#whatif-in-windspeed [role=slider]")
        handle.click()
        for _ in range(20):
            handle.send_keys(Keys.ARROW_RIGHT)
        after = wait.until(lambda d: (m := d.execute_script(CURVE_MARK)) and m != before and m)
        assert float(after.split("|")[0]) > 5  # a stronger wind ...
        assert float(after.split("|")[1]) != float(before.split("|")[1])  # ... predicts other wind power
        driver.save_screenshot(str(ARTIFACTS / "dashboard_whatif.png"))

        # the model page: who was production when, and the drift of recent batches over time
        driver.find_element(By.LINK_TEXT, "Model").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#alias-timeline .js-plotly-plot"))
        moves = driver.execute_script("return document.querySelector('#alias-timeline .js-plotly-plot').data[1].text")
        assert "changed outside windpipe" in moves[-1]  # the test set the alias directly, as the MLflow UI would
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#drift-graph .js-plotly-plot"))
        wind = driver.execute_script("return document.querySelector('#drift-graph .js-plotly-plot').data"
                                     ".filter(t => t.name === 'windspeed')[0]")
        assert len(wind["y"]) >= 2 and wind["y"][-1] > 2 * wind["y"][-2]  # the km/h batch stands out ...
        assert wind["marker"]["color"][-1] == "#d62728" != wind["marker"]["color"][-2]  # ... in red
        time.sleep(1.0)
        driver.save_screenshot(str(ARTIFACTS / "dashboard_model.png"))
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
        server.stop()
        tables.dispose_engines()


def test_dashboard_predictions_go_to_the_data_marts(frame, tmp_path):
    from windpipe.marts import queries, tables
    from windpipe.views.dashboard.app import create_app

    class Src(S.ModelSource):
        def status(self) -> S.SourceStatus:
            return S.SourceStatus("ok", 1)

    settings = Settings(home=tmp_path, marts_url=f"sqlite:///{tmp_path / 'marts.db'}")
    app = create_app(settings, source=Src(settings, loader=lambda _s, v: fake_model(frame, v)))
    board = app.windpipe
    store, _b, start, end = board.refresh(None, None, None)
    board.predictions(store, start, end)
    board.flush()
    engine = tables.get_engine(settings=settings)
    batches = queries.latest_batches(engine)
    assert batches["source"].tolist() == ["dashboard"] and batches["row_count"].tolist() == [month_rows(frame)]
    rows = queries.batch_rows(engine, int(batches["id"][0]))
    np.testing.assert_allclose(rows["wind_GW_pred"], rows["windspeed"])  # SumModel: wind = windspeed
    from windpipe.views.dashboard.components import pipeline_view

    assert "Latest prediction batches" in str(pipeline_view([], queries.latest_batches(engine)))
    # switched off by the setting
    off = Settings(home=tmp_path, marts_url=settings.marts_url, log_dashboard_predictions=False)
    assert create_app(off, source=Src(off, loader=lambda _s, v: fake_model(frame, v))).windpipe.logger is None
    tables.dispose_engines()


def test_the_marts_hold_each_hour_of_a_version_once_however_many_views(frame, tmp_path):
    """Views of overlapping ranges, one after another, all at once, and from a second dashboard on the same
    marts: one recorded prediction per hour of data per version, and a new version gets its own."""
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import func, select

    from windpipe.marts import queries, tables
    from windpipe.views.dashboard.app import create_app

    version = {"now": 1}

    class Src(S.ModelSource):
        def status(self) -> S.SourceStatus:
            return S.SourceStatus("ok", version["now"])

    settings = Settings(home=tmp_path, marts_url=f"sqlite:///{tmp_path / 'marts.db'}", dashboard_queue=100)

    def board():
        return create_app(settings, source=Src(settings, loader=lambda _s, v: fake_model(frame, v))).windpipe

    first, second = board(), board()  # two dashboards (or two workers) on one marts
    store, *_ = first.refresh(None, None, None)
    days = pd.date_range(frame.index.min().normalize(), frame.index.max().normalize(), freq="D").strftime("%Y-%m-%d")
    windows = [(days[i], days[i + 9]) for i in range(0, 40, 2)]  # 20 overlapping ten-day views
    for a, b in windows:
        first.predictions(store, a, b)
        first.flush()
    with ThreadPoolExecutor(max_workers=4) as pool:  # the same views at once, on both dashboards
        list(pool.map(lambda ab: (first if ab[0] < days[20] else second).predictions(store, *ab), windows * 2))
    first.flush()
    second.flush()
    second.predictions(store, days[0], days[49])  # a wider view: only its hours not shown before are new
    second.flush()
    engine = tables.get_engine(settings=settings)

    def hours(v: int) -> pd.Series:
        with engine.connect() as conn:
            rows = conn.execute(select(tables.input_mart.c.utc_timestamp).join(
                tables.batches, tables.batches.c.id == tables.input_mart.c.batch_id).where(
                (tables.batches.c.source == "dashboard") & (tables.batches.c.model_version == str(v)))).scalars()
            return pd.Series(list(rows))

    shown = frame.loc[(frame.index >= days[0]) & (frame.index < pd.Timestamp(days[49], tz="UTC") + pd.Timedelta("1D"))]
    got = hours(1)
    assert got.is_unique and len(got) == len(shown), (len(got), len(shown))
    assert pd.DatetimeIndex(got).tz_localize("UTC").sort_values().equals(shown.index)
    assert first.recorder.repeated + second.recorder.repeated >= len(windows)  # no new batch, no queue, no query
    # the rows are the predictions that were shown
    batches = queries.latest_batches(engine, limit=1000, source="dashboard")
    rows = pd.concat([queries.batch_rows(engine, int(i)) for i in batches["id"]])
    np.testing.assert_allclose(rows["wind_GW_pred"], rows["windspeed"])  # SumModel: wind = windspeed
    # a restarted dashboard knows nothing in memory; the marts' key keeps the hours single
    restarted = board()
    restarted.predictions(store, days[0], days[49])
    restarted.flush()
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(tables.dashboard_hours)).scalar() == len(shown)
    assert hours(1).is_unique
    # a promotion: the new version records its own hours
    version["now"] = 2
    store2, *_ = first.refresh(store, None, None)
    first.predictions(store2, days[0], days[9])
    first.flush()
    assert len(hours(2)) == len(frame.loc[days[0]:days[9]]) and len(hours(1)) == len(shown)
    # an hour twice in the data (the real OPSD series has four): recorded once
    from windpipe.marts.writers import record_dashboard

    twice = frame.head(3).iloc[[0, 1, 1, 2]]
    kw = {"model_name": "wind_solar", "model_version": 3, "model_uri": None, "settings": settings}
    assert record_dashboard(engine, twice[FEATURES], np.zeros((4, 2)), pd.Series(twice.index), **kw) is not None
    assert record_dashboard(engine, twice[FEATURES], np.zeros((4, 2)), pd.Series(twice.index), **kw) is None
    assert len(hours(3)) == 3
    tables.dispose_engines()


def test_model_page_shows_the_backtest_and_the_error_on_recorded_power(frame, tmp_path):
    from windpipe.marts import tables
    from windpipe.marts.queries import performance_history
    from windpipe.marts.writers import record_batch, record_performance
    from windpipe.views.dashboard.app import create_app

    class Src(S.ModelSource):
        def status(self) -> S.SourceStatus:
            return S.SourceStatus("ok", 1)

    folds = {f"backtest_fold{k}_{m}": v for k in (1, 2) for m, v in (("r2_solar_GW", 0.9), ("r2_wind_GW", 0.8),
                                                                     ("bias_solar_GW", 0.1), ("bias_wind_GW", -0.5))}
    pm = fake_model(frame)
    pm.run_metrics = folds
    settings = Settings(home=tmp_path, marts_url=f"sqlite:///{tmp_path / 'marts.db'}")
    board = create_app(settings, source=Src(settings, loader=lambda _s, _v: pm), prediction_logger=None).windpipe
    store = board.refresh(None, None, None)[0]
    page = str(board.model_card(store))
    assert "backtest-graph" in page and "performance-graph" not in page  # no monitoring yet
    fig = F.backtest_figure(D.backtest_frame(folds))
    assert [t["name"] for t in fig["data"] if t["type"] == "bar"] == ["solar_GW", "wind_GW"] * 2
    # two monitored batches, the newer degraded
    engine = tables.get_engine(settings=settings)
    ids = [record_batch(engine, frame[FEATURES].head(5), np.zeros((5, 2)), model_name="wind_solar", model_version=1,
                        model_uri="u", timestamps=pd.Series(frame.index[:5])) for _ in range(2)]
    record_performance(engine, pd.DataFrame([
        {"batch_id": b, "computed_at": pd.Timestamp("2020-01-01"), "model_name": "wind_solar", "model_version": "1",
         "rows_scored": 5, "rows_with_actuals": 5, "first_time": frame.index[0], "last_time": frame.index[4 + i],
         "rmse": rmse, "promotion_rmse": 1.0, "ratio": rmse, "status": status}
        for i, (b, rmse, status) in enumerate(zip(ids, (1.1, 2.0), ("ok", "degraded"), strict=True))]))
    page = str(board.model_card(store))
    assert "performance-graph" in page and "performance-warning" in page and "2.00x the error at promotion" in page
    perf = F.performance_figure(D.performance_frame(performance_history(engine, "wind_solar")), settings.degraded_ratio)
    assert perf["data"][0]["y"] == [1.1, 2.0] and perf["data"][2]["y"] == [1.5, 1.5]  # the limit: 1.5x promotion
    assert perf["data"][0]["marker"]["color"][1] == "#d62728"  # the degraded batch in red
    tables.dispose_engines()


def test_whatif_takes_a_time():
    vals = {"windspeed": 5, "temperature": 10, "rad_horizontal": 300, "rad_diffuse": 50}
    assert D.whatif(SumModel(), vals, "2016-12-01 13:00") == {"solar_GW": 3.0, "wind_GW": 5.0}
    with pytest.raises(WindpipeError, match="is not a time"):
        D.whatif(SumModel(), vals, "teatime")

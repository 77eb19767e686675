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
from windpipe.names import FEATURES, TARGETS
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


def test_default_range_is_a_month_of_hours(frame):
    start, end = D.default_range(frame)
    rng = D.parse_range(start, end, frame)
    assert ((frame.index >= rng.start) & (frame.index < rng.end)).sum() == 744


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
    assert msg == "" and len(fig["data"][0]["x"]) == 744 and table is not None
    board.flush()
    assert logged == [744]
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
    assert resp.status_code == 200 and b"range-start" in resp.data
    assert app.server.test_client().get("/assets/bootstrap.min.css").status_code == 200



def test_marts_queue_is_bounded_and_a_repeated_range_is_not_a_new_batch(frame):
    """A burst of whole-range requests never waits and never queues more than settings.dashboard_queue
    batches for the marts: the rest are dropped and counted. A range already recorded is not recorded again."""
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
    assert board.dropped == 7 and board.repeated == 2
    gate.set()
    board.flush()
    assert len(logged) == 3 and len(set(logged)) == 3
    board.predictions(store, *ranges[0])  # recorded already
    board.predictions(store, *ranges[5])  # dropped before: recorded now
    board.flush()
    assert len(logged) == 4 and board.repeated == 3


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
    from windpipe.views.dashboard.app import pipeline_status

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
    finally:
        stopped = use_platform.windpipe("dashboard", "--stop", check=True)
    assert "stopped" in stopped.stdout
    assert "not running" in use_platform.windpipe("dashboard", "--stop", check=True).stdout


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


@pytest.mark.slow
@pytest.mark.browser
def test_browser_changes_range_and_sees_new_predictions(use_platform, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from windpipe.stack.procs import free_port
    from windpipe.views.dashboard.app import create_app

    info = log_registered_model(use_platform)
    week = len(D.index_frame(info["df"]).loc["2013-01-08":"2013-01-14"])
    app = create_app(get_settings(), prediction_logger=None)
    port = free_port()
    server = ServerThread(app, port)
    server.start()
    driver = chrome(tmp_path / "chrome")
    try:
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 60)
        first = wait.until(lambda d: d.execute_script(FIRST_X))
        assert first.endswith("|744")  # the default range: the last 31 days
        start = driver.find_element(By.ID, "range-start")
        end = driver.find_element(By.ID, "range-end")
        for box, value in ((start, "2013-01-08"), (end, "2013-01-14")):
            box.send_keys(Keys.CONTROL, "a")
            box.send_keys(Keys.DELETE)
            box.send_keys(value, Keys.ENTER)
        changed = wait.until(lambda d: (x := d.execute_script(FIRST_X)) and x != first and x.endswith(f"|{week}") and x)
        assert changed.startswith("2013-01-08")
        # a reversed range shows a message and keeps the graph
        end.send_keys(Keys.CONTROL, "a")
        end.send_keys(Keys.DELETE)
        end.send_keys("2013-01-01", Keys.ENTER)
        wait.until(lambda d: "reversed" in d.find_element(By.ID, "range-message").text)
        end.send_keys(Keys.CONTROL, "a")
        end.send_keys(Keys.DELETE)
        end.send_keys("2013-01-14", Keys.ENTER)
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#range-message.show"))
        time.sleep(1.0)  # let plotly finish drawing before the picture
        ARTIFACTS.mkdir(exist_ok=True)
        driver.save_screenshot(str(ARTIFACTS / "dashboard.png"))
        assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
        server.stop()


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
    assert batches["source"].tolist() == ["dashboard"] and batches["row_count"].tolist() == [744]
    rows = queries.batch_rows(engine, int(batches["id"][0]))
    np.testing.assert_allclose(rows["wind_GW_pred"], rows["windspeed"])  # SumModel: wind = windspeed
    assert "Latest prediction batches" in str(__import__("windpipe.views.dashboard.app", fromlist=["x"]).pipeline_view(
        [], queries.latest_batches(engine)))
    # switched off by the setting
    off = Settings(home=tmp_path, marts_url=settings.marts_url, log_dashboard_predictions=False)
    assert create_app(off, source=Src(off, loader=lambda _s, v: fake_model(frame, v))).windpipe.logger is None
    tables.dispose_engines()

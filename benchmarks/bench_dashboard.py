"""Dashboard speed on real-size data (../shared/data/germany.csv, else 4 generated years).

Targets (issue 5): the prediction callback for one month (744 rows) median <= 150 ms server
side; first page load <= 2 s.

The model is a real mlflow.pyfunc model (RandomForest, 64 trees, depth 10, as the rf step
trains) saved and loaded from a local folder, so no tracking server is involved in the timing.

    python benchmarks/bench_dashboard.py [--screenshot docs/dashboard.png]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import GERMANY, REPO, table

sys.path.insert(0, str(REPO))


def real_data():
    import pandas as pd

    from windpipe.views import frames as D

    if GERMANY.exists():
        df = pd.read_csv(GERMANY)
        df["utc_timestamp"] = pd.to_datetime(df["utc_timestamp"], utc=True)
        return D.index_frame(df), GERMANY.name
    from windpipe.data.process import process
    from windpipe.data.synth import generate

    return D.index_frame(process(*generate(seed=42, years=4))), "generated, 4 years"


def pyfunc_model(df, tmp: Path):
    import mlflow
    from sklearn.ensemble import RandomForestRegressor

    from windpipe.names import FEATURES, TARGETS

    rf = RandomForestRegressor(n_estimators=64, max_depth=10, random_state=42, n_jobs=1)
    rf.fit(df[FEATURES], df[TARGETS])
    mlflow.sklearn.save_model(rf, str(tmp / "model"), serialization_format="cloudpickle",
                              pip_requirements=["scikit-learn"])
    return mlflow.pyfunc.load_model(str(tmp / "model"))


def make_app(df, model):
    from windpipe.settings import Settings
    from windpipe.views import frames as D
    from windpipe.views.dashboard.app import create_app

    pm = D.ProductionModel("wind_solar", 1, "bench", {"windpipe.instance_name": "wind_solar_v1_bench"}, model, df)

    class Source(D.ModelSource):
        def status(self) -> D.SourceStatus:
            return D.SourceStatus("ok", 1)

    return create_app(Settings(), source=Source(Settings(), loader=lambda _s, _v: pm), prediction_logger=None)


def bench_callback(app, repeat: int = 20) -> list[list[object]]:
    from windpipe.views import frames as D

    board = app.windpipe
    store, _b, start, end = board.refresh(None, None, None)
    rows_n = len(D.predict_range(board.model(store), D.parse_range(start, end, board.model(store).data)))
    board.predictions(store, start, end)  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        board.predictions(store, start, end)
        times.append(time.perf_counter() - t0)
    rows = [[f"prediction callback, {rows_n} rows (function)", statistics.median(times) * 1000,
             f"median of {repeat}", "<= 150 ms"]]
    # the same through Dash's HTTP endpoint (JSON in and out), Flask test client
    client = app.server.test_client()
    body = {"output": "..prediction-graph.figure...range-message.children...range-message.color..."
                      "prediction-errors.children..",
            "outputs": [{"id": "prediction-graph", "property": "figure"},
                        {"id": "range-message", "property": "children"},
                        {"id": "range-message", "property": "color"},
                        {"id": "prediction-errors", "property": "children"}],
            "inputs": [{"id": "status", "property": "data", "value": store},
                       {"id": "predict", "property": "n_clicks", "value": None},
                       {"id": "range-start", "property": "value", "value": start},
                       {"id": "range-end", "property": "value", "value": end}],
            "changedPropIds": ["range-start.value"], "state": []}
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        resp = client.post("/_dash-update-component", data=json.dumps(body), content_type="application/json")
        times.append(time.perf_counter() - t0)
        assert resp.status_code == 200, resp.data[:300]
    rows.append([f"prediction callback, {rows_n} rows (HTTP, JSON)", statistics.median(times) * 1000,
                 f"median of {repeat}", "-"])
    return rows


def _body(outputs: list[tuple[str, str]], inputs: list[tuple[str, str, object]],
          state: list[tuple[str, str, object]] = ()) -> str:
    out = "..." .join(f"{i}.{p}" for i, p in outputs)
    return json.dumps({
        "output": f"..{out}.." if len(outputs) > 1 else out,
        "outputs": [{"id": i, "property": p} for i, p in outputs] if len(outputs) > 1
        else {"id": outputs[0][0], "property": outputs[0][1]},
        "inputs": [{"id": i, "property": p, "value": v} for i, p, v in inputs],
        "state": [{"id": i, "property": p, "value": v} for i, p, v in state],
        "changedPropIds": [],
    })


def bench_http_load(df, model, repeat: int = 5) -> list[list[object]]:
    """HTTP: page, layout, dependencies, the status callback, then the callbacks it triggers (as the browser)."""
    import requests
    from werkzeug.serving import make_server

    from windpipe.stack.procs import free_port

    def load(base: str) -> float:
        t0 = time.perf_counter()
        with requests.Session() as http:
            for path in ("/", "/_dash-layout", "/_dash-dependencies"):
                http.get(base + path).raise_for_status()
            post = lambda body: http.post(base + "/_dash-update-component", data=body,  # noqa: E731
                                          headers={"Content-Type": "application/json"})
            resp = post(_body([("status", "data"), ("banner", "children"), ("range-start", "value"),
                               ("range-end", "value")], [("refresh", "n_clicks", None), ("tick", "n_intervals", None)],
                              [("status", "data", None), ("range-start", "value", None), ("range-end", "value", None)]))
            resp.raise_for_status()
            out = resp.json()["response"]
            store, start, end = out["status"]["data"], out["range-start"]["value"], out["range-end"]["value"]
            post(_body([("history-graph", "figure")], [("status", "data", store)])).raise_for_status()
            post(_body([("prediction-graph", "figure"), ("range-message", "children"), ("range-message", "color"),
                        ("prediction-errors", "children")],
                       [("status", "data", store), ("predict", "n_clicks", None), ("range-start", "value", start),
                        ("range-end", "value", end)])).raise_for_status()
            post(_body([("model-card", "children")], [("status", "data", store)])).raise_for_status()
        return time.perf_counter() - t0

    rows = []
    app = make_app(df, model)  # a new app: its first visit computes the history figure
    port = free_port()
    srv = make_server("127.0.0.1", port, app.server, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{port}"
        first = load(base)
        times = [load(base) for _ in range(repeat)]
    finally:
        srv.shutdown()
    rows.append(["first page load, HTTP: page + layout + first callbacks answered, new server", first, "1 run",
                 "<= 2 s"])
    rows.append(["first page load, HTTP: page + layout + first callbacks answered", statistics.median(times),
                 f"median of {repeat}", "<= 2 s"])
    return rows


def bench_page_load(app, repeat: int = 5, screenshot: Path | None = None) -> list[list[object]]:
    """Browser: from navigation to the prediction graph drawn (layout + first callbacks answered)."""
    from werkzeug.serving import make_server

    from windpipe.stack.procs import free_port

    port = free_port()
    srv = make_server("127.0.0.1", port, app.server, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        from selenium.webdriver.support.ui import WebDriverWait

        from tests.browser import chrome
    except ImportError:
        srv.shutdown()
        return [["first page load (browser)", "n/a", "selenium missing", "<= 2 s"]]
    drawn = """const g = document.querySelector('#prediction-graph .js-plotly-plot');
        const h = document.querySelector('#history-graph .js-plotly-plot');
        return !!(g && g.data && g.data.length && h && h.data && h.data.length);"""
    times = []
    with tempfile.TemporaryDirectory(prefix="bench-chrome-") as tmp:
        driver = chrome(Path(tmp), window="1400,1000")
        try:
            for i in range(repeat + 1):
                driver.delete_all_cookies()
                driver.execute_cdp_cmd("Network.clearBrowserCache", {})
                t0 = time.perf_counter()
                driver.get(f"http://127.0.0.1:{port}/?i={i}")
                WebDriverWait(driver, 60, poll_frequency=0.02).until(lambda d: d.execute_script(drawn))
                times.append(time.perf_counter() - t0)
            if screenshot is not None:
                time.sleep(1.0)
                driver.save_screenshot(str(screenshot))
        finally:
            driver.quit()
            srv.shutdown()
    return [["first page load in headless chromium, first visit, to both graphs drawn",
             times[0], "1 run", "<= 2 s"],
            ["first page load in headless chromium (software rendering), to both graphs drawn",
             statistics.median(times[1:]),
             f"median of {repeat}", "<= 2 s"]]


def main() -> None:
    df, name = real_data()
    with tempfile.TemporaryDirectory(prefix="bench-dash-") as tmp:
        t0 = time.perf_counter()
        model = pyfunc_model(df, Path(tmp))
        fit = time.perf_counter() - t0
        app = make_app(df, model)
        print(f"data: {name}, {len(df):,} rows; RandomForest(64, depth 10) fit+save+load {fit:.1f} s\n")
        rows = bench_callback(app)
        rows += bench_http_load(df, model)
        shot = Path(sys.argv[sys.argv.index("--screenshot") + 1]) if "--screenshot" in sys.argv else None
        rows += bench_page_load(app, screenshot=shot)
    print(table(["what", "measured (ms or s)", "how", "target"], rows))
    print(f"\nload average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()

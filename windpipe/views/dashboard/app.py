"""The Dash app factory: layout first, then callbacks; frames and figures come from windpipe.views.

The app follows the `production` alias. A status callback (page load, the Refresh button and
a timer) resolves the alias and puts `{state, version}` into a store; every page reads the
model of that version from `ModelSource`, which loads each version once. A tracking server
that is down shows a banner; the timer keeps checking, so the page recovers by itself.
The page's parts are in `components`, what they read besides the model in `fetchers`, and what a
page showed goes to the data marts through `recorder`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import dash
import dash_bootstrap_components as dbc
import pandas as pd
from dash import Input, Output, State, dcc, html
from dash.development.base_component import Component

from windpipe.errors import WindpipeError, first_line
from windpipe.names import FEATURES, TARGETS
from windpipe.settings import Settings
from windpipe.views import figures as F
from windpipe.views import frames as D
from windpipe.views.dashboard import components as C
from windpipe.views.dashboard import fetchers
from windpipe.views.dashboard.recorder import PredictionLogger, Recorder, marts_logger
from windpipe.views.source import ModelSource, ProductionModel, SourceStatus

log = logging.getLogger("windpipe.dashboard")
ASSETS = Path(__file__).resolve().parent / "assets"


class Dashboard:
    """The callbacks' logic as plain methods (tests call them directly)."""

    def __init__(self, settings: Settings, source: ModelSource | None = None,
                 prediction_logger: PredictionLogger | None | str = "default") -> None:
        self.settings = settings
        self.source = source or ModelSource(settings)
        logger = marts_logger(settings) if prediction_logger == "default" else prediction_logger
        self.recorder = Recorder(settings, logger)
        self._history_cache: dict[int, dict] = {}
        self._lock = threading.Lock()

    @property
    def logger(self) -> PredictionLogger | None:
        return self.recorder.logger

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until the predictions queued for the marts are written (tests; a clean shutdown)."""
        self.recorder.flush(timeout)

    # -- status ----------------------------------------------------------------------------------
    def refresh(self, current: dict | None, start: str | None, end: str | None) -> tuple:
        """Resolve the alias; return (store or no_update, banner, start, end)."""
        st = self.source.status()
        status = st.to_dict()
        start_out, end_out = dash.no_update, dash.no_update
        if st.state == "ok" and st.version is not None:
            try:
                pm = self.source.get(st.version)
            except WindpipeError as exc:
                status = SourceStatus("error", st.version, exc.problem, exc.fix or "").to_dict()
            except Exception as exc:  # download/load failures: keep the page alive and say so
                log.exception("loading model version %s failed", st.version)
                status = SourceStatus("error", st.version, f"Loading model version {st.version} failed: "
                                        f"{first_line(exc, 300)}", "see the dashboard log").to_dict()
            else:
                if not start or not end:
                    start_out, end_out = D.default_range(pm.data)
        store = dash.no_update if status == current else status
        return store, C.banner(status), start_out, end_out

    def model(self, status: dict | None) -> ProductionModel | None:
        """The model the store points at (cached; also while the server is down)."""
        if not status or status.get("version") is None:
            return None
        cached = self.source.cached(status["version"])
        if cached is not None or status.get("state") != "ok":
            return cached
        return self.source.get(status["version"])

    # -- pages -----------------------------------------------------------------------------------
    def history(self, status: dict | None) -> dict:
        pm = self.model(status)
        if pm is None:
            return F.empty_figure(C.empty_message(status))
        with self._lock:
            fig = self._history_cache.get(pm.version)
        if fig is None:
            fig = F.history_figure(D.weekly_rolling(pm.data))
            with self._lock:
                self._history_cache = {pm.version: fig}
        return fig

    def predictions(self, status: dict | None, start: str | None, end: str | None) -> tuple:
        """(figure, message, message colour, errors table) for the chosen range."""
        pm = self.model(status)
        if pm is None:
            return F.empty_figure(C.empty_message(status)), "", "secondary", None
        try:
            rng = D.parse_range(start, end, pm.data)
        except WindpipeError as exc:
            return dash.no_update, str(exc), "warning", dash.no_update
        scored = pm.data.loc[(pm.data.index >= rng.start) & (pm.data.index < rng.end)]
        frame = D.predict_frame(pm.model, scored)
        self.recorder.record(scored, frame, pm)
        errs = D.errors(frame)
        title = f"{pm.instance_name}: recorded vs predicted, {start} to {end} ({len(frame)} hours)"
        return F.prediction_figure(frame, title), "", "secondary", C.errors_table(errs)

    def whatif(self, status: dict | None, values: dict[str, float | None], when: str | None = None) -> Component:
        """The prediction for typed weather at `when` (UTC; empty: the last hour of the model's data)."""
        pm = self.model(status)
        if pm is None:
            return dbc.Alert(C.empty_message(status), color="secondary")
        when = when if when and str(when).strip() else pm.data.index.max()
        try:
            pred = D.whatif(pm.model, values, when)
            curves = D.response_curves(pm.model, values, when)
        except WindpipeError as exc:
            return dbc.Alert(str(exc), color="warning", id="whatif-error")
        point = {f: float(values[f]) for f in FEATURES}  # type: ignore[arg-type]
        return dbc.Row([
            dbc.Col(dbc.Card(dbc.CardBody([html.H6(F.LABELS[t], className="text-muted"),
                                           html.H3(f"{pred[t]:.2f} GW", id=f"whatif-{t}"),
                                           *C.interval_text(pred, t)])), md=6)
            for t in TARGETS
        ] + [dbc.Col(html.Small(f"model {pm.instance_name} (version {pm.version}), at "
                                f"{pd.Timestamp(when):%Y-%m-%d %H:%M} UTC", className="text-muted"),
                     width=12, className="mt-2"),
             dbc.Col(dcc.Graph(id="whatif-curves", figure=F.response_figure(curves, point, pred),
                               config={"displaylogo": False}), width=12, className="mt-2")])

    def model_card(self, status: dict | None) -> Component:
        pm = self.model(status)
        if pm is None:
            return C.empty_state(status)
        quality = C.model_quality(pm, self.settings.degraded_ratio, fetchers.alias_history(self.settings, pm.name),
                                  fetchers.recent_drift(self.settings),
                                  fetchers.performance_history(self.settings, pm.name))
        return html.Div([C.model_card(pm, self.settings), quality])

    def pipeline(self, status: dict | None) -> Component:
        if not status or status.get("state") == "down":
            return dbc.Alert("The tracking server does not answer; pipeline status is unavailable.",
                             color="secondary")
        try:
            steps = fetchers.pipeline_status(self.settings)
        except Exception as exc:  # server errors: say so, keep the page
            return dbc.Alert(f"Cannot read runs: {first_line(exc, 300)}", color="warning")
        return html.Div([C.pipeline_graph(fetchers.pipeline_figure(self.settings)),
                         C.pipeline_view(steps, fetchers.recent_batches(self.settings))])


def create_app(settings: Settings, source: ModelSource | None = None,
               prediction_logger: PredictionLogger | None | str = "default",
               refresh_seconds: float = 15.0) -> dash.Dash:
    """Build the dashboard. No network work here: data loads in the callbacks, lazily.

    source             where the production model comes from (default: the registry in `settings`)
    prediction_logger  called with each prediction batch, off the request thread ("default":
                       the data marts when settings.log_dashboard_predictions; None: off)
    refresh_seconds    how often an open page re-resolves the production alias
    """
    app = dash.Dash(__name__, assets_folder=str(ASSETS), title="windpipe dashboard",
                    suppress_callback_exceptions=False, serve_locally=True, update_title=None)
    board = Dashboard(settings, source, prediction_logger)
    app.layout = C.layout(settings, refresh_seconds)
    app.windpipe = board  # tests and benchmarks reach the logic through this

    @app.callback(Output("status", "data"), Output("banner", "children"),
                  Output("range", "start_date"), Output("range", "end_date"),
                  Input("refresh", "n_clicks"), Input("tick", "n_intervals"),
                  State("status", "data"), State("range", "start_date"), State("range", "end_date"))
    def _refresh(_clicks: int | None, _ticks: int | None, current: dict | None, start: str | None,
                 end: str | None) -> tuple:
        return board.refresh(current, start, end)

    @app.callback(Output("history-graph", "figure"), Input("status", "data"))
    def _history(status: dict | None) -> dict:
        return board.history(status)

    @app.callback(Output("prediction-graph", "figure"), Output("range-message", "children"),
                  Output("range-message", "color"), Output("prediction-errors", "children"),
                  Input("status", "data"), Input("predict", "n_clicks"),
                  Input("range", "start_date"), Input("range", "end_date"))
    def _predictions(status: dict | None, _clicks: int | None, start: str | None, end: str | None) -> tuple:
        return board.predictions(status, start, end)

    @app.callback(Output("range-message", "is_open"), Input("range-message", "children"))
    def _message_open(message: str | None) -> bool:
        return bool(message)

    @app.callback(Output("whatif-result", "children"), Input("whatif-go", "n_clicks"), Input("status", "data"),
                  *[Input(f"whatif-in-{f}", "value") for f in FEATURES], Input("whatif-in-time", "value"))
    def _whatif(_clicks: int | None, status: dict | None, *values: float | str | None) -> Component:
        return board.whatif(status, dict(zip(FEATURES, values[:-1], strict=True)), values[-1])

    @app.callback(Output("model-card", "children"), Input("status", "data"))
    def _model_card(status: dict | None) -> Component:
        return board.model_card(status)

    @app.callback(Output("pipeline-status", "children"), Input("status", "data"), Input("tabs", "active_tab"))
    def _pipeline(status: dict | None, tab: str | None) -> Component:
        if tab != "pipeline":
            return dash.no_update
        return board.pipeline(status)

    return app

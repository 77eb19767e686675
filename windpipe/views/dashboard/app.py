"""The Dash app factory: layout first, then callbacks; frames and figures come from windpipe.views.

The app follows the `production` alias. A status callback (page load, the Refresh button and
a timer) resolves the alias and puts `{state, version}` into a store; every page reads the
model of that version from `ModelSource`, which loads each version once. A tracking server
that is down shows a banner; the timer keeps checking, so the page recovers by itself.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dash
import dash_bootstrap_components as dbc
import pandas as pd
from dash import Input, Output, State, dcc, html
from dash.development.base_component import Component

from windpipe import names
from windpipe.errors import WindpipeError, first_line
from windpipe.names import FEATURES, TARGETS
from windpipe.settings import Settings
from windpipe.tracking.client import mlflow_client
from windpipe.tracking.runs import StepStatus, latest_step_runs
from windpipe.views import figures as F
from windpipe.views import frames as D
from windpipe.views.source import ModelSource, ProductionModel, SourceStatus

log = logging.getLogger("windpipe.dashboard")
ASSETS = Path(__file__).resolve().parent / "assets"
RECORDED_KEYS = 4096  # the (version, range) requests remembered as recorded, newest kept
# a prediction logger gets (the scored frame with features, the predict_frame result, the model)
PredictionLogger = Callable[[pd.DataFrame, pd.DataFrame, ProductionModel], None]

SLIDER_RANGES = {"windspeed": (0.0, 25.0, 0.1), "temperature": (-20.0, 40.0, 0.5),
                 "rad_horizontal": (0.0, 1000.0, 5.0), "rad_diffuse": (0.0, 500.0, 5.0)}
FEATURE_HELP = {
    "windspeed": ("Wind speed (m/s, 10 m)", 5.0),
    "temperature": ("Temperature (°C)", 10.0),
    "rad_horizontal": ("Direct horizontal radiation (W/m²)", 200.0),
    "rad_diffuse": ("Diffuse radiation (W/m²)", 80.0),
}


def marts_logger(settings: Settings) -> PredictionLogger | None:
    """Log dashboard predictions to the data marts (windpipe.marts) unless settings turn it off."""
    if not settings.log_dashboard_predictions:
        return None
    def write(scored: pd.DataFrame, frame: pd.DataFrame, pm: ProductionModel) -> None:
        preds = frame[[f"pred_{t}" for t in TARGETS]].to_numpy()
        from windpipe.marts.writers import record_batch

        record_batch(None, scored[FEATURES], preds, model_name=pm.name, model_version=pm.version,
                     model_uri=names.version_uri(pm.name, pm.version), source="dashboard",
                     timestamps=pd.Series(scored.index), settings=settings)

    return write


class Dashboard:
    """The callbacks' logic as plain methods (tests call them directly)."""

    def __init__(self, settings: Settings, source: ModelSource | None = None,
                 prediction_logger: PredictionLogger | None | str = "default") -> None:
        self.settings = settings
        self.source = source or ModelSource(settings)
        self.logger = marts_logger(settings) if prediction_logger == "default" else prediction_logger
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dashboard-marts")
        self._history_cache: dict[int, dict] = {}
        self._lock = threading.Lock()
        # the marts queue is bounded (settings.dashboard_queue batches waiting; more are dropped and counted,
        # a request never waits), and a range already recorded for a model version is not a new batch
        self._waiting = 0
        self._recorded: OrderedDict[tuple, None] = OrderedDict()
        self.dropped = 0
        self.repeated = 0

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until the predictions queued for the marts are written (tests; a clean shutdown)."""
        self._pool.submit(lambda: None).result(timeout=timeout)

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
        return store, banner(status), start_out, end_out

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
            return F.empty_figure(empty_message(status))
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
            return F.empty_figure(empty_message(status)), "", "secondary", None
        try:
            rng = D.parse_range(start, end, pm.data)
        except WindpipeError as exc:
            return dash.no_update, str(exc), "warning", dash.no_update
        scored = pm.data.loc[(pm.data.index >= rng.start) & (pm.data.index < rng.end)]
        frame = D.predict_frame(pm.model, scored)
        self._log_predictions(scored, frame, pm, (pm.version, rng.start, rng.end))
        errs = D.errors(frame)
        title = f"{pm.instance_name}: recorded vs predicted, {start} to {end} ({len(frame)} hours)"
        return F.prediction_figure(frame, title), "", "secondary", errors_table(errs)

    def _log_predictions(self, scored: pd.DataFrame, frame: pd.DataFrame, pm: ProductionModel,
                         key: tuple) -> None:
        if self.logger is None:
            return
        with self._lock:
            if key in self._recorded:
                self.repeated += 1
                return
            if self._waiting >= self.settings.dashboard_queue:
                self.dropped += 1
                log.warning("marts queue full (%d batches): dashboard predictions not recorded (%d dropped so far)",
                            self._waiting, self.dropped)
                return
            self._waiting += 1
            self._recorded[key] = None
            while len(self._recorded) > RECORDED_KEYS:
                self._recorded.popitem(last=False)

        def run() -> None:
            try:
                self.logger(scored, frame, pm)
            except Exception:  # logging must never break the page
                log.warning("logging dashboard predictions failed", exc_info=True)
                with self._lock:
                    self._recorded.pop(key, None)  # not recorded: a later request may try again
            finally:
                with self._lock:
                    self._waiting -= 1

        self._pool.submit(run)

    def whatif(self, status: dict | None, values: dict[str, float | None], when: str | None = None) -> Component:
        """The prediction for typed weather at `when` (UTC; empty: the last hour of the model's data)."""
        pm = self.model(status)
        if pm is None:
            return dbc.Alert(empty_message(status), color="secondary")
        when = when if when and str(when).strip() else pm.data.index.max()
        try:
            pred = D.whatif(pm.model, values, when)
            curves = D.response_curves(pm.model, values, when)
        except WindpipeError as exc:
            return dbc.Alert(str(exc), color="warning", id="whatif-error")
        point = {f: float(values[f]) for f in FEATURES}  # type: ignore[arg-type]
        return dbc.Row([
            dbc.Col(dbc.Card(dbc.CardBody([html.H6(F.LABELS[t], className="text-muted"),
                                           html.H3(f"{v:.2f} GW", id=f"whatif-{t}")])), md=6)
            for t, v in pred.items()
        ] + [dbc.Col(html.Small(f"model {pm.instance_name} (version {pm.version}), at "
                                f"{pd.Timestamp(when):%Y-%m-%d %H:%M} UTC", className="text-muted"),
                     width=12, className="mt-2"),
             dbc.Col(dcc.Graph(id="whatif-curves", figure=F.response_figure(curves, point, pred),
                               config={"displaylogo": False}), width=12, className="mt-2")])

    def model_card(self, status: dict | None) -> Component:
        pm = self.model(status)
        if pm is None:
            return empty_state(status)
        return html.Div([model_card(pm, self.settings), model_quality(pm, self.settings)])

    def pipeline(self, status: dict | None) -> Component:
        if not status or status.get("state") == "down":
            return dbc.Alert("The tracking server does not answer; pipeline status is unavailable.",
                             color="secondary")
        try:
            steps = pipeline_status(self.settings)
        except Exception as exc:  # server errors: say so, keep the page
            return dbc.Alert(f"Cannot read runs: {first_line(exc, 300)}", color="warning")
        return html.Div([pipeline_graph(self.settings), pipeline_view(steps, recent_batches(self.settings))])


# --- components -----------------------------------------------------------------------------------

def empty_message(status: dict | None) -> str:
    if not status:
        return "Loading…"
    if status.get("state") == "no_model":
        return f"No production model yet: {status.get('fix', '')}"
    if status.get("state") in ("down", "error"):
        return status.get("message") or "The tracking server does not answer."
    return "Loading…"


def empty_state(status: dict | None) -> Component:
    if status and status.get("state") == "no_model":
        return dbc.Alert([html.H4("No production model yet", className="alert-heading"),
                          html.P(status.get("message", "")),
                          html.P(["Train and promote one: ", html.Code("windpipe pipeline run"),
                                  " (or ", html.Code("windpipe promote"), " a registered version), then press "
                                  "Refresh."])], color="info", id="empty-state")
    return dbc.Alert(empty_message(status), color="secondary")


def banner(status: dict) -> Component:
    state = status.get("state")
    if state == "down":
        return dbc.Alert([html.Strong("Tracking server unreachable. "), status.get("message", ""), " ",
                          html.Em(status.get("fix", ""))], color="danger", id="server-down", className="mb-2")
    if state == "error":
        return dbc.Alert([html.Strong("Model problem. "), status.get("message", ""), " ",
                          html.Em(status.get("fix", ""))], color="warning", id="model-error", className="mb-2")
    if state == "no_model":
        return empty_state(status)
    return html.Div(f"production: version {status.get('version')}", id="ok-banner",
                    className="text-muted small mb-2")


def errors_table(errs: dict[str, dict[str, float]]) -> Component:
    rows = [html.Tr([html.Td(F.LABELS[t]), html.Td(f"{e['rmse']:.3f}"), html.Td(f"{e['mae']:.3f}")])
            for t, e in errs.items()]
    return dbc.Table([html.Thead(html.Tr([html.Th("target"), html.Th("RMSE (GW)"), html.Th("MAE (GW)")])),
                      html.Tbody(rows)], bordered=False, size="sm", className="w-auto")


def _fmt_time(value: str | None) -> str:
    if not value:
        return "—"
    try:
        return f"{pd.Timestamp(value):%Y-%m-%d %H:%M %Z}".strip()
    except (ValueError, TypeError):
        return value


def model_card(pm: ProductionModel, settings: Settings) -> Component:
    ident = [(k, _fmt_time(v) if k == "promoted at" else v) for k, v in pm.facts()]
    ident.append(("data", f"{len(pm.data):,} rows, {pm.data.index.min():%Y-%m-%d} to {pm.data.index.max():%Y-%m-%d}"))
    metrics = pm.metrics()
    metric_view: object
    if metrics:
        metric_view = dbc.Table([html.Thead(html.Tr([html.Th("holdout metric"), html.Th("value")])),
                                 html.Tbody([html.Tr([html.Td(k), html.Td(f"{v:.4f}")]) for k, v in metrics.items()])],
                                size="sm", className="w-auto")
    else:
        metric_view = html.P(f"No holdout metrics recorded on this version (tags {names.HOLDOUT_PREFIX}*).",
                             className="text-muted")
    return dbc.Card(dbc.CardBody([
        html.H4(pm.instance_name, className="card-title", id="model-instance"),
        dbc.Table(html.Tbody([html.Tr([html.Th(k, className="fw-normal text-muted"), html.Td(v)]) for k, v in ident]),
                  size="sm", className="w-auto"),
        metric_view,
        html.Small(f"tracking server: {settings.effective_tracking_uri}", className="text-muted"),
    ]))


def model_quality(pm: ProductionModel, settings: Settings) -> Component:
    """The model page's honesty section: its rolling-origin backtest, and its error on recorded power
    per scored batch (`windpipe monitor`) against its error at promotion."""
    parts: list[object] = []
    folds = D.backtest_frame(pm.run_metrics)
    if len(folds):
        parts += [html.H5("Backtest: each fold trained on everything before it", className="mt-4"),
                  dcc.Graph(id="backtest-graph", figure=F.backtest_figure(folds), config={"displaylogo": False})]
    moves = alias_history(settings, pm.name)
    if moves is not None:
        parts += [html.H5("Who was production when (windpipe models --history)", className="mt-4"),
                  dcc.Graph(id="alias-timeline", config={"displaylogo": False},
                            figure=F.alias_timeline_figure(moves, pd.Timestamp.now(tz="UTC")))]
    drift = recent_drift(settings)
    if drift is not None:
        from windpipe.scoring.drift import PSI_MOVED

        parts += [html.H5("Drift of recent prediction batches", className="mt-4"),
                  dcc.Graph(id="drift-graph", figure=F.drift_figure(drift, PSI_MOVED), config={"displaylogo": False})]
    history = performance_history(settings, pm.name)
    if history is not None:
        frame = D.performance_frame(history)
        latest = frame.iloc[-1]
        parts.append(html.H5("Error on recorded power (windpipe monitor)", className="mt-4"))
        if latest["status"] == "degraded":
            parts.append(dbc.Alert(f"Batch {latest['batch_id']}: rmse {latest['rmse']:.3f} GW is "
                                   f"{latest['ratio']:.2f}x the error at promotion (limit "
                                   f"{settings.degraded_ratio:g}x). Retrain, or check the inputs' drift.",
                                   color="warning", id="performance-warning"))
        parts.append(dcc.Graph(id="performance-graph", config={"displaylogo": False},
                               figure=F.performance_figure(frame, settings.degraded_ratio)))
    return html.Div(parts)


def performance_history(settings: Settings, model_name: str) -> pd.DataFrame | None:
    """The model's error per batch from the data marts (None when there is none or no marts)."""
    try:
        from windpipe.marts.queries import performance_history as history
        from windpipe.marts.tables import get_engine

        df = history(get_engine(settings=settings), model_name=model_name)
    except Exception:  # marts absent or unreadable: the page simply omits it
        return None
    return df if len(df) else None


def alias_history(settings: Settings, model_name: str) -> pd.DataFrame | None:
    """Every recorded move of the model's aliases (None when there is none or the server cannot say)."""
    try:
        from windpipe.models.history import history

        df = history(settings.model_copy(update={"model_name": model_name}))
    except Exception:  # the page simply omits it
        log.warning("reading the alias history failed", exc_info=True)
        return None
    return df if len(df) else None


def recent_drift(settings: Settings, batches: int = 20) -> pd.DataFrame | None:
    """PSI per feature of the newest checked prediction batches (None when there are none or no marts)."""
    try:
        from windpipe.marts.queries import drift_summary
        from windpipe.marts.tables import get_engine

        df = drift_summary(get_engine(settings=settings), limit=batches)
    except Exception:  # marts absent or unreadable: the page simply omits it
        return None
    return df if len(df) else None


def recent_batches(settings: Settings) -> pd.DataFrame | None:
    """The newest prediction batches from the data marts (None when there are none or no marts)."""
    try:
        from windpipe.marts.queries import latest_batches
        from windpipe.marts.tables import get_engine

        df = latest_batches(get_engine(settings=settings), limit=8)
    except Exception:  # marts absent or unreadable: the page simply omits them
        return None
    return df if len(df) else None


def pipeline_graph(settings: Settings) -> Component:
    """The steps and entities as a DAG from the step.yaml interfaces, coloured by each step's latest run."""
    from windpipe.pipeline.figure import live_pipeline_figure

    try:
        fig = live_pipeline_figure(settings=settings)
    except WindpipeError as exc:  # no projects/ folder beside an installed package, or a broken interface
        return dbc.Alert(f"Pipeline graph unavailable: {exc.problem}", color="secondary")
    return dcc.Graph(id="pipeline-graph", figure=fig, config={"displaylogo": False})


def pipeline_status(settings: Settings) -> list[StepStatus]:
    """The latest run of each step, newest first."""
    found = latest_step_runs(mlflow_client(settings), settings.experiment)
    return sorted(found.values(), key=lambda s: s.start_ms or 0, reverse=True)


def pipeline_view(steps: list[StepStatus], batches: pd.DataFrame | None = None) -> Component:
    parts: list[object] = []
    if not steps:
        parts.append(dbc.Alert("No step runs yet: run `windpipe pipeline run`.", color="info"))
    else:
        colour = {"FINISHED": "success", "FAILED": "danger", "RUNNING": "primary", "KILLED": "secondary"}
        rows = [html.Tr([html.Td(s.step), html.Td(s.entry_point),
                         html.Td(dbc.Badge(s.status, color=colour.get(s.status, "secondary"))),
                         html.Td(f"{pd.Timestamp(s.start_ms, unit='ms'):%Y-%m-%d %H:%M} UTC" if s.start_ms else "—"),
                         html.Td(f"{s.duration_s:.1f} s" if s.duration_s is not None else "—"),
                         html.Td(html.Code((s.run_id or "")[:12])), html.Td(s.reason[:200])]) for s in steps]
        parts.append(dbc.Table([html.Thead(html.Tr([html.Th(h) for h in (
            "step", "entry point", "status", "started", "duration", "run", "failure reason")])),
            html.Tbody(rows)], size="sm", hover=True, id="pipeline-table"))
    if batches is not None:
        cols = [c for c in ("id", "created_at", "source", "model_version", "row_count", "drift_status")
                if c in batches.columns]
        parts.append(html.H5("Latest prediction batches (data marts)", className="mt-4"))
        parts.append(dbc.Table([html.Thead(html.Tr([html.Th(c) for c in cols])),
                                html.Tbody([html.Tr([html.Td(str(r[c])) for c in cols])
                                            for _, r in batches.iterrows()])], size="sm"))
    return html.Div(parts)


def _whatif_inputs() -> Component:
    """One slider per weather input (Dash shows its value in a box beside it); the ranges cover German weather."""
    return dbc.Row([
        dbc.Col([dbc.Label(label, html_for=f"whatif-in-{f}"),
                 dcc.Slider(id=f"whatif-in-{f}", min=low, max=high, step=step, value=default,
                            marks=None)], md=3)
        for f, (label, default) in FEATURE_HELP.items()
        for low, high, step in [SLIDER_RANGES[f]]
    ], className="g-3 mb-3")


def layout(settings: Settings, refresh_seconds: float) -> Component:
    """The page: header with Refresh, the status banner, and one tab per page."""
    header = dbc.Navbar(dbc.Container([
        dbc.NavbarBrand("windpipe · German solar and wind", className="fw-semibold"),
        dbc.Button("Refresh", id="refresh", color="light", size="sm"),
    ], fluid=True), color="primary", dark=True, className="mb-3")
    predictions = html.Div([
        dbc.Row([
            dbc.Col([dbc.Label("Dates (UTC, both inclusive)", html_for="range-start", className="d-block"),
                     dcc.DatePickerRange(id="range", start_date_id="range-start", end_date_id="range-end",
                                         display_format="YYYY-MM-DD", first_day_of_week=1, clearable=False,
                                         start_date_placeholder_text="from", end_date_placeholder_text="to")],
                    md="auto"),
            dbc.Col(dbc.Button("Predict", id="predict", color="primary", className="mt-4"), md=2),
        ], className="g-3 mb-2"),
        dbc.Alert(id="range-message", color="secondary", is_open=False),
        dcc.Loading(dcc.Graph(id="prediction-graph", config={"displaylogo": False})),
        html.Div(id="prediction-errors"),
    ])
    whatif = html.Div([
        html.P("Move the weather and pick the hour; the production model predicts the power it gives, and the "
               "curves show how power responds to wind speed and to radiation around that point (a model that "
               "follows the trend gives more wind power for the same wind in later years).",
               className="text-muted"),
        _whatif_inputs(),
        dbc.Row(dbc.Col([dbc.Label("Time (UTC, YYYY-MM-DD HH:MM)", html_for="whatif-in-time"),
                         dbc.Input(id="whatif-in-time", type="text", debounce=True,
                                   placeholder="empty: the last hour of the data")], md=3), className="mb-3"),
        dbc.Button("Predict", id="whatif-go", color="primary", className="mb-3"),
        html.Div(id="whatif-result"),
    ])
    tabs = dbc.Tabs([
        dbc.Tab(dcc.Loading(dcc.Graph(id="history-graph", config={"displaylogo": False})), label="History",
                tab_id="history"),
        dbc.Tab(predictions, label="Predictions", tab_id="predictions"),
        dbc.Tab(whatif, label="What-if", tab_id="whatif"),
        dbc.Tab(html.Div(id="model-card"), label="Model", tab_id="model"),
        dbc.Tab(html.Div(id="pipeline-status"), label="Pipeline", tab_id="pipeline"),
    ], id="tabs", active_tab="predictions", className="mb-3")
    return html.Div([
        dcc.Store(id="status"),
        dcc.Interval(id="tick", interval=int(refresh_seconds * 1000)),
        header,
        dbc.Container([html.Div(id="banner"), tabs], fluid=True),
    ])


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
    app.layout = layout(settings, refresh_seconds)
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

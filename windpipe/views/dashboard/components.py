"""The dashboard's components: the page layout and the parts each page shows, built from data they are given
(windpipe.views.dashboard.fetchers reads it; the callbacks in windpipe.views.dashboard.app wire them up).
"""

from __future__ import annotations

from typing import Any

import dash_bootstrap_components as dbc
import pandas as pd
from dash import dcc, html
from dash.development.base_component import Component

from windpipe import names
from windpipe.settings import Settings
from windpipe.tracking.runs import StepStatus
from windpipe.views import figures as F
from windpipe.views import frames as D
from windpipe.views.source import ProductionModel

SLIDER_RANGES = {"windspeed": (0.0, 25.0, 0.1), "temperature": (-20.0, 40.0, 0.5),
                 "rad_horizontal": (0.0, 1000.0, 5.0), "rad_diffuse": (0.0, 500.0, 5.0)}
FEATURE_HELP = {
    "windspeed": ("Wind speed (m/s, 10 m)", 5.0),
    "temperature": ("Temperature (°C)", 10.0),
    "rad_horizontal": ("Direct horizontal radiation (W/m²)", 200.0),
    "rad_diffuse": ("Diffuse radiation (W/m²)", 80.0),
}


def interval_text(prediction: dict[str, float], target: str) -> list[Component]:
    """`80 % interval: a - b GW` under a what-if card (frames.whatif's quantiles); nothing without them."""
    low, high = (names.quantile_column(target, q) for q in names.INTERVAL)
    if low not in prediction or high not in prediction:
        return []
    return [html.Small(f"80 % interval: {prediction[low]:.2f} - {prediction[high]:.2f} GW (P10 - P90)",
                       id=f"whatif-interval-{target}", className="text-muted")]


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


def model_quality(pm: ProductionModel, degraded_ratio: float, moves: pd.DataFrame | None = None,
                  drift: pd.DataFrame | None = None, history: pd.DataFrame | None = None) -> Component:
    """The model page's honesty section: its rolling-origin backtest, who was production when (`moves`), the
    drift of recent batches, and its error on recorded power per scored batch (`history`, from `windpipe
    monitor`) against its error at promotion; a part without data is left out."""
    parts: list[object] = []
    folds = D.backtest_frame(pm.run_metrics)
    if len(folds):
        parts += [html.H5("Backtest: each fold trained on everything before it", className="mt-4"),
                  dcc.Graph(id="backtest-graph", figure=F.backtest_figure(folds), config={"displaylogo": False})]
    if moves is not None:
        parts += [html.H5("Who was production when (windpipe models --history)", className="mt-4"),
                  dcc.Graph(id="alias-timeline", config={"displaylogo": False},
                            figure=F.alias_timeline_figure(moves, pd.Timestamp.now(tz="UTC")))]
    if drift is not None:
        from windpipe.scoring.drift import PSI_MOVED

        parts += [html.H5("Drift of recent prediction batches", className="mt-4"),
                  dcc.Graph(id="drift-graph", figure=F.drift_figure(drift, PSI_MOVED), config={"displaylogo": False})]
    if history is not None:
        frame = D.performance_frame(history)
        latest = frame.iloc[-1]
        parts.append(html.H5("Error on recorded power (windpipe monitor)", className="mt-4"))
        if latest["status"] == "degraded":
            parts.append(dbc.Alert(f"Batch {latest['batch_id']}: rmse {latest['rmse']:.3f} GW is "
                                   f"{latest['ratio']:.2f}x the error at promotion (limit "
                                   f"{degraded_ratio:g}x). Retrain, or check the inputs' drift.",
                                   color="warning", id="performance-warning"))
        parts.append(dcc.Graph(id="performance-graph", config={"displaylogo": False},
                               figure=F.performance_figure(frame, degraded_ratio)))
    return html.Div(parts)


def pipeline_graph(fig: Any) -> Component:
    """The pipeline's DAG figure (windpipe.views.dashboard.fetchers.pipeline_figure), or why there is none."""
    if isinstance(fig, str):
        return dbc.Alert(f"Pipeline graph unavailable: {fig}", color="secondary")
    return dcc.Graph(id="pipeline-graph", figure=fig, config={"displaylogo": False})


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

"""Plotly figures for the dashboard and the report (pure: frames in, figures out)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from windpipe.entities import TARGETS

LABELS = {"solar_GW": "Solar (GW)", "wind_GW": "Wind (GW)"}
COLORS = {"solar_GW": "#f0a202", "wind_GW": "#1f77b4"}


def history_figure(weekly: pd.DataFrame) -> go.Figure:
    """Weekly rolling solar and wind, one line per year, over the day of the year."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[f"{LABELS[t]}, 7-day rolling mean" for t in TARGETS])
    for year, part in weekly.groupby("year"):
        for row, target in enumerate(TARGETS, start=1):
            fig.add_trace(go.Scattergl(x=part["day_of_year"].to_numpy(), y=part[target].to_numpy(), mode="lines",
                                       name=str(year), legendgroup=str(year), showlegend=row == 1), row=row, col=1)
    fig.update_xaxes(title_text="day of year", row=2, col=1)
    fig.update_layout(height=560, margin={"l": 50, "r": 20, "t": 40, "b": 40}, legend_title_text="year",
                      template="plotly_white")
    return fig


def prediction_figure(frame: pd.DataFrame, title: str = "") -> go.Figure:
    """Recorded vs predicted for both targets over time (a `predict_frame` result)."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[LABELS[t] for t in TARGETS])
    x = frame.index
    for row, target in enumerate(TARGETS, start=1):
        fig.add_trace(go.Scatter(x=x, y=frame[target].to_numpy(), mode="lines", name=f"recorded {target}",
                                 line={"color": "#444", "width": 1.2}), row=row, col=1)
        fig.add_trace(go.Scatter(x=x, y=frame[f"pred_{target}"].to_numpy(), mode="lines",
                                 name=f"predicted {target}", line={"color": COLORS[target], "width": 1.5}),
                      row=row, col=1)
    fig.update_layout(height=560, margin={"l": 50, "r": 20, "t": 60, "b": 40}, title=title or None,
                      template="plotly_white", legend={"orientation": "h", "y": -0.08})
    return fig


def empty_figure(message: str) -> go.Figure:
    """A blank figure carrying a message (no data, or an error)."""
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font={"size": 15})
    fig.update_layout(xaxis={"visible": False}, yaxis={"visible": False}, height=300, template="plotly_white")
    return fig

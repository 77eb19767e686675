"""Plotly figures for the dashboard and the report (pure: frames in, figure dicts out).

Figures are plain plotly dicts: Dash sends them as they are, and skipping plotly's object
validation makes a month of predictions about ten times faster to build and serialise.
`as_figure` turns one into a `plotly.graph_objects.Figure` (the report, notebooks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from windpipe.names import CHALLENGER, INTERVAL, PRODUCTION, TARGETS, quantile_column

if TYPE_CHECKING:
    import plotly.graph_objects as go

LABELS = {"solar_GW": "Solar (GW)", "wind_GW": "Wind (GW)"}
COLORS = {"solar_GW": "#f0a202", "wind_GW": "#1f77b4"}
BAND_COLORS = {"solar_GW": "rgba(240, 162, 2, 0.22)", "wind_GW": "rgba(31, 119, 180, 0.2)"}  # the 80 % interval
PALETTE = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880"]


def _two_rows(titles: list[str], height: int, top: int) -> dict:
    """The layout of two stacked plots sharing the x axis (what make_subplots(2, 1) makes)."""
    annotations = [{"text": t, "x": 0.5, "y": y, "xref": "paper", "yref": "paper", "showarrow": False,
                    "xanchor": "center", "yanchor": "bottom", "font": {"size": 14}}
                   for t, y in zip(titles, (1.0, 0.46), strict=True)]
    return {
        "height": height, "margin": {"l": 50, "r": 20, "t": top, "b": 40}, "template": _template(),
        "xaxis": {"anchor": "y", "matches": "x2", "showticklabels": False, "domain": [0, 1]},
        "xaxis2": {"anchor": "y2", "domain": [0, 1]},
        "yaxis": {"anchor": "x", "domain": [0.54, 1.0]},
        "yaxis2": {"anchor": "x2", "domain": [0.0, 0.46]},
        "annotations": annotations,
    }


def _template() -> dict:
    """A light template (plotly_white's look, without its 30 kB of defaults)."""
    axis = {"gridcolor": "#ebf0f8", "linecolor": "#ebf0f8", "zerolinecolor": "#ebf0f8", "automargin": True}
    return {"layout": {"paper_bgcolor": "white", "plot_bgcolor": "white", "font": {"color": "#2a3f5f"},
                       "xaxis": axis, "yaxis": axis, "colorway": PALETTE, "hovermode": "closest"}}


def _times(index: pd.Index) -> list[str]:
    return list(pd.DatetimeIndex(index).strftime("%Y-%m-%d %H:%M"))


def _values(series: pd.Series | np.ndarray) -> list[float | None]:
    arr = np.round(np.asarray(series, dtype="float64"), 4)
    nan = np.isnan(arr)
    if not nan.any():
        return arr.tolist()
    out = arr.astype(object)
    out[nan] = None
    return out.tolist()


def history_figure(weekly: pd.DataFrame) -> dict:
    """Weekly rolling solar and wind, one line per year, over the day of the year."""
    data = []
    for i, (year, part) in enumerate(weekly.groupby("year")):
        colour = PALETTE[i % len(PALETTE)]
        for row, target in enumerate(TARGETS, start=1):
            data.append({"type": "scatter", "mode": "lines", "x": part["day_of_year"].astype(int).tolist(),
                         "y": _values(part[target]), "name": str(year), "legendgroup": str(year),
                         "showlegend": row == 1, "line": {"color": colour},
                         "xaxis": "x" if row == 1 else "x2", "yaxis": "y" if row == 1 else "y2"})
    layout = _two_rows([f"{LABELS[t]}, 7-day rolling mean" for t in TARGETS], 560, 40)
    layout["xaxis2"]["title"] = {"text": "day of year"}
    layout["legend"] = {"title": {"text": "year"}}
    return {"data": data, "layout": layout}


def prediction_figure(frame: pd.DataFrame, title: str = "") -> dict:
    """Recorded vs predicted for both targets over time (a `predict_frame` result), with the 80 % interval
    (P10..P90) as a band when the model gives quantiles."""
    x = _times(frame.index)
    data = []
    for row, target in enumerate(TARGETS, start=1):
        axes = {"xaxis": "x" if row == 1 else "x2", "yaxis": "y" if row == 1 else "y2"}
        data.extend(_band(x, frame, target, "pred_", showlegend=True, axes=axes))
        data.append({"type": "scatter", "mode": "lines", "x": x, "y": _values(frame[target]),
                     "name": f"recorded {target}", "line": {"color": "#444", "width": 1.2}, **axes})
        data.append({"type": "scatter", "mode": "lines", "x": x, "y": _values(frame[f"pred_{target}"]),
                     "name": f"predicted {target}", "line": {"color": COLORS[target], "width": 1.5}, **axes})
    layout = _two_rows([LABELS[t] for t in TARGETS], 560, 60)
    layout["legend"] = {"orientation": "h", "y": -0.08}
    if title:
        layout["title"] = {"text": title}
    return {"data": data, "layout": layout}


def backtest_figure(folds: pd.DataFrame, title: str = "") -> dict:
    """r2 and bias per backtest fold and target (a `frames.backtest_frame` result): the figure the training
    run logs (windpipe.training.figures.backtest_figure), as a dict in this module's light template."""
    from windpipe.training.figures import backtest_figure as run_figure

    fig = run_figure(folds, title=title)
    fig["layout"].update({"template": _template(), "width": None, "autosize": True})
    return fig


def performance_figure(frame: pd.DataFrame, ratio_limit: float, title: str = "") -> dict:
    """The model's rmse on recorded power per batch over time (a `frames.performance_frame` result), against
    its rmse at promotion and the degradation limit (`ratio_limit` x that); degraded batches in red."""
    x = _times(frame["last_time"])
    bad = frame["status"].eq("degraded").to_numpy()
    data = [
        {"type": "scatter", "mode": "lines+markers", "x": x, "y": _values(frame["rmse"]), "name": "rmse per batch",
         "text": [f"batch {b}, {n} hours" for b, n in zip(frame["batch_id"], frame["rows_with_actuals"], strict=True)],
         "line": {"color": "#444"},
         "marker": {"size": 9, "color": ["#d62728" if b else "#2ca02c" for b in bad]}},
        {"type": "scatter", "mode": "lines", "x": x, "y": _values(frame["promotion_rmse"]),
         "name": "rmse at promotion (holdout)", "line": {"color": "#1f77b4", "shape": "hv"}},
        {"type": "scatter", "mode": "lines", "x": x, "y": _values(frame["promotion_rmse"] * ratio_limit),
         "name": f"degraded above ({ratio_limit:g}x)", "line": {"color": "#d62728", "dash": "dash", "shape": "hv"}},
    ]
    layout = {"height": 360, "margin": {"l": 50, "r": 20, "t": 50, "b": 40}, "template": _template(),
              "xaxis": {"title": {"text": "last hour of the batch with recorded power (UTC)"}},
              "yaxis": {"title": {"text": "rmse (GW, mean of both targets)"}, "rangemode": "tozero"},
              "legend": {"orientation": "h", "y": -0.25}}
    if title:
        layout["title"] = {"text": title}
    return {"data": data, "layout": layout}


def _side_by_side(titles: list[str], height: int) -> dict:
    """The layout of two plots next to each other, each with its own axes."""
    from windpipe.training.figures import panels

    layout = panels(titles, height)
    for axis in ("yaxis", "yaxis2"):
        layout[axis]["rangemode"] = "tozero"
    return {**layout, "margin": {"l": 50, "r": 20, "t": 40, "b": 50}, "template": _template(),
            "legend": {"orientation": "h", "y": -0.2}}


SWEEP_LABELS = {"windspeed": "wind speed (m/s)", "rad_horizontal": "direct horizontal radiation (W/m²)"}


def _band(x: list, frame: pd.DataFrame, target: str, prefix: str, showlegend: bool, axes: dict) -> list[dict]:
    """The 80 % interval of `target` (columns `<prefix><target>_p10` and `_p90` of `frame`) as a filled band: two
    traces, the lower edge then the upper filled down to it; none when the frame has no quantiles."""
    low, high = (f"{prefix}{quantile_column(target, q)}" for q in INTERVAL)
    if low not in frame.columns or high not in frame.columns or frame[low].isna().all():
        return []
    edge = {"type": "scatter", "mode": "lines", "x": x, "line": {"width": 0, "color": COLORS[target]},
            "hoverinfo": "skip", "legendgroup": f"band {target}", **axes}
    return [{**edge, "y": _values(frame[low]), "showlegend": False, "name": f"P10 {target}"},
            {**edge, "y": _values(frame[high]), "fill": "tonexty", "fillcolor": BAND_COLORS[target],
             "name": f"80 % interval {target} (P10..P90)", "showlegend": showlegend}]


def response_figure(curves: dict[str, pd.DataFrame], point: dict[str, float], prediction: dict[str, float]) -> dict:
    """Power against wind speed and against radiation (a `frames.response_curves` result), the other inputs held
    at the chosen values; the chosen point marked on every curve."""
    data = []
    for col, (feature, curve) in enumerate(curves.items(), start=1):
        axes = {"xaxis": "x" if col == 1 else "x2", "yaxis": "y" if col == 1 else "y2"}
        for target in TARGETS:
            data.extend(_band(_values(curve[feature]), curve, target, "", showlegend=col == 1, axes=axes))
            data.append({"type": "scatter", "mode": "lines", "x": _values(curve[feature]), "y": _values(curve[target]),
                         "name": LABELS[target], "legendgroup": target, "showlegend": col == 1,
                         "line": {"color": COLORS[target], "width": 2}, **axes})
            data.append({"type": "scatter", "mode": "markers", "x": [point[feature]],
                         "y": [round(prediction[target], 4)], "name": "chosen weather", "legendgroup": "chosen",
                         "showlegend": col == 1 and target == TARGETS[0],
                         "marker": {"color": COLORS[target], "size": 12, "symbol": "circle",
                                    "line": {"color": "#222", "width": 2}}, **axes})
    layout = _side_by_side([f"power against {SWEEP_LABELS.get(f, f)}" for f in curves], 380)
    for i, feature in enumerate(curves, start=1):
        layout[f"xaxis{'' if i == 1 else i}"]["title"] = {"text": SWEEP_LABELS.get(feature, feature)}
    layout["yaxis"]["title"] = {"text": "GW"}
    return {"data": data, "layout": layout}


ACTION_COLORS = {"first": "#2ca02c", "promote": "#2ca02c", "force": "#ff7f0e", "rollback": "#9467bd",
                 "outside": "#d62728"}


def alias_timeline_figure(history: pd.DataFrame, now: pd.Timestamp) -> dict:
    """Which version each alias pointed at over time (a `windpipe.models.history.history` table): a step line per
    alias, a marker per move coloured by what made it (promote, force, rollback, outside), its reason on hover."""
    data = []
    for alias, dash_style in ((PRODUCTION, "solid"), (CHALLENGER, "dot")):
        part = history[history["alias"] == alias]
        if part.empty:
            continue
        at = part["at"].fillna(now)
        to = part["to_version"].astype("float64")
        data.append({"type": "scatter", "mode": "lines", "x": _times(pd.DatetimeIndex(list(at) + [now])),
                     "y": _values(np.append(to.to_numpy(), to.iloc[-1])), "name": alias,
                     "line": {"shape": "hv", "dash": dash_style, "width": 3 if alias == PRODUCTION else 1.5,
                              "color": "#1f77b4" if alias == PRODUCTION else "#7f7f7f"}})
        text = [f"{alias}: {'-' if pd.isna(f) else f'v{f}'} -> v{t} ({a})<br>"
                f"{u or '?'}{'@' + h if h else ''}<br>{r[:160]}"
                for f, t, a, u, h, r in zip(part["from_version"], part["to_version"], part["action"], part["user"],
                                            part["host"], part["reason"], strict=True)]
        data.append({"type": "scatter", "mode": "markers", "x": _times(pd.DatetimeIndex(at)), "y": _values(to),
                     "name": f"{alias} moves", "text": text, "hoverinfo": "text", "showlegend": False,
                     "marker": {"size": 11 if alias == PRODUCTION else 7,
                                "color": [ACTION_COLORS.get(a, "#444") for a in part["action"]]}})
    layout = {"height": 320, "margin": {"l": 50, "r": 20, "t": 30, "b": 40}, "template": _template(),
              "yaxis": {"title": {"text": "version"}, "dtick": 1}, "xaxis": {"title": {"text": "UTC"}},
              "legend": {"orientation": "h", "y": -0.3}}
    first = history["at"].min()
    layout["xaxis"]["range"] = _time_range(now if pd.isna(first) else first, now)
    return {"data": data, "layout": layout}


def _time_range(first: pd.Timestamp, last: pd.Timestamp) -> list[str]:
    """An x range around [first, last]: a moment or a few minutes get the half day before them (plotly would
    zoom to milliseconds), a longer span a margin of 5 % on either side."""
    span = last - first
    if span < pd.Timedelta(hours=1):
        return _times(pd.DatetimeIndex([last - pd.Timedelta(hours=12), last + pd.Timedelta(hours=1)]))
    return _times(pd.DatetimeIndex([first - span * 0.05, last + span * 0.05]))


def drift_figure(summary: pd.DataFrame, limit: float) -> dict:
    """PSI of each feature per prediction batch over time (a `marts.queries.drift_summary` table), the PSI limit
    dashed; a batch's marker is amber for `warn` and red for `drift`."""
    colour = {"warn": "#ff7f0e", "drift": "#d62728"}
    data = []
    frame = (summary.assign(created_at=pd.to_datetime(summary["created_at"], utc=True))
             .sort_values(["created_at", "batch"]))
    for i, (feature, part) in enumerate(frame.groupby("feature", sort=False)):
        data.append({"type": "scatter", "mode": "lines+markers", "x": _times(pd.DatetimeIndex(part["created_at"])),
                     "y": _values(part["psi"]), "name": feature, "line": {"color": PALETTE[i % len(PALETTE)]},
                     "text": [f"batch {b} ({s})" for b, s in zip(part["batch"], part["status"], strict=True)],
                     "marker": {"size": 9,
                                "color": [colour.get(s, PALETTE[i % len(PALETTE)]) for s in part["status"]]}})
    layout = {"height": 340, "margin": {"l": 50, "r": 20, "t": 30, "b": 40}, "template": _template(),
              "yaxis": {"title": {"text": "PSI against the same season"}, "rangemode": "tozero"},
              "xaxis": {"title": {"text": "batch scored at (UTC)"}}, "legend": {"orientation": "h", "y": -0.3}}
    if len(frame):
        x = _time_range(frame["created_at"].min(), frame["created_at"].max())
        data.append({"type": "scatter", "mode": "lines", "x": x, "y": [limit, limit], "name": f"PSI {limit:g}",
                     "line": {"color": "#d62728", "dash": "dash", "width": 1}})
        layout["xaxis"]["range"] = x
    return {"data": data, "layout": layout}


def empty_figure(message: str) -> dict:
    """A blank figure carrying a message (no data, or an error)."""
    return {"data": [], "layout": {
        "annotations": [{"text": message, "showarrow": False, "x": 0.5, "y": 0.5, "xref": "paper",
                         "yref": "paper", "font": {"size": 15}}],
        "xaxis": {"visible": False}, "yaxis": {"visible": False}, "height": 300, "template": _template()}}


def as_figure(fig: dict) -> go.Figure:
    """A plotly `Figure` from one of these dicts."""
    import plotly.graph_objects as go

    return go.Figure(fig)

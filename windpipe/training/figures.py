"""The figures a training run logs (one panel per target, the backtest's folds, the promotion gate's response
curves), as plain plotly figure dicts, and the HTML page MLflow shows them in (`figure_html`).

plotly rather than matplotlib: building and writing it costs a fraction of a second, where a
matplotlib PNG with tight layout cost seconds on a busy 2-core machine (tracking overhead counts). Plain
dicts rather than plotly's figure objects: make_subplots and the objects' validation took 0.15 s of a step's
fixed cost (issue 25), and the dashboard (windpipe.views.figures) draws the same dicts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from windpipe.names import TARGETS

COLOURS = {"solar_GW": "#f0a202", "wind_GW": "#1f77b4"}


def panels(titles: list[str], height: int, gap: float = 0.12) -> dict:
    """The layout of len(titles) plots next to each other, each with its own axes (x/y, x2/y2, ...) and its title
    above it (what plotly's make_subplots(1, n) makes)."""
    n = max(len(titles), 1)
    width = (1.0 - gap * (n - 1)) / n
    layout: dict = {"height": height, "annotations": []}
    for i, title in enumerate(titles or [""]):
        left = i * (width + gap)
        suffix = str(i + 1) if i else ""
        layout[f"xaxis{suffix}"] = {"anchor": f"y{suffix}", "domain": [round(left, 6), round(left + width, 6)]}
        layout[f"yaxis{suffix}"] = {"anchor": f"x{suffix}"}
        if title:
            layout["annotations"].append({"text": title, "x": left + width / 2, "y": 1.0, "xref": "paper",
                                          "yref": "paper", "showarrow": False, "xanchor": "center",
                                          "yanchor": "bottom", "font": {"size": 14}})
    return layout


def axes(i: int) -> dict:
    """A trace's axes in panel i (from 0) of `panels`."""
    return {"xaxis": f"x{i + 1 if i else ''}", "yaxis": f"y{i + 1 if i else ''}"}


def figure_html(fig: dict) -> str:
    """The HTML page of a figure dict (plotly.js from its CDN, as plotly's write_html(include_plotlyjs="cdn")),
    without plotly's validation: what a run logs."""
    import plotly.io as pio

    return pio.to_html(fig, validate=False, include_plotlyjs="cdn", full_html=True)


def _values(values: np.ndarray) -> list[float]:
    return np.round(np.asarray(values, dtype="float64"), 4).tolist()


def predicted_vs_recorded(y_true: pd.DataFrame | np.ndarray, y_pred: pd.DataFrame | np.ndarray,
                          targets: list[str] = TARGETS, title: str = "", max_points: int = 2000,
                          seed: int = 0) -> dict:
    """Scatter of predicted against recorded values per target (a random sample of rows), identity line."""
    from windpipe.training.metrics import regression_metrics

    yt = np.asarray(y_true, dtype="float64").reshape(len(y_true), -1)
    yp = np.asarray(y_pred, dtype="float64").reshape(len(y_pred), -1)
    m = regression_metrics(yt, yp, targets)
    idx = np.arange(len(yt))
    if len(idx) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_points, replace=False))
    layout = panels([f"{t}: r2 {m[f'r2_{t}']:.3f}, rmse {m[f'rmse_{t}']:.2f} GW" for t in targets], 450, gap=0.1)
    data = []
    for i, t in enumerate(targets):
        lo = float(min(yt[:, i].min(), yp[:, i].min()))
        hi = float(max(yt[:, i].max(), yp[:, i].max()))
        data += [{"type": "scatter", "x": _values(yt[idx, i]), "y": _values(yp[idx, i]), "mode": "markers",
                  "name": t, "marker": {"size": 3, "opacity": 0.4}, **axes(i)},
                 {"type": "scatter", "x": [lo, hi], "y": [lo, hi], "mode": "lines", "name": "identity",
                  "line": {"color": "black", "width": 1}, **axes(i)}]
        suffix = str(i + 1) if i else ""
        layout[f"xaxis{suffix}"]["title"] = {"text": f"recorded {t}"}
        layout[f"yaxis{suffix}"]["title"] = {"text": f"predicted {t}"}
    layout.update({"width": 450 * len(targets), "showlegend": False, "margin": {"l": 50, "r": 20, "t": 60, "b": 50}})
    if title:
        layout["title"] = {"text": title}
    return {"data": data, "layout": layout}


def backtest_figure(folds: pd.DataFrame, targets: list[str] = TARGETS, title: str = "") -> dict:
    """r2 and bias (mean error, GW) per backtest fold and target, the mean over folds dashed.

    `folds` is `windpipe.training.backtest.run_backtest`'s frame (or `folds_from_metrics` of a run):
    one row per fold with `r2_<target>` and `bias_<target>` columns.
    """
    labels = [f"fold {int(f)}" for f in folds["fold"]]
    layout = panels(["r2 per fold (higher is better)", "bias per fold, GW (closest to 0 is best)"], 380, gap=0.1)
    data = []
    for i, kind in enumerate(("r2", "bias")):
        for t in targets:
            key = f"{kind}_{t}"
            if key not in folds:
                continue
            values = folds[key].astype("float64")
            data += [{"type": "bar", "x": labels, "y": _values(values), "name": t, "legendgroup": t,
                      "showlegend": i == 0, "marker": {"color": COLOURS.get(t)}, **axes(i)},
                     {"type": "scatter", "x": labels, "y": [float(values.mean())] * len(labels), "mode": "lines",
                      "showlegend": False, "name": f"{t} mean {values.mean():.3g}", "legendgroup": t,
                      "line": {"color": COLOURS.get(t), "dash": "dash", "width": 1.5}, **axes(i)}]
    layout.update({"barmode": "group", "width": 900, "margin": {"l": 50, "r": 20, "t": 60, "b": 40},
                   "legend": {"orientation": "h", "y": -0.15}})
    if title:
        layout["title"] = {"text": title}
    return {"data": data, "layout": layout}


def physics_figure(curves: list[tuple[str, dict[str, pd.DataFrame]]], title: str = "",
                   targets: list[str] = TARGETS) -> dict:
    """The promotion gate's response curves (windpipe.training.physics.curves_at): power against each swept
    input, one faint line per holdout condition and target, so a dip or a response to an ignored input shows."""
    features = list(curves[0][1]) if curves else []
    layout = panels([f"power against {f}, one line per holdout condition" for f in features], 400, gap=0.1)
    data = []
    for n, (label, per_feature) in enumerate(curves):
        for i, feature in enumerate(features):
            curve = per_feature[feature]
            data += [{"type": "scatter", "x": _values(curve[feature]), "y": _values(curve[t]), "mode": "lines",
                      "name": t, "legendgroup": t, "showlegend": n == 0 and i == 0, "hovertext": label,
                      "opacity": 0.6, "line": {"color": COLOURS.get(t), "width": 1.5}, **axes(i)}
                     for t in targets]
    for i, feature in enumerate(features):
        layout[f"xaxis{i + 1 if i else ''}"]["title"] = {"text": feature}
    layout["yaxis"]["title"] = {"text": "GW"}
    layout.update({"width": 900, "margin": {"l": 50, "r": 20, "t": 60, "b": 40},
                   "legend": {"orientation": "h", "y": -0.2}})
    if title:
        layout["title"] = {"text": title}
    return {"data": data, "layout": layout}

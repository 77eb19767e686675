"""The predicted-vs-recorded figure (one panel per target): a small plotly figure.

plotly rather than matplotlib: building and writing it costs a fraction of a second, where a
matplotlib PNG with tight layout cost seconds on a busy 2-core machine (tracking overhead counts).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from windpipe.names import TARGETS

if TYPE_CHECKING:
    import plotly.graph_objects as go


def predicted_vs_recorded(y_true: pd.DataFrame | np.ndarray, y_pred: pd.DataFrame | np.ndarray,
                          targets: list[str] = TARGETS, title: str = "", max_points: int = 2000,
                          seed: int = 0) -> go.Figure:
    """Scatter of predicted against recorded values per target (a random sample of rows), identity line."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from windpipe.training.metrics import regression_metrics

    yt = np.asarray(y_true, dtype="float64").reshape(len(y_true), -1)
    yp = np.asarray(y_pred, dtype="float64").reshape(len(y_pred), -1)
    m = regression_metrics(yt, yp, targets)
    idx = np.arange(len(yt))
    if len(idx) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_points, replace=False))
    fig = make_subplots(rows=1, cols=len(targets), subplot_titles=[
        f"{t}: r2 {m[f'r2_{t}']:.3f}, rmse {m[f'rmse_{t}']:.2f} GW" for t in targets])
    for i, t in enumerate(targets):
        lo = float(min(yt[:, i].min(), yp[:, i].min()))
        hi = float(max(yt[:, i].max(), yp[:, i].max()))
        fig.add_trace(go.Scatter(x=yt[idx, i], y=yp[idx, i], mode="markers", name=t,
                                 marker={"size": 3, "opacity": 0.4}), row=1, col=i + 1)
        fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="identity", showlegend=i == 0,
                                 line={"color": "black", "width": 1}), row=1, col=i + 1)
        fig.update_xaxes(title_text=f"recorded {t}", row=1, col=i + 1)
        fig.update_yaxes(title_text=f"predicted {t}", row=1, col=i + 1)
    fig.update_layout(title=title or None, width=450 * len(targets), height=450, showlegend=False,
                      margin={"l": 50, "r": 20, "t": 60, "b": 50})
    return fig


def backtest_figure(folds: pd.DataFrame, targets: list[str] = TARGETS, title: str = "") -> go.Figure:
    """r2 and bias (mean error, GW) per backtest fold and target, the mean over folds dashed.

    `folds` is `windpipe.training.backtest.run_backtest`'s frame (or `folds_from_metrics` of a run):
    one row per fold with `r2_<target>` and `bias_<target>` columns.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    colours = {"solar_GW": "#f0a202", "wind_GW": "#1f77b4"}
    labels = [f"fold {int(f)}" for f in folds["fold"]]
    fig = make_subplots(rows=1, cols=2, subplot_titles=["r2 per fold (higher is better)",
                                                        "bias per fold, GW (closest to 0 is best)"])
    for col, kind in enumerate(("r2", "bias"), start=1):
        for t in targets:
            key = f"{kind}_{t}"
            if key not in folds:
                continue
            values = folds[key].astype("float64")
            fig.add_trace(go.Bar(x=labels, y=values, name=t, legendgroup=t, showlegend=col == 1,
                                 marker={"color": colours.get(t)}), row=1, col=col)
            fig.add_trace(go.Scatter(x=labels, y=[values.mean()] * len(labels), mode="lines", showlegend=False,
                                     name=f"{t} mean {values.mean():.3g}", legendgroup=t,
                                     line={"color": colours.get(t), "dash": "dash", "width": 1.5}), row=1, col=col)
    fig.update_layout(title=title or None, barmode="group", width=900, height=380,
                      margin={"l": 50, "r": 20, "t": 60, "b": 40}, legend={"orientation": "h", "y": -0.15})
    return fig


def physics_figure(curves: list[tuple[str, dict[str, pd.DataFrame]]], title: str = "",
                   targets: list[str] = TARGETS) -> go.Figure:
    """The promotion gate's response curves (windpipe.training.physics.curves_at): power against each swept
    input, one faint line per holdout condition and target, so a dip or a response to an ignored input shows."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    colours = {"solar_GW": "#f0a202", "wind_GW": "#1f77b4"}
    features = list(curves[0][1]) if curves else []
    fig = make_subplots(rows=1, cols=max(len(features), 1),
                        subplot_titles=[f"power against {f}, one line per holdout condition" for f in features])
    for i, (label, per_feature) in enumerate(curves):
        for col, feature in enumerate(features, start=1):
            curve = per_feature[feature]
            for t in targets:
                fig.add_trace(go.Scatter(x=curve[feature], y=curve[t], mode="lines", name=t, legendgroup=t,
                                         showlegend=i == 0 and col == 1, hovertext=label, opacity=0.6,
                                         line={"color": colours.get(t), "width": 1.5}), row=1, col=col)
            fig.update_xaxes(title_text=feature, row=1, col=col)
    fig.update_yaxes(title_text="GW", row=1, col=1)
    fig.update_layout(title=title or None, width=900, height=400, margin={"l": 50, "r": 20, "t": 60, "b": 40},
                      legend={"orientation": "h", "y": -0.2})
    return fig

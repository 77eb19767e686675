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

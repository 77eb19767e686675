"""The predicted-vs-recorded figure (one panel per target), a small matplotlib PNG."""

from __future__ import annotations

import numpy as np
import pandas as pd

from windpipe.entities import TARGETS


def predicted_vs_recorded(y_true: pd.DataFrame | np.ndarray, y_pred: pd.DataFrame | np.ndarray,
                          targets: list[str] = TARGETS, title: str = "", max_points: int = 3000,
                          seed: int = 0):  # noqa: ANN201 - a matplotlib Figure
    """Scatter of predicted against recorded values per target, with the identity line."""
    from matplotlib.figure import Figure

    from windpipe.training.metrics import regression_metrics

    yt = np.asarray(y_true, dtype="float64").reshape(len(y_true), -1)
    yp = np.asarray(y_pred, dtype="float64").reshape(len(y_pred), -1)
    m = regression_metrics(yt, yp, targets)
    idx = np.arange(len(yt))
    if len(idx) > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_points, replace=False))
    fig = Figure(figsize=(4 * len(targets), 4), dpi=80)
    axes = fig.subplots(1, len(targets), squeeze=False)[0]
    for i, (ax, t) in enumerate(zip(axes, targets, strict=True)):
        ax.scatter(yt[idx, i], yp[idx, i], s=3, alpha=0.3)
        lo = float(min(yt[:, i].min(), yp[:, i].min()))
        hi = float(max(yt[:, i].max(), yp[:, i].max()))
        ax.plot([lo, hi], [lo, hi], color="black", lw=1)
        ax.set_xlabel(f"recorded {t}")
        ax.set_ylabel(f"predicted {t}")
        ax.set_title(f"{t}: r2 {m[f'r2_{t}']:.3f}, rmse {m[f'rmse_{t}']:.2f}")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig

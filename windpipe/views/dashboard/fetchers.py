"""What the dashboard's pages read besides the model: the data marts, the alias history, the step runs.

Each fetcher returns None (or says why) instead of raising when its source is absent or unreadable: a page
omits that part and keeps the rest.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from windpipe.errors import WindpipeError
from windpipe.tracking.client import mlflow_client
from windpipe.tracking.runs import StepStatus, latest_step_runs

if TYPE_CHECKING:
    import pandas as pd

    from windpipe.settings import Settings

log = logging.getLogger("windpipe.dashboard")


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


def pipeline_figure(settings: Settings) -> Any:
    """The steps and entities as a DAG coloured by each step's latest run, or (a str) why it cannot be drawn."""
    from windpipe.pipeline.figure import live_pipeline_figure

    try:
        return live_pipeline_figure(settings=settings)
    except WindpipeError as exc:  # no projects/ folder beside an installed package, or a broken interface
        return exc.problem


def pipeline_status(settings: Settings) -> list[StepStatus]:
    """The latest run of each step, newest first."""
    found = latest_step_runs(mlflow_client(settings), settings.experiment)
    return sorted(found.values(), key=lambda s: s.start_ms or 0, reverse=True)

"""The dashboard's prediction recorder: what a page showed goes to the data marts, off the request thread, once
per (model version, hour).

What the dashboard shows is deterministic per (model version, hour), so only hours of a version that are not
recorded yet are new: a request whose hours were all recorded (or are waiting to be) queues nothing, and one
that overlaps queues only its new hours. The marts' `dashboard_hours` key keeps it so across workers and
restarts (windpipe.marts.writers.record_dashboard); this process remembers the hours it recorded or queued
for the newest KNOWN_VERSIONS versions, so that a repeated view costs no database round trip. The queue is
bounded (settings.dashboard_queue batches waiting; more are dropped and counted, a request never waits),
and a waiting batch holds only its new hours: memory stays bounded under any burst of views.

Which view asked for which hours is not kept: nothing reads it, views are anonymous, and a table of views
would grow with every page load, which is what this bounds. Which batch holds an hour is in `dashboard_hours`.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from windpipe import names
from windpipe.names import FEATURES, TARGETS
from windpipe.settings import Settings
from windpipe.views.source import ProductionModel

log = logging.getLogger("windpipe.dashboard")
KNOWN_VERSIONS = 8  # the versions whose recorded hours this process remembers, newest kept
# a prediction logger gets (the scored frame with features, the predict_frame result, the model): the new hours
PredictionLogger = Callable[[pd.DataFrame, pd.DataFrame, ProductionModel], None]
_NONE = np.zeros(0, dtype="int64")


def marts_logger(settings: Settings) -> PredictionLogger | None:
    """Log dashboard predictions to the data marts (windpipe.marts) unless settings turn it off."""
    if not settings.log_dashboard_predictions:
        return None

    def write(scored: pd.DataFrame, frame: pd.DataFrame, pm: ProductionModel) -> None:
        from windpipe.marts.writers import record_dashboard

        preds = frame[[f"pred_{t}" for t in TARGETS]].to_numpy()
        quantile_columns = [f"pred_{q}" for q in names.QUANTILE_COLUMNS]
        quantiles = (frame[quantile_columns].to_numpy().reshape(len(frame), len(TARGETS), -1)
                     if all(c in frame.columns for c in quantile_columns) else None)
        record_dashboard(None, scored[FEATURES], preds, pd.Series(scored.index), model_name=pm.name,
                         model_version=pm.version, model_uri=names.version_uri(pm.name, pm.version),
                         settings=settings, quantiles=quantiles)

    return write


class Recorder:
    """Hands the new hours of what a page showed to `logger` on one background thread, through a bounded queue."""

    def __init__(self, settings: Settings, logger: PredictionLogger | None) -> None:
        self.settings = settings
        self.logger = logger
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dashboard-marts")
        self._lock = threading.Lock()
        self._waiting = 0
        # (model name, version) -> the hours (int64 ns, sorted) recorded or queued by this process
        self._known: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self.dropped = 0
        self.repeated = 0

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until the predictions queued for the marts are written (tests; a clean shutdown)."""
        self._pool.submit(lambda: None).result(timeout=timeout)

    def record(self, scored: pd.DataFrame, frame: pd.DataFrame, pm: ProductionModel) -> None:
        """Queue the hours of `scored` (indexed by hour) that `pm`'s version has not recorded; `frame` holds
        their predictions (windpipe.views.frames.predict_frame)."""
        if self.logger is None:
            return
        key = (pm.name, pm.version)
        hours = pd.DatetimeIndex(scored.index).asi8
        with self._lock:
            known = self._known.get(key, _NONE)
            new = ~np.isin(hours, known)
            if not new.any():
                self.repeated += 1
                return
            if self._waiting >= self.settings.dashboard_queue:
                self.dropped += 1
                log.warning("marts queue full (%d batches): dashboard predictions not recorded (%d dropped so far)",
                            self._waiting, self.dropped)
                return
            self._waiting += 1
            claimed = hours[new]
            self._known[key] = np.union1d(known, claimed)
            self._known.move_to_end(key)
            while len(self._known) > KNOWN_VERSIONS:
                self._known.popitem(last=False)
        part, part_frame = scored[new], frame[new]  # copies of the new hours only: what waits in the queue
        logger = self.logger

        def run() -> None:
            try:
                logger(part, part_frame, pm)
            except Exception:  # logging must never break the page
                log.warning("logging dashboard predictions failed", exc_info=True)
                with self._lock:  # not recorded: a later request may try again
                    if key in self._known:
                        self._known[key] = np.setdiff1d(self._known[key], claimed, assume_unique=True)
            finally:
                with self._lock:
                    self._waiting -= 1

        self._pool.submit(run)

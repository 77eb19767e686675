"""The dashboard's prediction recorder: what a page showed goes to the data marts off the request thread.

The queue is bounded (settings.dashboard_queue batches waiting; more are dropped and counted, a request never
waits), and a range already recorded for a model version is not a new batch.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from windpipe import names
from windpipe.names import FEATURES, TARGETS
from windpipe.settings import Settings
from windpipe.views.source import ProductionModel

log = logging.getLogger("windpipe.dashboard")
RECORDED_KEYS = 4096  # the (version, range) requests remembered as recorded, newest kept
# a prediction logger gets (the scored frame with features, the predict_frame result, the model)
PredictionLogger = Callable[[pd.DataFrame, pd.DataFrame, ProductionModel], None]


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


class Recorder:
    """Hands what a page showed to `logger` on one background thread, through a bounded queue."""

    def __init__(self, settings: Settings, logger: PredictionLogger | None) -> None:
        self.settings = settings
        self.logger = logger
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dashboard-marts")
        self._lock = threading.Lock()
        self._waiting = 0
        self._recorded: OrderedDict[tuple, None] = OrderedDict()
        self.dropped = 0
        self.repeated = 0

    def flush(self, timeout: float = 60.0) -> None:
        """Wait until the predictions queued for the marts are written (tests; a clean shutdown)."""
        self._pool.submit(lambda: None).result(timeout=timeout)

    def record(self, scored: pd.DataFrame, frame: pd.DataFrame, pm: ProductionModel, key: tuple) -> None:
        """Queue (scored, frame) of `pm` for the logger, unless `key` was recorded or the queue is full."""
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
        logger = self.logger

        def run() -> None:
            try:
                logger(scored, frame, pm)
            except Exception:  # logging must never break the page
                log.warning("logging dashboard predictions failed", exc_info=True)
                with self._lock:
                    self._recorded.pop(key, None)  # not recorded: a later request may try again
            finally:
                with self._lock:
                    self._waiting -= 1

        self._pool.submit(run)

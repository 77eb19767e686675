"""The production model the dashboard and the report show: `ModelSource` follows the `production` alias.

`status()` resolves the alias on every call (one cheap registry request) and `get(version)`
loads a version's model and training data once, through windpipe.models.loading, then serves
them from a small cache keyed by version.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd

from windpipe import names
from windpipe.errors import WindpipeError, first_line
from windpipe.models import loading
from windpipe.settings import Settings
from windpipe.tracking.client import mlflow_client, probe_health
from windpipe.views.frames import index_frame

NO_MODEL_FIX = ("run `windpipe pipeline run` (trains, evaluates and promotes), "
                "or `windpipe promote` a registered version")


@dataclass
class ProductionModel:
    """One registered version: its identity, tags, the loaded pyfunc model and its processed data."""

    name: str
    version: int
    run_id: str | None
    tags: dict[str, str]
    model: object
    data: pd.DataFrame  # processed entity indexed by utc_timestamp (UTC)
    source: str = ""
    run_metrics: dict[str, float] = field(default_factory=dict)  # of the run that logged it (backtest_*, ...)

    @property
    def instance_name(self) -> str:
        return self.tags.get(names.INSTANCE_TAG) or names.instance_name_for(self.name, self.version,
                                                                        self.tags.get(names.DATA_DATE_TAG))

    def facts(self) -> list[tuple[str, str]]:
        """What the model card and the report say about the version: (label, value), in order."""
        tags = self.tags
        return [
            ("registered model", f"{self.name}@{names.PRODUCTION}"),
            ("version", str(self.version)),
            ("instance name", self.instance_name),
            ("training run", self.run_id or "—"),
            ("data date", tags.get(names.DATA_DATE_TAG, "—")),
            ("promoted at", tags.get(names.PROMOTED_AT_TAG, "—")),
            ("promotion reason", tags.get(names.REASON_TAG, "—")),
            ("previous production", tags.get(names.PREVIOUS_TAG) or "—"),
        ]

    def metrics(self) -> dict[str, float]:
        """Holdout metrics from the version tags (`holdout_*`), numbers only."""
        out: dict[str, float] = {}
        for key, value in self.tags.items():
            if key.startswith(names.HOLDOUT_PREFIX):
                try:
                    out[key] = float(value)
                except ValueError:
                    continue
        return dict(sorted(out.items()))


@dataclass
class SourceStatus:
    """What a refresh found: state is `ok`, `no_model` or `down`."""

    state: str
    version: int | None = None
    message: str = ""
    fix: str = ""

    def to_dict(self) -> dict:
        return {"state": self.state, "version": self.version, "message": self.message, "fix": self.fix}


def load_version(settings: Settings, version: int) -> ProductionModel:
    """Load a registered version's pyfunc model and the processed entity of the run that made it."""
    client = mlflow_client(settings)
    ref = loading.resolve(names.version_uri(settings.model_name, version), settings, client)
    model = loading.load(ref, settings)
    df = loading.training_entity(ref, settings)
    metrics = dict(client.get_run(ref.run_id).data.metrics) if ref.run_id else {}
    return ProductionModel(settings.model_name, int(version), ref.run_id, dict(ref.tags or {}), model,
                           index_frame(df), ref.training_entity_uri or "", metrics)


class ModelSource:
    """Follows the production alias; loads each version once (`loads` counts real loads)."""

    def __init__(self, settings: Settings, loader: Callable[[Settings, int], ProductionModel] | None = None,
                 max_versions: int = 3, health_timeout: float = 2.0) -> None:
        self.settings = settings
        self.loader = loader or load_version
        self.max_versions = max_versions
        self.health_timeout = health_timeout
        self.loads = 0
        self._cache: OrderedDict[int, ProductionModel] = OrderedDict()
        self._lock = threading.Lock()
        self.last_version: int | None = None

    @property
    def tracking_uri(self) -> str:
        return self.settings.effective_tracking_uri

    def status(self) -> SourceStatus:
        """Resolve the alias now. Never raises: a down server or a missing model is a state."""
        uri = self.tracking_uri
        try:
            probe_health(uri, self.health_timeout)
        except WindpipeError as exc:
            return SourceStatus("down", self.last_version, exc.problem,
                                "run `windpipe up`; this page recovers on its own when the server is back")
        from mlflow.exceptions import MlflowException

        try:
            mv = loading.version_by_alias(mlflow_client(self.settings), self.settings.model_name)
        except MlflowException as exc:
            return SourceStatus("down", self.last_version, f"The model registry failed: {first_line(exc, 300)}",
                                "check `windpipe status`")
        except Exception as exc:  # connection errors surface as requests/urllib exceptions
            return SourceStatus("down", self.last_version, f"The model registry failed: {first_line(exc, 300)}",
                                "run `windpipe up`")
        if mv is None:
            return SourceStatus("no_model", None,
                                f"No model has the `{names.PRODUCTION}` alias in the registry "
                                f"({self.settings.model_name}) yet.", NO_MODEL_FIX)
        self.last_version = int(mv.version)
        return SourceStatus("ok", int(mv.version))

    def get(self, version: int) -> ProductionModel:
        """The loaded model and data of `version` (loaded on first use, then cached)."""
        version = int(version)
        with self._lock:
            if version in self._cache:
                self._cache.move_to_end(version)
                return self._cache[version]
            loaded = self.loader(self.settings, version)
            self.loads += 1
            self._cache[version] = loaded
            while len(self._cache) > self.max_versions:
                self._cache.popitem(last=False)
            return loaded

    def cached(self, version: int | None) -> ProductionModel | None:
        with self._lock:
            return self._cache.get(int(version)) if version is not None else None

    def production(self) -> ProductionModel:
        """The current production model, or a WindpipeError saying what to run."""
        st = self.status()
        if st.state != "ok" or st.version is None:
            raise WindpipeError(st.message, st.fix)
        return self.get(st.version)

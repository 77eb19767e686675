"""Data behind the dashboard and the report: the production model, its data, and pure frame functions.

`ModelSource` follows the `production` alias: `status()` resolves the alias on every call
(one cheap registry request) and `get(version)` loads a version's model and processed entity
once, then serves them from a small cache keyed by version.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from windpipe.entities import FEATURES, PROCESSED, TARGETS, TIMESTAMP
from windpipe.errors import WindpipeError
from windpipe.settings import Settings

ALIAS = "production"
ENTITY_TAG = "windpipe.entity.processed"
STEP_TAG = "windpipe.step"
NO_MODEL_FIX = ("run `windpipe pipeline run` (trains, evaluates and promotes), "
                "or `windpipe promote` a registered version")
METRIC_TAGS = ("holdout_rmse", "holdout_mae", "holdout_r2")


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

    @property
    def instance_name(self) -> str:
        return self.tags.get("windpipe.instance_name") or f"{self.name}_v{self.version}"

    def metrics(self) -> dict[str, float]:
        """Holdout metrics from the version tags (`holdout_*`), numbers only."""
        out: dict[str, float] = {}
        for key, value in self.tags.items():
            if key.startswith("holdout_"):
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


def server_answers(uri: str, timeout: float = 2.0) -> str | None:
    """None when an http(s) tracking server answers /health, else the reason it does not."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as resp:
            resp.read()
    except (urllib.error.URLError, OSError) as exc:
        return str(getattr(exc, "reason", exc))
    return None


def load_version(settings: Settings, version: int, tracking_uri: str | None = None) -> ProductionModel:
    """Load a registered version's pyfunc model and the processed entity of the run that made it."""
    import mlflow

    uri = tracking_uri or settings.effective_tracking_uri
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    mv = client.get_model_version(settings.model_name, str(version))
    tags = dict(mv.tags or {})
    run_id = mv.run_id or tags.get("windpipe.run_id")
    model = mlflow.pyfunc.load_model(f"models:/{settings.model_name}/{version}")
    entity_uri = None
    if run_id:
        entity_uri = client.get_run(run_id).data.tags.get(ENTITY_TAG)
    if not entity_uri:
        raise WindpipeError(
            f"Model version {version} of {settings.model_name} has no processed data: its run lacks the "
            f"{ENTITY_TAG} tag.", "promote a version trained by the windpipe steps (they tag their data)")
    from windpipe.entities import read_entity, resolve_uri

    df = read_entity(PROCESSED, resolve_uri(entity_uri))
    return ProductionModel(settings.model_name, int(version), run_id, tags, model, index_frame(df), entity_uri)


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
        reason = server_answers(uri, self.health_timeout)
        if reason is not None:
            return SourceStatus("down", self.last_version,
                                f"The MLflow tracking server at {uri} does not answer ({reason}).",
                                "run `windpipe up`; this page recovers on its own when the server is back")
        import mlflow
        from mlflow.exceptions import MlflowException

        from windpipe.registry import production_version

        try:
            mv = production_version(mlflow.MlflowClient(tracking_uri=uri), self.settings.model_name, ALIAS)
        except MlflowException as exc:
            return SourceStatus("down", self.last_version, f"The model registry failed: {str(exc)[:300]}",
                                "check `windpipe status`")
        except Exception as exc:  # connection errors surface as requests/urllib exceptions
            return SourceStatus("down", self.last_version, f"The model registry failed: {str(exc)[:300]}",
                                "run `windpipe up`")
        if mv is None:
            return SourceStatus("no_model", None,
                                f"No model has the `{ALIAS}` alias in the registry "
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


# --- pure frame functions -------------------------------------------------------------------------

def index_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The processed entity indexed by its UTC timestamp, sorted, features as float64."""
    out = df.copy()
    if TIMESTAMP in out.columns:
        out[TIMESTAMP] = pd.to_datetime(out[TIMESTAMP], utc=True)
        out = out.set_index(TIMESTAMP)
    elif out.index.tz is None:
        out.index = out.index.tz_localize("UTC")
    out = out.sort_index()
    out[FEATURES] = out[FEATURES].astype("float64")
    return out


def weekly_rolling(df: pd.DataFrame) -> pd.DataFrame:
    """7-day rolling mean of both targets, one row per day: columns year, day_of_year, solar_GW, wind_GW."""
    hourly = df[TARGETS].rolling("7D", min_periods=24).mean()
    daily = hourly.resample("1D").last().dropna(how="all")
    daily["year"] = daily.index.year
    daily["day_of_year"] = daily.index.dayofyear
    return daily


@dataclass
class DateRange:
    start: pd.Timestamp
    end: pd.Timestamp  # exclusive


def parse_range(start: str | None, end: str | None, df: pd.DataFrame) -> DateRange:
    """Check a user's date range (YYYY-MM-DD, end inclusive) against the data; WindpipeError says why not."""
    if not start or not end:
        raise WindpipeError("Enter a start and an end date (YYYY-MM-DD).")
    try:
        t0 = pd.Timestamp(str(start).strip()[:10]).tz_localize("UTC")
        t1 = pd.Timestamp(str(end).strip()[:10]).tz_localize("UTC") + pd.Timedelta(days=1)
    except (ValueError, TypeError):
        raise WindpipeError(f"{start!r} to {end!r} is not a date range.", "write dates as YYYY-MM-DD") from None
    if t1 <= t0:
        raise WindpipeError(f"The range is reversed: {str(end)[:10]} is before {str(start)[:10]}.",
                            "put the earlier date first")
    first, last = df.index.min(), df.index.max()
    if t1 <= first or t0 > last:
        raise WindpipeError(f"No data from {str(start)[:10]} to {str(end)[:10]}: the data covers "
                            f"{first:%Y-%m-%d} to {last:%Y-%m-%d}.", "choose dates inside that range")
    return DateRange(t0, t1)


def default_range(df: pd.DataFrame, days: int = 31) -> tuple[str, str]:
    """The last `days` full days of the data (31 days = 744 hourly rows)."""
    last = (df.index.max() + pd.Timedelta(hours=1)).normalize() - pd.Timedelta(days=1)  # last full day
    first = last - pd.Timedelta(days=days - 1)
    return f"{max(first, df.index.min()):%Y-%m-%d}", f"{last:%Y-%m-%d}"


def predict_frame(model: object, df: pd.DataFrame) -> pd.DataFrame:
    """Recorded targets beside the model's predictions (`pred_<target>`) for the rows of `df`."""
    pred = np.asarray(model.predict(df[FEATURES].astype("float64")), dtype="float64")
    if pred.ndim == 1:
        pred = pred.reshape(-1, len(TARGETS))
    out = df[TARGETS].copy()
    for i, target in enumerate(TARGETS):
        out[f"pred_{target}"] = pred[:, i]
    return out


def predict_range(pm: ProductionModel, rng: DateRange) -> pd.DataFrame:
    part = pm.data.loc[(pm.data.index >= rng.start) & (pm.data.index < rng.end)]
    return predict_frame(pm.model, part)


def errors(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """RMSE and MAE per target of a `predict_frame` result."""
    out: dict[str, dict[str, float]] = {}
    for target in TARGETS:
        diff = frame[f"pred_{target}"].to_numpy() - frame[target].to_numpy()
        out[target] = {"rmse": float(np.sqrt(np.mean(diff ** 2))), "mae": float(np.mean(np.abs(diff)))}
    return out


def whatif(model: object, values: dict[str, float | None]) -> dict[str, float]:
    """Predict both targets for one set of weather values; WindpipeError for missing/invalid ones."""
    missing = [f for f in FEATURES if values.get(f) is None or values.get(f) == ""]
    if missing:
        raise WindpipeError(f"Enter a value for {', '.join(missing)}.")
    try:
        row = pd.DataFrame([{f: float(values[f]) for f in FEATURES}], dtype="float64")
    except (TypeError, ValueError):
        raise WindpipeError("Weather values must be numbers.") from None
    if row["windspeed"].iloc[0] < 0 or (row[["rad_horizontal", "rad_diffuse"]] < 0).any(axis=None):
        raise WindpipeError("Wind speed and radiation cannot be negative.")
    pred = np.asarray(model.predict(row), dtype="float64").reshape(-1, len(TARGETS))[0]
    return {t: float(v) for t, v in zip(TARGETS, pred, strict=True)}


@dataclass
class StepStatus:
    step: str
    run_id: str
    run_name: str
    status: str
    start: pd.Timestamp | None
    duration_s: float | None
    entry_point: str = ""
    failure_reason: str = ""
    extra: dict = field(default_factory=dict)


def pipeline_status(settings: Settings, max_results: int = 500) -> list[StepStatus]:
    """The latest run of each step (runs grouped by the windpipe.step tag), newest first."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=settings.effective_tracking_uri)
    exp = client.get_experiment_by_name(settings.experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{STEP_TAG}` != ''",
                              order_by=["attributes.start_time DESC"], max_results=max_results)
    latest: dict[str, StepStatus] = {}
    for run in runs:
        step = run.data.tags.get(STEP_TAG)
        if not step or step in latest:
            continue
        start = pd.Timestamp(run.info.start_time, unit="ms", tz="UTC") if run.info.start_time else None
        dur = ((run.info.end_time - run.info.start_time) / 1000.0
               if run.info.end_time and run.info.start_time else None)
        latest[step] = StepStatus(step, run.info.run_id, run.info.run_name or "", run.info.status, start, dur,
                                  run.data.tags.get("windpipe.entry_point", ""),
                                  run.data.tags.get("windpipe.failure_reason", ""))
    return list(latest.values())


def data_summary(df: pd.DataFrame) -> dict:
    """Rows, time span and per-column mean/min/max of a processed frame."""
    cols = TARGETS + FEATURES
    stats = {c: {"mean": float(df[c].mean()), "min": float(df[c].min()), "max": float(df[c].max())} for c in cols}
    return {"rows": int(len(df)), "first": df.index.min(), "last": df.index.max(), "columns": stats}


def repo_path(*parts: str) -> Path:
    from windpipe.settings import repo_root

    return repo_root().joinpath(*parts)

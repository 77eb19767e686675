"""The one way to a model: resolve a URI to a pinned version, cache its files, load it, predict.

Every consumer (predict, the dashboard, the report, the promotion gate, `evaluate`, serving)
goes through here, so each gets the same guarantees:

- `resolve("models:/wind_solar@production")` pins an alias to a version (`models:/wind_solar/3`)
  and finds the run that logged it and the entity it was trained on;
- a registered version's files are downloaded once into `<home>/cache/<server>/<name>/v<version>`,
  a finished logged model's (models:/m-<id>) into `<home>/cache/<server>/m-<id>` (renamed into
  place: no process sees half a model), and its signature is readable before the model is loaded
  (`file_signature_columns`);
- a model is loaded once per process and URI, with a clear error when it cannot be;
- `predict` returns a (rows, targets) float64 array, checked.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from windpipe import names
from windpipe.errors import WindpipeError, first_line
from windpipe.models.skops_types import import_skops
from windpipe.names import FEATURES, TARGETS
from windpipe.settings import Settings, get_settings
from windpipe.tracking.client import mlflow_client

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.pyfunc import PyFuncModel

log = logging.getLogger("windpipe.models")
# rows a model is asked to score at once: the lr family's splines make 1,035 float64 columns a row (8 KB; 4M rows
# at once needed 30 GiB), so a big batch goes in parts of ~165 MB of features; a plain model loses nothing by it
SCORE_ROWS = 20_000
_URI = re.compile(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))")
_loaded: dict[str, Any] = {}


@dataclass
class ModelRef:
    """Which model: what was asked for, what is loaded, and where its training data lives."""

    uri: str  # what was asked for, e.g. models:/wind_solar@production
    load_uri: str  # what is loaded: a pinned version when known (models:/wind_solar/3)
    name: str | None = None
    version: str | None = None
    run_id: str | None = None
    instance_name: str | None = None
    training_entity_uri: str | None = None
    tracking_uri: str = ""  # versions are numbered per server: caches are kept per server
    tags: dict[str, str] | None = None  # the registered version's tags
    logged_model_id: str | None = None  # models:/m-<id> of a finished (READY) logged model: its files never change

    @property
    def cache_key(self) -> str:
        """<server>/<name>/v<version> (or run-<id>): a folder name below <home>/cache."""
        server = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.tracking_uri.split("://")[-1]).strip("_") or "local"
        if self.name and self.version:
            return f"{server}/{self.name}/v{self.version}"
        if self.logged_model_id:
            return f"{server}/{self.logged_model_id}"
        return f"{server}/" + (f"run-{self.run_id}" if self.run_id else re.sub(r"[^A-Za-z0-9_.-]", "_", self.load_uri))

    @property
    def label(self) -> str:
        """How messages name it: the instance name, else name v<version>, else the URI."""
        if self.instance_name:
            return self.instance_name
        return f"{self.name} v{self.version}" if self.name and self.version else self.load_uri


def promote_hint(name: str) -> str:
    return (f"train a model (`windpipe pipeline run` or `mlflow run projects/lr`), then give a version the alias: "
            f"`windpipe promote`; or pass --model-uri {names.version_uri(name, '<version>')}")


def is_not_found(exc: Exception) -> bool:
    """True for the MLflow errors that mean "no such model, version, alias or run"."""
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


def version_by_alias(client: Any, name: str, alias: str = names.PRODUCTION) -> Any:
    """The ModelVersion `name@alias` points at, or None (no such model or alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if is_not_found(exc):
            return None
        raise


def resolve(model_uri: str | None = None, settings: Settings | None = None, client: Any = None) -> ModelRef:
    """Pin `model_uri` (default models:/<model_name>@production) to a version and find its training entity.

    Accepts models:/<name>@<alias>, models:/<name>/<version>, models:/m-<id> and runs:/<id>/<path>.
    """
    from mlflow.exceptions import MlflowException

    settings = settings or get_settings()
    uri = model_uri or names.alias_uri(settings.model_name)
    client = client or mlflow_client(settings)
    ref = ModelRef(uri=uri, load_uri=uri, tracking_uri=settings.effective_tracking_uri)
    m = _URI.fullmatch(uri)
    try:
        if m:
            name, alias, version = m.groups()
            try:
                mv = version_by_alias(client, name, alias) if alias else client.get_model_version(name, version)
            except MlflowException as exc:
                if not is_not_found(exc):
                    raise
                mv = None
            if mv is None:
                what = f"alias '{alias}'" if alias else f"version {version}"
                raise WindpipeError(f"No version of the registered model '{name}' has the {what} "
                                    f"(tracking server {ref.tracking_uri}).", promote_hint(name))
            ref.name, ref.version, ref.run_id = mv.name, str(mv.version), mv.run_id
            ref.load_uri = names.version_uri(mv.name, mv.version)
            ref.tags = dict(mv.tags or {})
            ref.instance_name = ref.tags.get(names.INSTANCE_TAG)
        elif uri.startswith("models:/m-"):
            logged = client.get_logged_model(uri[len("models:/"):].split("/")[0])
            ref.run_id = logged.source_run_id
            ref.name = logged.name
            if str(logged.status) == "READY":  # finalized: cached like a version (a pending one may still change)
                ref.logged_model_id = logged.model_id
        elif uri.startswith("runs:/"):
            ref.run_id = uri[len("runs:/"):].split("/")[0]
        if ref.run_id:
            ref.training_entity_uri = names.read_uri(client.get_run(ref.run_id).data.tags)
    except WindpipeError:
        raise
    except MlflowException as exc:
        raise WindpipeError(f"Cannot resolve the model {uri} ({first_line(exc)}).",
                            promote_hint(settings.model_name)) from None
    return ref


def cannot_load(ref: ModelRef, exc: Exception) -> WindpipeError:
    return WindpipeError(f"Cannot load the model {ref.load_uri} ({first_line(exc)}).",
                         "check the model URI (models:/<name>/<version>, models:/<name>@<alias>, models:/m-<id>) "
                         "and that the tracking server and its artifact store run (`windpipe status`)")


def model_files(ref: ModelRef, settings: Settings | None = None) -> str | None:
    """A registered version's (or finished logged model's) folder, downloaded once into
    <home>/cache/<cache key>/model.

    None for any other URI (not immutable: MLflow fetches it on load).
    """
    import mlflow

    if not (ref.load_uri.startswith("models:/") and (ref.name and ref.version or ref.logged_model_id)):
        return None
    target = (settings or get_settings()).paths.cache_dir(*ref.cache_key.split("/"), "model")
    if (target / "MLmodel").exists():
        return str(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            dst = Path(tmp) / "download"
            dst.mkdir()
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.load_uri, dst_path=str(dst),
                                                             tracking_uri=ref.tracking_uri or None))
            if not (local / "MLmodel").exists():
                return None  # an unexpected layout: let MLflow load it directly
            shutil.rmtree(target, ignore_errors=True)
            try:
                local.rename(target)  # a rename: other processes see no half-downloaded model
            except OSError:
                if not (target / "MLmodel").exists():  # (another process won the race otherwise)
                    raise
    except Exception as exc:  # MlflowException, OSError
        raise cannot_load(ref, exc) from None
    return str(target)


def requirement_mismatches(model_dir: Path | str) -> list[str]:
    """The model's pinned requirements that this environment does not satisfy ("name==1.2 (installed 1.3)").

    MLflow's own check on load costs ~1.2 s (it maps every installed module to its package);
    reading the few pins in the model's requirements.txt takes milliseconds.
    """
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import InvalidRequirement, Requirement

    path = Path(model_dir) / "requirements.txt"
    lines = path.read_text().splitlines() if path.is_file() else []
    out = []
    for line in (x.strip() for x in lines):
        if not line or line.startswith(("#", "-")):
            continue
        try:
            req = Requirement(line)
            installed = version(req.name)
        except InvalidRequirement:
            continue
        except PackageNotFoundError:
            out.append(f"{line} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            out.append(f"{line} (installed {installed})")
    return out


def load(ref: ModelRef, settings: Settings | None = None) -> PyFuncModel:
    """The pyfunc model of `ref`, loaded once per process and pinned URI (files cached per version).

    Requirement mismatches are logged as a warning (`windpipe.models` logger), as MLflow would.
    """
    import mlflow

    key = _key(ref)
    if key not in _loaded:
        local = model_files(ref, settings)
        if local is None or any(Path(local).glob("*.skops")):
            import_skops()  # before MLflow imports skops: its type lists from the cache
        try:
            _loaded[key] = mlflow.pyfunc.load_model(local or ref.load_uri, suppress_warnings=local is not None)
        except Exception as exc:  # MlflowException, OSError, pickle errors
            raise cannot_load(ref, exc) from None
        if local and (mismatches := requirement_mismatches(local)):
            log.warning("The model %s was saved with requirements this environment does not meet: %s. "
                        "Predictions may differ; install them or score in the model's own environment "
                        "(`mlflow run projects/predict`).", ref.load_uri, "; ".join(mismatches))
    return _loaded[key]


def _key(ref: ModelRef) -> str:
    return f"{ref.tracking_uri} {ref.load_uri}"


def unload(ref: ModelRef) -> None:
    """Forget the loaded model of `ref` (a server that followed an alias to another version); its files stay cached."""
    _loaded.pop(_key(ref), None)


def load_uri(model_uri: str | None = None, settings: Settings | None = None) -> tuple[PyFuncModel, ModelRef]:
    """`resolve` then `load`: the model and what it is."""
    ref = resolve(model_uri, settings)
    return load(ref, settings), ref


def signature_columns(model: PyFuncModel | None) -> dict[str, str]:
    """Input column -> MLflow type name, in order: from the signature's names, else the model's recorded
    input columns (Keras signatures are tensors), else FEATURES as double."""
    if model is None:
        return _schema_columns(None, None)
    return _schema_columns(model.metadata.get_input_schema(), model.metadata.metadata)


def file_signature_columns(model_dir: str | Path, ref: ModelRef | None = None) -> dict[str, str]:
    """`signature_columns` from a model folder's MLmodel file: known before (and without) loading the model."""
    from mlflow.models import Model

    try:
        meta = Model.load(str(Path(model_dir) / "MLmodel"))
        schema = meta.get_input_schema()
    except Exception as exc:  # a damaged MLmodel file
        raise cannot_load(ref or ModelRef(uri=str(model_dir), load_uri=str(model_dir)), exc) from None
    return _schema_columns(schema, meta.metadata)


def _schema_columns(schema: Any, metadata: dict | None) -> dict[str, str]:
    if schema is not None and schema.has_input_names():
        return {spec.name: getattr(spec.type, "name", str(spec.type)) for spec in schema.inputs}
    recorded = (metadata or {}).get(names.INPUT_COLUMNS_META)
    return {c: "double" for c in (recorded or FEATURES)}


def predict(model: PyFuncModel, features: pd.DataFrame, timestamps: Any = None,
            repeated_times: bool = False) -> np.ndarray:
    """The point forecast (rows, 2) in TARGETS order, float64 (`predict_quantiles`, without the quantiles)."""
    return predict_quantiles(model, features, timestamps, repeated_times)[0]


def predict_quantiles(model: PyFuncModel, features: pd.DataFrame, timestamps: Any = None,
                      repeated_times: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions from a pyfunc model (or anything with `predict`): the point forecast (rows, 2) in TARGETS order,
    float64, and the quantiles (rows, 2, len(QUANTILES)) of a model with intervals (None for one without).

    `features` holds the weather columns as float64 (scoring.validate makes it so); `timestamps` (or a
    utc_timestamp column, or the DatetimeIndex of `features`) the UTC time of each row. A model logged since
    the natural inputs takes them as they are (windpipe.training.inputs derives the rest inside it); a model
    logged before that follows the trend gets its hour/day-of-year cycles and trend derived here with the same
    formula, so old versions keep scoring. For natural and scikit-learn models the model's own predict is
    called: the input was checked against the signature already, and MLflow's second schema enforcement costs
    more than the linear model itself. `repeated_times`: the rows may share a time (a what-if sweep of one
    hour); a natural model refuses repeats otherwise (within each SCORE_ROWS rows it is given at once: across
    them, windpipe.scoring.validate checks). Memory stays bounded: the model scores SCORE_ROWS rows at a time.
    """
    from windpipe.training.features import model_input

    metadata = getattr(model, "metadata", None)
    columns = list(signature_columns(model)) if metadata is not None else [c for c in features.columns
                                                                          if c != names.TIMESTAMP]
    X = model_input(features, columns, timestamps)
    raw = _raw_model(model, natural=names.TIMESTAMP in columns)
    if raw is not None and repeated_times and names.TIMESTAMP in columns:
        from windpipe.training.inputs import with_repeated_times

        raw = with_repeated_times(raw)
    tensor = metadata is not None and (schema := metadata.get_input_schema()) is not None and schema.is_tensor_spec()
    call = raw.predict if raw is not None and hasattr(raw, "predict") else model.predict
    from windpipe.training.inputs import split_output

    parts, quantile_parts = [], []
    for start in range(0, max(len(X), 1), SCORE_ROWS):  # (an empty frame still asks the model once)
        part = X.iloc[start:start + SCORE_ROWS]
        try:
            out = call(part.to_numpy(dtype="float64") if tensor and call is model.predict else part)
        except MemoryError as exc:  # (not the model's fault: the rows' features did not fit)
            raise WindpipeError(f"The model ran out of memory scoring {len(part):,} rows ({first_line(exc)}).",
                                "free memory on this machine (other programs, parallel jobs), then retry") from None
        except Exception as exc:  # a model that cannot predict this input
            raise WindpipeError(f"The model cannot predict these rows ({first_line(exc)}).",
                                f"use a model that takes {', '.join(columns)} and predicts {', '.join(TARGETS)}"
                                ) from None
        out, quantiles = split_output(out, TARGETS)
        if out.ndim == 1 and len(part) and out.size == len(part) * len(TARGETS):
            out = out.reshape(len(part), len(TARGETS))
        if out.shape != (len(part), len(TARGETS)):
            raise WindpipeError(f"The model returned predictions of shape {out.shape}, expected "
                                f"({len(part)}, {len(TARGETS)}) for {', '.join(TARGETS)}.",
                                "use a model trained on the processed entity's two targets")
        parts.append(out)
        quantile_parts.append(quantiles)
    if any(q is None for q in quantile_parts):
        return (parts[0] if len(parts) == 1 else np.concatenate(parts)), None
    return ((parts[0], quantile_parts[0]) if len(parts) == 1
            else (np.concatenate(parts), np.concatenate(quantile_parts)))


def predictor(model: PyFuncModel) -> Callable[[pd.DataFrame, Any], pd.DataFrame]:
    """`predict` for rows that may share a time (a what-if sweep of one hour), as a frame with the targets and
    their quantiles (`quantile_frame`): the callable windpipe.training.physics.response_curves sweeps (the
    what-if page and the promotion gate, which checks the quantiles' curves too)."""

    def run(rows: pd.DataFrame, timestamps: Any) -> pd.DataFrame:
        point, quantiles = predict_quantiles(model, rows, timestamps, repeated_times=True)
        return quantile_frame(point, quantiles)

    return run


def quantile_frame(point: np.ndarray, quantiles: np.ndarray | None, columns: list[str] = TARGETS) -> pd.DataFrame:
    """The point forecast (rows, targets) under `columns` and, when given, the quantiles (rows, targets,
    QUANTILES) as solar_GW_p10, ... (names.quantile_column)."""
    import pandas as pd

    frame = pd.DataFrame(point, columns=columns)
    if quantiles is not None:  # (QUANTILE_COLUMNS: target by target, as the quantiles' axes are)
        frame[names.QUANTILE_COLUMNS] = quantiles.reshape(len(point), -1)
    return frame


def _raw_model(model: Any, natural: bool) -> Any:
    """The model's own object when windpipe may call it directly: a scikit-learn model, or (natural inputs)
    the KerasForecaster of a Keras family's python_function flavor; None otherwise."""
    flavors = getattr(getattr(model, "metadata", None), "flavors", None) or {}
    if "sklearn" not in flavors and not natural:
        return None
    try:
        return model.get_raw_model()
    except Exception:
        return None


def example_rows() -> pd.DataFrame:
    """Two hours of natural inputs (2016-12-01 13:00 and 23:00 UTC): a model's first check (`windpipe serve`) and
    the curl example it prints."""
    import pandas as pd

    return pd.DataFrame({names.TIMESTAMP: pd.to_datetime(["2016-12-01T13:00:00Z", "2016-12-01T23:00:00Z"]),
                         "windspeed": [5.2, 8.9], "temperature": [12.0, 4.5], "rad_horizontal": [310.0, 0.0],
                         "rad_diffuse": [120.0, 0.0]})


def training_entity(ref: ModelRef, settings: Settings | None = None) -> pd.DataFrame:
    """The processed entity the model was trained on, downloaded once into <home>/cache/<cache key>/."""
    from windpipe.entities.schema import PROCESSED
    from windpipe.entities.store import read_entity, resolve_uri

    if not ref.training_entity_uri:
        raise WindpipeError(f"The model {ref.label} has no training data on record: its run lacks the "
                            f"{names.TRAINING_DATA_TAG} tag.",
                            "use a model trained by the windpipe steps (they record the entity they read)")
    settings = settings or get_settings()
    target = settings.paths.cache_dir(*ref.cache_key.split("/"), PROCESSED.filename)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            local = resolve_uri(ref.training_entity_uri, Path(tmp), ref.tracking_uri or None)
            if local.is_dir():
                local = local / PROCESSED.filename
            if not local.exists():
                raise WindpipeError(f"The training entity {ref.training_entity_uri} was not found.",
                                    "check the model run's entity tag")
            staged = Path(tmp) / "staged.parquet"
            shutil.copyfile(local, staged)
            staged.replace(target)  # atomic: a reader never sees half a file
    return read_entity(PROCESSED, target)

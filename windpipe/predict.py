"""Batch prediction: a parquet of features in, a parquet of predictions out, recorded in the marts.

Reads:  IN.parquet with the model signature's columns (windspeed, temperature, rad_horizontal,
        rad_diffuse; numbers), optionally utc_timestamp; other columns are ignored and reported.
Writes: OUT.parquet with row_no, utc_timestamp (when the input has it), solar_GW_pred,
        wind_GW_pred, model_name, model_version, batch_id; and one batch in the data marts
        (windpipe.marts), with its drift against the model's training entity (windpipe.drift).

Pure-ish pieces (`validate_input`, `score`, `output_frame`) are reused by the dashboard;
`run_batch` strings them together; the MLflow run lives in windpipe.steps.predict.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from windpipe.entities import FEATURES, TARGETS, TIMESTAMP
from windpipe.errors import WindpipeError
from windpipe.fileio import atomic_path
from windpipe.marts import PRED_COLUMNS
from windpipe.settings import Settings, get_settings

log = logging.getLogger("windpipe.predict")
ENTITY_TAG = "windpipe.entity.processed"
INSTANCE_TAG = "windpipe.instance_name"
OUTPUT_COLUMNS = ["row_no", TIMESTAMP, *PRED_COLUMNS, "model_name", "model_version", "batch_id"]
_NUMERIC = {"double", "float", "long", "integer"}


@dataclass
class ModelRef:
    """Which model scores a batch, and where its training data lives."""

    uri: str  # what was asked for, e.g. models:/wind_solar@production
    load_uri: str  # what is loaded: a pinned version when known (models:/wind_solar/3)
    name: str | None = None
    version: str | None = None
    run_id: str | None = None
    instance_name: str | None = None
    training_entity_uri: str | None = None
    tracking_uri: str = ""  # versions are numbered per server: caches are kept per server

    @property
    def cache_key(self) -> str:
        """<server>/<name>/v<version> (or run-<id>): a folder name below <home>/cache."""
        server = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.tracking_uri.split("://")[-1]).strip("_") or "local"
        if self.name and self.version:
            return f"{server}/{self.name}/v{self.version}"
        return f"{server}/" + (f"run-{self.run_id}" if self.run_id else re.sub(r"[^A-Za-z0-9_.-]", "_", self.load_uri))


@dataclass
class ValidInput:
    """The part of an input file the model scores."""

    features: pd.DataFrame  # FEATURES order, float64, no NaN
    timestamps: pd.Series | None
    row_numbers: np.ndarray  # input row number (from 0) of each scored row
    extra_columns: list[str] = field(default_factory=list)
    dropped_rows: list[int] = field(default_factory=list)


@dataclass
class BatchResult:
    """What `run_batch` did."""

    output: Path
    batch_id: int | None
    rows: int
    rows_dropped: int
    extra_columns: list[str]
    model: ModelRef
    drift: pd.DataFrame | None
    seconds: dict[str, float]

    @property
    def drift_status(self) -> str:
        from windpipe.drift import overall_status

        return "unchecked" if self.drift is None else overall_status(self.drift)


# ---------------------------------------------------------------- the model

def _promote_hint(name: str) -> str:
    return (f"train a model (`windpipe pipeline` or `mlflow run projects/lr`), then give a version the alias: "
            f"`windpipe promote` or, in Python, mlflow.MlflowClient().set_registered_model_alias("
            f"'{name}', 'production', <version>); or pass --model-uri models:/{name}/<version>")


def resolve_model(model_uri: str | None = None, settings: Settings | None = None) -> ModelRef:
    """Pin `model_uri` (default models:/<model_name>@production) to a version and find its training entity."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from windpipe.registry import is_not_found, production_version

    settings = settings or get_settings()
    uri = model_uri or f"models:/{settings.model_name}@production"
    client = mlflow.MlflowClient()
    ref = ModelRef(uri=uri, load_uri=uri, tracking_uri=mlflow.get_tracking_uri())
    m = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", uri)
    try:
        if m:
            name, alias, version = m.groups()
            try:
                mv = (production_version(client, name, alias) if alias
                      else client.get_model_version(name, version))
            except MlflowException as exc:
                if not is_not_found(exc):
                    raise
                mv = None
            if mv is None:
                what = f"alias '{alias}'" if alias else f"version {version}"
                raise WindpipeError(f"No version of the registered model '{name}' has the {what} "
                                    f"(tracking server {mlflow.get_tracking_uri()}).", _promote_hint(name))
            ref.name, ref.version, ref.run_id = mv.name, str(mv.version), mv.run_id
            ref.load_uri = f"models:/{mv.name}/{mv.version}"
            ref.instance_name = (mv.tags or {}).get(INSTANCE_TAG)
        elif uri.startswith("models:/m-"):
            logged = client.get_logged_model(uri[len("models:/"):].split("/")[0])
            ref.run_id = logged.source_run_id
            ref.name = logged.name
        elif uri.startswith("runs:/"):
            ref.run_id = uri[len("runs:/"):].split("/")[0]
        if ref.run_id:
            ref.training_entity_uri = client.get_run(ref.run_id).data.tags.get(ENTITY_TAG)
    except WindpipeError:
        raise
    except MlflowException as exc:
        raise WindpipeError(f"Cannot resolve the model {uri} ({str(exc).splitlines()[0][:200]}).",
                            _promote_hint(settings.model_name)) from None
    return ref


_models: dict[str, Any] = {}


def _cannot_load(ref: ModelRef, exc: Exception) -> WindpipeError:
    return WindpipeError(f"Cannot load the model {ref.load_uri} ({str(exc).splitlines()[0][:200]}).",
                         "check --model-uri (models:/<name>/<version>, models:/<name>@<alias>, models:/m-<id>) "
                         "and that the tracking server is the right one")


def model_files(ref: ModelRef, settings: Settings | None = None) -> str | None:
    """A registered version's folder, downloaded once into <home>/cache/<server>/<name>/v<version>/model.

    None for a URI that is not a pinned registered version (not immutable: MLflow fetches it on load).
    """
    import shutil
    import tempfile

    import mlflow

    if not (ref.name and ref.version and ref.load_uri.startswith("models:/")):
        return None
    target = Path((settings or get_settings()).home) / "cache" / ref.cache_key / "model"
    if (target / "MLmodel").exists():
        return str(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            dst = Path(tmp) / "download"
            dst.mkdir()
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.load_uri, dst_path=str(dst)))
            if not (local / "MLmodel").exists():
                return None  # an unexpected layout: let MLflow load it directly
            shutil.rmtree(target, ignore_errors=True)
            try:
                local.rename(target)  # a rename: other processes see no half-downloaded model
            except OSError:
                if not (target / "MLmodel").exists():  # (another process won the race otherwise)
                    raise
    except Exception as exc:  # MlflowException, OSError
        raise _cannot_load(ref, exc) from None
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


def load_model(ref: ModelRef, settings: Settings | None = None) -> Any:  # noqa: ANN401 - an mlflow PyFuncModel
    """Load (once per process and pinned URI; files cached per version in <home>/cache) the pyfunc model.

    Requirement mismatches are logged as a warning (`windpipe.predict` logger), as MLflow would.
    """
    import mlflow

    key = f"{ref.tracking_uri} {ref.load_uri}"
    if key not in _models:
        local = model_files(ref, settings)
        try:
            _models[key] = mlflow.pyfunc.load_model(local or ref.load_uri, suppress_warnings=local is not None)
        except Exception as exc:  # MlflowException, OSError, pickle errors
            raise _cannot_load(ref, exc) from None
        if local and (mismatches := requirement_mismatches(local)):
            log.warning("The model %s was saved with requirements this environment does not meet: %s. "
                        "Predictions may differ; install them or score in the model's own environment "
                        "(`mlflow run projects/predict`).", ref.load_uri, "; ".join(mismatches))
    return _models[key]


def signature_columns(model: Any) -> dict[str, str]:  # noqa: ANN401
    """Input column -> MLflow type name from the model signature (FEATURES as double without one)."""
    return _schema_columns(model.metadata.get_input_schema() if model is not None else None)


def file_signature_columns(model_dir: str | Path, ref: ModelRef | None = None) -> dict[str, str]:
    """`signature_columns` from a model folder's MLmodel file: known before (and without) loading the model."""
    from mlflow.models import Model

    try:
        schema = Model.load(str(Path(model_dir) / "MLmodel")).get_input_schema()
    except Exception as exc:  # a damaged MLmodel file
        raise _cannot_load(ref or ModelRef(uri=str(model_dir), load_uri=str(model_dir)), exc) from None
    return _schema_columns(schema)


def _schema_columns(schema: Any) -> dict[str, str]:  # noqa: ANN401 - an mlflow Schema or None
    if schema is None or not schema.has_input_names():
        return {f: "double" for f in FEATURES}
    return {spec.name: getattr(spec.type, "name", str(spec.type)) for spec in schema.inputs}


# ---------------------------------------------------------------- the input

def read_input(path: Path | str) -> pd.DataFrame:
    """Read the input parquet, with a clear error for a missing, empty or unreadable file."""
    path = Path(path)
    if not path.exists():
        raise WindpipeError(f"Input file {path} does not exist.", "pass an existing parquet file with --input")
    if path.is_dir():
        raise WindpipeError(f"Input {path} is a folder, not a file.", "pass a parquet file with --input")
    if path.stat().st_size == 0:
        raise WindpipeError(f"Input file {path} is empty (0 bytes).",
                            "write the features into it as parquet (pandas: df.to_parquet(path))")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a bad file
        raise WindpipeError(f"Cannot read {path} as parquet ({str(exc).splitlines()[0][:200]}).",
                            "pass a parquet file (pandas: df.to_parquet(path))") from None


def _row_list(rows: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return shown + (", ..." if len(rows) > limit else "")


def validate_input(df: pd.DataFrame, columns: dict[str, str] | None = None, drop_invalid: bool = False,
                   where: str = "the input") -> ValidInput:
    """Check `df` against the signature `columns` (name -> MLflow type); return what the model scores.

    Refuses: no rows, missing columns, non-numeric columns, rows with NaN/inf (unless `drop_invalid`).
    Row numbers count from 0 in the input's order.
    """
    columns = columns or {f: "double" for f in FEATURES}
    if df.empty:
        raise WindpipeError(f"{where} has no rows.", "pass a file with at least one row of features")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise WindpipeError(
            f"{where} lacks column(s) {', '.join(missing)} that the model's signature requires; "
            f"it has {', '.join(map(str, df.columns))}.",
            "add the column(s); the model reads " + ", ".join(f"{c} ({t})" for c, t in columns.items()))
    for col, kind in columns.items():
        s = df[col]
        if kind in _NUMERIC and (not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
            bad = pd.to_numeric(s, errors="coerce").isna() & s.notna()
            example = f" (e.g. {s[bad].iloc[0]!r} in row {int(np.flatnonzero(bad.to_numpy())[0])})" if bad.any() else ""
            raise WindpipeError(f"Column {col!r} of {where} has dtype {s.dtype}{example}; the model wants {kind} "
                                "numbers.", f"convert {col} to numbers (pandas: pd.to_numeric(df[{col!r}]))")
    extra = [str(c) for c in df.columns if c not in columns and c != TIMESTAMP]
    feats = pd.DataFrame({c: df[c].to_numpy(dtype="float64") for c in columns})
    values = feats.to_numpy()
    bad_rows = np.flatnonzero(~np.isfinite(values).all(axis=1))
    row_numbers = np.arange(len(df))
    if len(bad_rows):
        if not drop_invalid:
            raise WindpipeError(
                f"{where} has {len(bad_rows)} row(s) with missing (NaN) or infinite values in the model's columns "
                f"(rows, counted from 0: {_row_list(bad_rows)}).",
                "fill or remove those rows, or pass --drop-invalid to skip them")
        keep = np.ones(len(df), dtype=bool)
        keep[bad_rows] = False
        feats = feats[keep].reset_index(drop=True)
        row_numbers = row_numbers[keep]
        if feats.empty:
            raise WindpipeError(f"Every row of {where} has missing values; nothing is left to score.",
                                "fill the missing values")
    timestamps = None
    if TIMESTAMP in df.columns:
        ts = df[TIMESTAMP]
        try:
            ts = pd.to_datetime(ts, utc=True) if not isinstance(ts.dtype, pd.DatetimeTZDtype) else ts
        except (ValueError, TypeError) as exc:
            raise WindpipeError(f"Column {TIMESTAMP} of {where} is not a timestamp ({exc}).",
                                f"write {TIMESTAMP} as UTC datetimes, or leave it out") from None
        timestamps = ts.iloc[row_numbers].reset_index(drop=True) if len(bad_rows) else ts.reset_index(drop=True)
    return ValidInput(feats, timestamps, row_numbers, extra, bad_rows.tolist() if drop_invalid else [])


# ---------------------------------------------------------------- scoring and output

def score(model: Any, features: pd.DataFrame) -> np.ndarray:  # noqa: ANN401
    """Predictions (n, 2) in TARGETS order from the pyfunc model.

    `features` must come from `validate_input` (signature columns, float64). For scikit-learn
    models the estimator's own predict is called: the input was checked against the signature
    already, and MLflow's second schema enforcement costs more than the linear model itself.
    """
    raw = None
    if "sklearn" in (model.metadata.flavors or {}):
        try:
            raw = model.get_raw_model()
        except Exception:  # noqa: BLE001 - any wrapper without a raw model: use pyfunc
            raw = None
    pred = raw.predict(features) if raw is not None and hasattr(raw, "predict") else model.predict(features)
    pred = np.asarray(pred.to_numpy() if hasattr(pred, "to_numpy") else pred, dtype="float64")
    if pred.shape != (len(features), len(TARGETS)):
        raise WindpipeError(f"The model returned predictions of shape {pred.shape}, expected "
                            f"({len(features)}, {len(TARGETS)}) for {', '.join(TARGETS)}.",
                            "use a model trained on the processed entity's two targets")
    return pred


def output_frame(valid: ValidInput, pred: np.ndarray, ref: ModelRef, batch_id: int | None = None) -> pd.DataFrame:
    """The output table: row_no, utc_timestamp (if known), predictions, model name/version, batch_id."""
    n = len(pred)
    out = {"row_no": valid.row_numbers.astype("int64")}
    if valid.timestamps is not None:  # (not .to_numpy(): that makes a Timestamp object per row)
        out[TIMESTAMP] = pd.to_datetime(valid.timestamps, utc=True).array
    for i, col in enumerate(PRED_COLUMNS):
        out[col] = pred[:, i]
    out["model_name"] = pd.Categorical.from_codes(np.zeros(n, dtype="int8"), [ref.name or ""])
    out["model_version"] = pd.Categorical.from_codes(np.zeros(n, dtype="int8"), [ref.version or ""])
    out["batch_id"] = pd.arrays.IntegerArray(np.full(n, batch_id or 0, dtype="int64"), np.full(n, batch_id is None))
    return pd.DataFrame(out)


def predict_frame(df: pd.DataFrame, model_uri: str | None = None, drop_invalid: bool = False,
                  settings: Settings | None = None) -> tuple[pd.DataFrame, ModelRef, ValidInput]:
    """Score a frame in memory (the dashboard's entry): output frame, model reference, validated input."""
    ref = resolve_model(model_uri, settings)
    model = load_model(ref, settings)
    valid = validate_input(df, signature_columns(model), drop_invalid)
    pred = score(model, valid.features)
    return output_frame(valid, pred, ref), ref, valid


def batch_drift(valid: ValidInput, ref: ModelRef, settings: Settings | None = None) -> pd.DataFrame | None:
    """Drift of the scored features against the model's training entity (None when it is unknown)."""
    from windpipe import drift

    if not ref.training_entity_uri:
        return None
    reference = drift.training_reference(ref.training_entity_uri, ref.cache_key, settings)
    return drift.compare(valid.features, reference, ref.training_entity_uri)


def run_batch(input_path: Path | str, output_path: Path | str, model_uri: str | None = None,
              overwrite: bool = False, drop_invalid: bool = False, source: str = "cli",
              run_id: str | None = None, settings: Settings | None = None, say=print) -> BatchResult:  # noqa: ANN001
    """Validate, then score and check drift while the marts take the input rows; write the output and commit.

    The marts transaction stays open while the output is written and renamed into place; if
    anything fails the transaction rolls back and the output is not there (or is removed).
    """
    from windpipe import marts

    settings = settings or get_settings()
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.exists() and not overwrite:
        raise WindpipeError(f"Output {output_path} exists already.",
                            "pass --overwrite to replace it, or choose another --output")
    if output_path.resolve() == input_path.resolve():
        raise WindpipeError("--output is the same file as --input.", "write the predictions to another file")
    t: dict[str, float] = {}
    t0 = time.perf_counter()

    def lap(name: str) -> None:
        t[name] = time.perf_counter() - t0 - sum(t.values())

    df = read_input(input_path)
    lap("read")
    # the marts take the input rows (a helper process for big batches) while the model loads and scores
    with marts.BatchWriter(rows=len(df), settings=settings) as batch:
        ref = resolve_model(model_uri, settings)
        files = model_files(ref, settings)
        model = None if files else load_model(ref, settings)  # no local files: the signature needs the model
        lap("resolve")
        columns = signature_columns(model) if model is not None else file_signature_columns(files, ref)
        valid = validate_input(df, columns, drop_invalid, where=f"Input {input_path}")
        del df
        lap("validate")
        batch.start(valid.features, model_name=ref.name, model_version=ref.version, model_uri=ref.load_uri,
                    source=source, timestamps=valid.timestamps, row_numbers=valid.row_numbers, run_id=run_id,
                    input_path=str(input_path.resolve()), rows_dropped=len(valid.dropped_rows))
        lap("marts_start")
        model = model or load_model(ref, settings)
        lap("load_model")
        pred = score(model, valid.features)
        lap("score")
        drift_rows = batch_drift(valid, ref, settings)
        lap("drift")
        batch.add_predictions(pred, drift_rows)
        with atomic_path(output_path) as tmp:  # (while the marts insert the predictions)
            output_frame(valid, pred, ref, batch.batch_id).to_parquet(tmp, index=False)
            if output_path.exists() and not overwrite:  # appeared while we worked
                raise WindpipeError(f"Output {output_path} appeared while predicting.", "choose another --output")
        try:
            batch_id = batch.commit()
        except BaseException:  # the output is in place but the batch is not: take the file back
            output_path.unlink(missing_ok=True)
            raise
    lap("write")
    if valid.extra_columns:
        say(f"ignored column(s) not in the model's signature: {', '.join(valid.extra_columns)}")
    if valid.dropped_rows:
        say(f"dropped {len(valid.dropped_rows)} row(s) with missing values "
            f"(rows, counted from 0: {_row_list(np.asarray(valid.dropped_rows))})")
    if drift_rows is None:
        say("drift: unchecked (the model's run has no windpipe.entity.processed tag)")
    t["total"] = time.perf_counter() - t0
    return BatchResult(output_path, batch_id, len(pred), len(valid.dropped_rows), valid.extra_columns, ref,
                       drift_rows, t)

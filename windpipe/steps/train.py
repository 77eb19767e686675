"""The training steps (lr, rf, keras): the processed entity -> a logged model with holdout metrics.

Reads:  the `processed` entity (a path, any URI MLflow can fetch, or by default the entity of the
        latest successful `process` run in the experiment).
Writes: the model (`models:/m-...`, with signature, input example and explicit pip requirements),
        holdout metrics, a predicted-vs-recorded figure, the entity as an MLflow dataset input, tags.

One shared function logs everything (`log_training`); the families differ only in how they fit
(`FITTERS`) and in the MLflow flavor that logs the model (`log_model`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from windpipe import names
from windpipe.entities.schema import PROCESSED, data_date
from windpipe.entities.store import read_entity, resolve_uri
from windpipe.errors import WindpipeError
from windpipe.models import loading
from windpipe.names import FEATURES, TARGETS
from windpipe.settings import fault_point
from windpipe.tracking.runs import child_run, latest_entity_uri, log_batch, step_run
from windpipe.training import models as M
from windpipe.training.split import check_split, split, xy

if TYPE_CHECKING:
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.models.model import ModelInfo

FIGURE_PATH = "figures/predicted_vs_recorded.html"
LATEST = ("", "latest")
# what a logged model needs to load and predict (pinned to the versions that trained it)
REQUIREMENTS = {
    "lr": ["scikit-learn", "scipy", "numpy", "pandas", "skops"],
    "rf": ["scikit-learn", "scipy", "numpy", "pandas", "skops"],
    "keras": ["tensorflow", "keras", "numpy", "pandas"],
}
SKOPS_TRUSTED = ["sklearn.tree._tree.Tree"]


# ---------------------------------------------------------------- data

@dataclass
class Data:
    """The processed entity a run reads, where it came from, and its split."""

    df: pd.DataFrame
    uri: str
    train: pd.DataFrame
    test: pd.DataFrame
    seed: int
    test_size: float
    split_by: str
    _dataset: object = None

    def log_input(self, context: str = "training") -> None:
        """Log the entity as an MLflow dataset input; the dataset (and its digest) is built once per Data."""
        import mlflow

        from windpipe.entities.store import dataset

        if self._dataset is None:
            self._dataset = dataset(PROCESSED, self.df, self.uri)
        mlflow.log_input(self._dataset, context=context)

    def split_params(self) -> dict[str, object]:
        return {"data_uri": self.uri, "split_seed": self.seed, "test_size": self.test_size, "split_by": self.split_by,
                "train_rows": len(self.train), "test_rows": len(self.test)}


def load_data(data: str, seed: object, test_size: object, split_by: str, tmp_dir: Path | None = None) -> Data:
    """Check the split parameters, fetch and validate the entity, split it."""
    seed = M.as_int("seed", seed, 0)
    test_size = M.as_float("test_size", test_size, 0.0, 1.0)
    check_split(test_size, split_by)
    uri = latest_entity_uri(PROCESSED.name) if str(data).strip() in LATEST else str(data).strip()
    path = resolve_uri(uri, tmp_dir)
    df = read_entity(PROCESSED, path)
    if "://" not in uri and not uri.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        uri = str(Path(uri).resolve())
    train, test = split(df, test_size, seed, split_by)
    return Data(df, uri, train, test, seed, test_size, split_by)


# ---------------------------------------------------------------- logging shared by every family

def pip_requirements(family: str) -> list[str]:
    """Explicit, pinned requirements (never let MLflow infer them: ~7 s per model)."""
    out = []
    for name in REQUIREMENTS[family]:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


def signature(family: str, X: pd.DataFrame, pred: np.ndarray) -> ModelSignature:
    """Columns FEATURES -> TARGETS (float64); Keras models need tensors: (-1, 4) -> (-1, 2), same order."""
    import numpy as np
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import Schema, TensorSpec

    if family == "keras":
        return ModelSignature(inputs=Schema([TensorSpec(np.dtype("float64"), (-1, len(FEATURES)))]),
                              outputs=Schema([TensorSpec(np.dtype("float32"), (-1, len(TARGETS)))]))
    return infer_signature(X[FEATURES].astype("float64"), pd.DataFrame(pred, columns=TARGETS))


def log_model(family: str, model: object, X: pd.DataFrame, pred: np.ndarray) -> ModelInfo:
    """Log `model` as `model` with signature, input example and explicit requirements."""
    import mlflow

    example = X[FEATURES].head(5).astype("float64")
    kwargs = {"name": "model", "signature": signature(family, X, pred), "pip_requirements": pip_requirements(family)}
    if family == "keras":
        from mlflow.models import Model

        return Model.log(artifact_path=None, flavor=_KerasFlavor(), model=model, input_example=example.to_numpy(),
                         **kwargs)
    return mlflow.sklearn.log_model(model, input_example=example, serialization_format="skops",
                                    skops_trusted_types=SKOPS_TRUSTED, **kwargs)


class _KerasFlavor:
    """mlflow.keras, except that the model folder exists before the input example is written
    (mlflow 3.17's keras `save_model` writes the example first and fails with FileNotFoundError)."""

    __name__ = "mlflow.keras"

    def save_model(self, path: str, **kwargs: object) -> None:
        import os

        import mlflow.keras

        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)


def log_training(family: str, model: object, params: dict[str, object], data: Data,
                 fit_seconds: float, log_model_too: bool = True) -> dict[str, object]:
    """Log params, holdout metrics, the figure, the dataset input, the model and the tags of one run.

    Returns the metrics plus `model_uri` (None when `log_model_too` is False).
    """
    import mlflow

    from windpipe.training.figures import predicted_vs_recorded
    from windpipe.training.metrics import regression_metrics

    X_test, y_test = xy(data.test)
    pred = M.predict_fitted(model, X_test)
    metrics = regression_metrics(y_test, pred)
    data.log_input("training")
    tags = {names.FAMILY_TAG: family, names.DATA_DATE_TAG: data_date(data.train), names.PROCESSED_TAG: data.uri}
    model_uri = None
    if log_model_too:
        fig = predicted_vs_recorded(y_test, pred, title=f"{family}: holdout ({len(y_test)} rows)")
        mlflow.log_figure(fig, FIGURE_PATH)
        info = log_model(family, model, X_test, pred)
        model_uri = tags[names.MODEL_URI_TAG] = info.model_uri
    log_batch({**params, **data.split_params()}, {**metrics, "fit_seconds": fit_seconds}, tags)
    return {**metrics, "model_uri": model_uri}


def fit_timed(fit: Callable[[], object]) -> tuple[object, float]:
    started = time.perf_counter()
    out = fit()
    return out, time.perf_counter() - started


# ---------------------------------------------------------------- entry points

def train(family: str, data: str, seed: str, test_size: str, split_by: str, step_dir: Path | None = None,
          **family_params: str) -> dict[str, object]:
    """Fit one model of `family` on the processed entity and log it (the `main` entry point of lr, rf, keras).

    Checks the parameters, then reads, splits, fits and logs; returns the holdout metrics and model_uri.
    """
    import mlflow

    with step_run(family, "main", step_dir=step_dir), tempfile.TemporaryDirectory() as tmp:
        params, fit = _family(family, seed, family_params)           # 1. parameters (before any work)
        d = load_data(data, seed, test_size, split_by, Path(tmp))     # 2. the entity (before any training)
        log_batch({**params, **d.split_params()})                     # ours first (autolog logs fit args)
        if family == "keras":
            mlflow.keras.autolog(log_models=False, log_datasets=False, silent=True)
        try:
            model, fit_s = fit_timed(lambda: fit(*xy(d.train)))
        finally:
            if family == "keras":
                mlflow.keras.autolog(disable=True)
        if family == "keras":
            model, history = model
            mlflow.log_metric("epochs_run", len(history.history["loss"]))
        out = log_training(family, model, params, d, fit_s)
        print(f"{family}: r2 {out['r2']:.4f} rmse {out['rmse']:.3f} (fit {fit_s:.1f} s) -> {out['model_uri']}")
        return out


def grid(data: str, n_estimators: str, max_depth: str, min_samples_leaf: str, seed: str, test_size: str,
         split_by: str, step_dir: Path | None = None, n_jobs: object = -1) -> dict[str, object]:
    """Grid search of random forests: one child run per (n_estimators, max_depth), the best model on the parent.

    Children log params and holdout metrics; the parent logs the best child's params and metrics,
    tags `best_run_id`, and logs the best model (refitting nothing: the fitted model is kept).
    """
    import mlflow

    with step_run("rf", "grid", step_dir=step_dir), tempfile.TemporaryDirectory() as tmp:
        combos = [M.RFParams.check(n, dpt, min_samples_leaf, seed, n_jobs)
                  for n in M.as_int_list("n_estimators", n_estimators)
                  for dpt in M.as_depth_list("max_depth", max_depth)]
        d = load_data(data, seed, test_size, split_by, Path(tmp))
        X, y = xy(d.train)
        best: tuple[float, str, object, M.RFParams, float] | None = None
        for i, p in enumerate(combos, 1):
            with child_run(f"rf_n{p.n_estimators}_d{p.max_depth}",
                           {names.STEP_TAG: "rf", names.ENTRY_TAG: "grid_child"}) as child:
                fault_point("rf:grid_child")
                model, fit_s = fit_timed(lambda p=p: M.train_rf(X, y, p))
                out = log_training("rf", model, _rf_params(p), d, fit_s, log_model_too=False)
            print(f"[{i}/{len(combos)}] n_estimators={p.n_estimators} max_depth={p.max_depth}: "
                  f"r2 {out['r2']:.4f} ({fit_s:.1f} s)", flush=True)
            if best is None or names.better(out["r2"], best[0], "r2"):
                best = (out["r2"], child.info.run_id, model, p, fit_s)
            else:
                del model
        r2, best_id, model, p, fit_s = best
        out = log_training("rf", model, {"best_n_estimators": p.n_estimators, "best_max_depth": p.max_depth,
                                         "min_samples_leaf": p.min_samples_leaf, "seed": p.seed,
                                         "grid_size": len(combos), "grid_n_estimators": str(n_estimators),
                                         "grid_max_depth": str(max_depth)},
                           d, fit_s)
        mlflow.set_tag(names.BEST_RUN_TAG, best_id)
        print(f"best: n_estimators={p.n_estimators} max_depth={p.max_depth} r2 {r2:.4f} (run {best_id})"
              f" -> {out['model_uri']}")
        return {**out, "best_run_id": best_id}


def evaluate(family: str, model_uri: str, data: str, scope: str, seed: str, test_size: str, split_by: str,
             step_dir: Path | None = None) -> dict[str, float]:
    """Score MODEL_URI on the entity's holdout split (`scope=holdout`) or all of it (`scope=all`).

    Logs metrics `eval_rmse`, `eval_r2`, ... and tags the model and entity URIs.
    """
    from windpipe.training.metrics import regression_metrics

    with step_run(family, "evaluate", step_dir=step_dir), tempfile.TemporaryDirectory() as tmp:
        if scope not in ("holdout", "all"):
            raise WindpipeError(f"scope must be holdout or all, got {scope!r}.",
                                "pass -P scope=holdout (the test split) or -P scope=all (every row)")
        if not str(model_uri).strip():
            raise WindpipeError("No model to evaluate.", "pass -P model_uri=models:/m-... (a run's model URI)")
        d = load_data(data, seed, test_size, split_by, Path(tmp))
        model, _ = loading.load_uri(str(model_uri).strip())
        rows = d.test if scope == "holdout" else d.df
        X, y = xy(rows)
        metrics = regression_metrics(y, loading.predict(model, X), prefix="eval_")
        d.log_input("evaluation")
        log_batch({"model_uri": model_uri, "scope": scope, "eval_rows": len(rows), **d.split_params()}, metrics,
                  {names.EVALUATED_MODEL_TAG: model_uri, names.PROCESSED_TAG: d.uri, names.FAMILY_TAG: family,
                   names.DATA_DATE_TAG: data_date(rows)})
        print(f"evaluate {model_uri} on {scope} ({len(rows)} rows): r2 {metrics['eval_r2']:.4f}")
        return metrics


# ---------------------------------------------------------------- family specifics

def _rf_params(p: M.RFParams) -> dict[str, object]:
    return {"n_estimators": p.n_estimators, "max_depth": p.max_depth, "min_samples_leaf": p.min_samples_leaf,
            "seed": p.seed}


def _family(family: str, seed: object, kw: dict[str, object]) -> tuple[dict[str, object], Callable]:
    """(params to log, fit(X, y)) of a family, after checking its parameters."""
    if family == "lr":
        M.as_int("seed", seed, 0)
        return {"features": "windspeed^1..3 + degree-2 radiation/temperature"}, M.train_lr
    if family == "rf":
        p = M.RFParams.check(seed=seed, **kw)
        return _rf_params(p), lambda X, y: M.train_rf(X, y, p)
    if family == "keras":
        p = M.KerasParams.check(seed=seed, **kw)
        params = {"epochs": p.epochs, "batch_size": p.batch_size, "learning_rate": p.learning_rate,
                  "hidden_units": ",".join(map(str, p.hidden_units)), "patience": p.patience, "seed": p.seed,
                  "validation_split": p.validation_split, "ensemble": p.ensemble, "bins": p.bins}
        return params, lambda X, y: M.train_keras(X, y, p)
    raise WindpipeError(f"Unknown model family {family!r}.", f"use one of {', '.join(M.FAMILIES)}")

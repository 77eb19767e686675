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
from windpipe.faults import fault_point
from windpipe.models import loading
from windpipe.names import FEATURES, TARGETS, TIMESTAMP
from windpipe.steps.cli import flag
from windpipe.tracking.runs import child_run, latest_entity_uri, log_batch, step_run
from windpipe.training import models as M
from windpipe.training.features import TIME_FEATURES_FORMULA, needs_time
from windpipe.training.split import SplitSpec, backtest_windows, check_split, validation_split, xy

if TYPE_CHECKING:
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.models.model import ModelInfo

FIGURE_PATH = "figures/predicted_vs_recorded.html"
BACKTEST_FIGURE_PATH = "figures/backtest.html"
BACKTEST_TABLE_PATH = "backtest/folds.json"
LATEST = ("", "latest")
# what a logged model needs to load and predict (pinned to the versions that trained it)
REQUIREMENTS = {
    "lr": ["scikit-learn", "scipy", "numpy", "pandas", "skops"],
    "rf": ["scikit-learn", "scipy", "numpy", "pandas", "skops"],
    "keras": ["tensorflow", "keras", "numpy", "pandas"],
}
# the types skops must be told to trust when loading (none is windpipe's: the models load without it):
# forests' trees and the Bunch a VotingRegressor keeps; the spline model's B-splines
SKOPS_TRUSTED = ["sklearn.tree._tree.Tree", "sklearn.utils._bunch.Bunch", "scipy.interpolate._bsplines.BSpline",
                 "scipy._lib.array_api_compat.numpy._aliases.asarray"]


# ---------------------------------------------------------------- data

@dataclass
class Data:
    """The processed entity a run reads, where it came from, and its split."""

    df: pd.DataFrame
    uri: str
    train: pd.DataFrame
    test: pd.DataFrame
    spec: SplitSpec
    _dataset: object = None

    def log_input(self, context: str = "training") -> None:
        """Log the entity as an MLflow dataset input; the dataset (and its digest) is built once per Data."""
        import mlflow

        from windpipe.entities.store import dataset

        if self._dataset is None:
            self._dataset = dataset(PROCESSED, self.df, self.uri)
        mlflow.log_input(self._dataset, context=context)

    def split_params(self) -> dict[str, object]:
        out = {"data_uri": self.uri, **self.spec.params(), "train_rows": len(self.train), "test_rows": len(self.test)}
        if self.spec.split_by == "time" and len(self.test):
            out["holdout_start"] = pd.Timestamp(self.test[TIMESTAMP].min()).isoformat()
        return out


def split_spec(seed: object, test_size: object, split_by: str, holdout_weeks: object) -> SplitSpec:
    """The split parameters of a step, checked (before any data is read)."""
    spec = SplitSpec(split_by=str(split_by).strip(), holdout_weeks=M.as_float("holdout_weeks", holdout_weeks, 0.0),
                     test_size=M.as_float("test_size", test_size, 0.0, 1.0), seed=M.as_int("seed", seed, 0))
    check_split(spec.test_size, spec.split_by, spec.holdout_weeks)
    return spec


def load_data(data: str, spec: SplitSpec, tmp_dir: Path | None = None, cut: bool = True) -> Data:
    """Fetch and validate the entity, split it as `spec` says (`cut=False`: every row is a test row)."""
    uri = latest_entity_uri(PROCESSED.name) if str(data).strip() in LATEST else str(data).strip()
    path = resolve_uri(uri, tmp_dir)
    df = read_entity(PROCESSED, path)
    if "://" not in uri and not uri.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        uri = str(Path(uri).resolve())
    train, test = spec.cut(df) if cut else (df.iloc[:0], df)
    return Data(df, uri, train, test, spec)


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


def signature(family: str, X: pd.DataFrame, pred: np.ndarray, columns: list[str]) -> ModelSignature:
    """Columns `columns` -> TARGETS (float64); Keras models need tensors: (-1, len(columns)) -> (-1, 2), same order."""
    import numpy as np
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types.schema import Schema, TensorSpec

    if family == "keras":
        return ModelSignature(inputs=Schema([TensorSpec(np.dtype("float64"), (-1, len(columns)))]),
                              outputs=Schema([TensorSpec(np.dtype("float32"), (-1, len(TARGETS)))]))
    return infer_signature(X[columns].astype("float64"), pd.DataFrame(pred, columns=TARGETS))


def model_metadata(columns: list[str]) -> dict[str, object]:
    """What the MLmodel file says about the input: its columns in order (Keras signatures carry no names)
    and, for models that follow the trend, how to derive the time columns (`mlflow models serve` users)."""
    out: dict[str, object] = {names.INPUT_COLUMNS_META: list(columns)}
    derived = needs_time(columns)
    if derived:
        out[names.TIME_FEATURES_META] = {
            "columns": derived, "from": TIMESTAMP, "formula": TIME_FEATURES_FORMULA}
    return out


def log_model(family: str, model: object, X: pd.DataFrame, pred: np.ndarray) -> ModelInfo:
    """Log `model` as `model` with signature, input example, its input columns and explicit requirements."""
    import mlflow

    columns = M.fitted_columns(model)
    example = X[columns].head(5).astype("float64")
    kwargs = {"name": "model", "signature": signature(family, X, pred, columns),
              "pip_requirements": pip_requirements(family), "metadata": model_metadata(columns)}
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


def log_training(family: str, model: object, params: dict[str, object], data: Data, fit_seconds: float,
                 time_features: bool, log_model_too: bool = True, new_run: bool = False) -> dict[str, object]:
    """Log params, holdout metrics, the figure, the dataset input, the model and the tags of one run.

    Returns the metrics plus `model_uri` (None when `log_model_too` is False). `new_run`: the run
    was just started here (a grid child), so it has no parameters yet to leave out.
    """
    import mlflow

    from windpipe.training.figures import predicted_vs_recorded
    from windpipe.training.metrics import regression_metrics

    X_test, y_test = xy(data.test, time_features)
    pred = M.predict_fitted(model, X_test)
    metrics = regression_metrics(y_test, pred)
    data.log_input("training")
    tags = {names.FAMILY_TAG: family, names.DATA_DATE_TAG: data_date(data.train), names.PROCESSED_TAG: data.uri}
    model_uri = None
    if log_model_too:
        fig = predicted_vs_recorded(y_test, pred, title=f"{family}: holdout, {data.spec.describe()} "
                                                       f"({len(y_test)} rows)")
        mlflow.log_figure(fig, FIGURE_PATH)
        info = log_model(family, model, X_test, pred)
        model_uri = tags[names.MODEL_URI_TAG] = info.model_uri
    log_batch({**params, **data.split_params(), "time_features": time_features},
              {**metrics, "fit_seconds": fit_seconds}, tags, skip_logged=not new_run)
    return {**metrics, "model_uri": model_uri}


def log_backtest(fit: Callable[[pd.DataFrame], object], data: Data, folds: int, time_features: bool,
                 final: object | None = None, label: str = "") -> dict[str, float]:
    """Run the rolling-origin backtest and log its per-fold and mean metrics, a figure and the fold table.

    A fold whose training rows are the final model's (the last fold of a time split) reuses `final`.
    """
    import mlflow

    from windpipe.training.backtest import fold_metrics, run_backtest, summary
    from windpipe.training.figures import backtest_figure

    def fold_fit(train: pd.DataFrame) -> object:
        if final is not None and train.index.equals(data.train.index):
            return final  # the same rows, the same seed: the same model
        return fit(train)

    started = time.perf_counter()
    table = run_backtest(data.df, fold_fit, folds, data.spec.holdout_weeks or 13.0, time_features,
                         say=lambda m: print(m, flush=True))
    out = {**summary(table), **fold_metrics(table), "backtest_seconds": time.perf_counter() - started}
    log_batch({"backtest_folds": folds, "backtest_weeks": data.spec.holdout_weeks}, out)
    mlflow.log_figure(backtest_figure(table, title=f"{label}: rolling-origin backtest, {folds} folds of "
                                                   f"{data.spec.holdout_weeks:g} weeks"), BACKTEST_FIGURE_PATH)
    mlflow.log_text(table.to_json(orient="records", date_format="iso", indent=1), BACKTEST_TABLE_PATH)
    print(f"backtest ({folds} folds): mean r2 {out['backtest_r2']:.4f}, wind bias "
          f"{out['backtest_bias_wind_GW']:+.2f} GW")
    return out


def fit_timed(fit: Callable[[], object]) -> tuple[object, float]:
    started = time.perf_counter()
    out = fit()
    return out, time.perf_counter() - started


# ---------------------------------------------------------------- entry points

def train(family: str, data: str, seed: str, test_size: str, split_by: str, holdout_weeks: str, time_features: str,
          backtest_folds: str, step_dir: Path | None = None, **family_params: str) -> dict[str, object]:
    """Fit one model of `family` on the processed entity and log it (the `main` entry point of lr, rf, keras).

    Checks the parameters, then reads and splits (by default the newest holdout_weeks are the holdout),
    fits on the rows before the holdout and logs; with backtest_folds > 0 also refits on everything
    before each of the last folds windows and logs the backtest. Returns the holdout metrics and model_uri.
    """
    import mlflow

    with step_run(family, "main", step_dir=step_dir), tempfile.TemporaryDirectory() as tmp:
        spec = split_spec(seed, test_size, split_by, holdout_weeks)      # 1. parameters (before any work)
        trend, folds = flag(time_features), M.as_int("backtest_folds", backtest_folds, 0)
        params, fit = family_fitter(family, family_params, spec, trend)
        d = load_data(data, spec, Path(tmp))                               # 2. the entity (before any training)
        if folds:
            backtest_windows(d.df, folds, spec.holdout_weeks)              # 3. the folds fit the data
        log_batch({**params, **d.split_params()})                          # ours first (autolog logs fit args)
        if family == "keras":
            mlflow.keras.autolog(log_models=False, log_datasets=False, silent=True)
        try:
            model, fit_s = fit_timed(lambda: fit(d.train))
        finally:
            if family == "keras":
                mlflow.keras.autolog(disable=True)
        if family == "keras":
            mlflow.log_metric("epochs_run", len(model.history.history.get("loss", [])))
        out = log_training(family, model, params, d, fit_s, trend)
        print(f"{family}: r2 {out['r2']:.4f} rmse {out['rmse']:.3f} wind bias {out['bias_wind_GW']:+.2f} GW "
              f"on {d.spec.describe()} (fit {fit_s:.1f} s) -> {out['model_uri']}")
        if folds:
            out.update(log_backtest(fit, d, folds, trend, final=model if spec.split_by == "time" else None,
                                    label=family))
        return out


def grid(data: str, n_estimators: str, max_depth: str, min_samples_leaf: str, seed: str, test_size: str,
         split_by: str, holdout_weeks: str, time_features: str, backtest_folds: str, step_dir: Path | None = None,
         n_jobs: object = -1) -> dict[str, object]:
    """Grid search of random forests: one child run per (n_estimators, max_depth), the best model on the parent.

    Children log params and holdout metrics; the parent logs the best child's params and metrics,
    tags `best_run_id`, logs the best model (refitting nothing: the fitted model is kept) and, with
    backtest_folds > 0, the backtest of the best combination.
    """
    import mlflow

    with step_run("rf", "grid", step_dir=step_dir), tempfile.TemporaryDirectory() as tmp:
        spec = split_spec(seed, test_size, split_by, holdout_weeks)
        trend, folds = flag(time_features), M.as_int("backtest_folds", backtest_folds, 0)
        combos = [M.RFParams.check(n, dpt, min_samples_leaf, seed, n_jobs)
                  for n in M.as_int_list("n_estimators", n_estimators)
                  for dpt in M.as_depth_list("max_depth", max_depth)]
        d = load_data(data, spec, Path(tmp))
        if folds:
            backtest_windows(d.df, folds, spec.holdout_weeks)
        X, y = xy(d.train, trend)
        best: tuple[float, str, object, M.RFParams, float] | None = None
        for i, (p, model, fit_s) in enumerate(M.rf_grid(X, y, combos), 1):  # forests grow tree by tree count
            with child_run(f"rf_n{p.n_estimators}_d{p.max_depth}",
                           {names.STEP_TAG: "rf", names.ENTRY_TAG: "grid_child"}) as child:
                fault_point("rf:grid_child")
                out = log_training("rf", model, _rf_params(p), d, fit_s, trend, log_model_too=False, new_run=True)
            print(f"[{i}/{len(combos)}] n_estimators={p.n_estimators} max_depth={p.max_depth}: "
                  f"r2 {out['r2']:.4f} ({fit_s:.1f} s)", flush=True)
            if best is None or names.better(out["r2"], best[0], "r2"):
                best = (out["r2"], child.info.run_id, model, p, fit_s)
        r2, best_id, model, p, fit_s = best
        out = log_training("rf", model, {"best_n_estimators": p.n_estimators, "best_max_depth": p.max_depth,
                                         "min_samples_leaf": p.min_samples_leaf, "seed": p.seed,
                                         "grid_size": len(combos), "grid_n_estimators": str(n_estimators),
                                         "grid_max_depth": str(max_depth)},
                           d, fit_s, trend)
        mlflow.set_tag(names.BEST_RUN_TAG, best_id)
        print(f"best: n_estimators={p.n_estimators} max_depth={p.max_depth} r2 {r2:.4f} (run {best_id})"
              f" -> {out['model_uri']}")
        if folds:
            out.update(log_backtest(lambda train: M.train_rf(*xy(train, trend), p), d, folds, trend,
                                    final=model if spec.split_by == "time" else None, label="rf grid best"))
        return {**out, "best_run_id": best_id}


def backtest(family: str, data: str, seed: str, holdout_weeks: str, time_features: str, backtest_folds: str,
             step_dir: Path | None = None, **family_params: str) -> dict[str, float]:
    """Rolling-origin backtest only: refit the family on everything before each of the last backtest_folds
    windows of holdout_weeks and score the window; log per-fold and mean metrics and a figure, no model."""
    with step_run(family, "backtest", step_dir=step_dir), tempfile.TemporaryDirectory() as tmp:
        spec = split_spec(seed, 0.2, "time", holdout_weeks)
        trend, folds = flag(time_features), M.as_int("backtest_folds", backtest_folds, 1)
        params, fit = family_fitter(family, family_params, spec, trend)
        d = load_data(data, spec, Path(tmp))
        backtest_windows(d.df, folds, spec.holdout_weeks)
        d.log_input("backtest")
        log_batch({**params, "data_uri": d.uri, "time_features": trend},
                  tags={names.FAMILY_TAG: family, names.PROCESSED_TAG: d.uri, names.DATA_DATE_TAG: data_date(d.df)})
        return log_backtest(fit, d, folds, trend, label=family)


def evaluate(family: str, model_uri: str, data: str, scope: str, seed: str, test_size: str, split_by: str,
             holdout_weeks: str, step_dir: Path | None = None) -> dict[str, float]:
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
        spec = split_spec(seed, test_size, split_by, holdout_weeks)
        d = load_data(data, spec, Path(tmp), cut=scope == "holdout")
        model, _ = loading.load_uri(str(model_uri).strip())
        rows = d.test
        metrics = regression_metrics(rows[TARGETS], loading.predict(model, rows[FEATURES], rows[TIMESTAMP]),
                                     prefix="eval_")
        d.log_input("evaluation")
        where = d.split_params() if scope == "holdout" else {"data_uri": d.uri}
        log_batch({"model_uri": model_uri, "scope": scope, "eval_rows": len(rows), **where}, metrics,
                  {names.EVALUATED_MODEL_TAG: model_uri, names.PROCESSED_TAG: d.uri, names.FAMILY_TAG: family,
                   names.DATA_DATE_TAG: data_date(rows)})
        print(f"evaluate {model_uri} on {scope} ({len(rows)} rows): r2 {metrics['eval_r2']:.4f}")
        return metrics


# ---------------------------------------------------------------- family specifics

def _rf_params(p: M.RFParams) -> dict[str, object]:
    return {"n_estimators": p.n_estimators, "max_depth": p.max_depth, "min_samples_leaf": p.min_samples_leaf,
            "seed": p.seed}


def family_fitter(family: str, kw: dict[str, object], spec: SplitSpec,
                  trend: bool) -> tuple[dict[str, object], Callable[[pd.DataFrame], object]]:
    """(params to log, fit(training rows) -> model) of a family, after checking its parameters.

    `kw` holds the family's own parameters (rf: n_estimators, ...; keras: epochs, ...), `trend` says
    whether the model reads the time columns; Keras validates early stopping on rows of the training
    window (`spec.split_by=time`: the newest of them)."""
    if family == "lr":
        design = ("cubic splines of the weather x hour/day-of-year cycles x trend, Ridge" if trend
                  else "windspeed^1..3 + degree-2 radiation/temperature")
        return {"features": design}, lambda train: M.train_lr(*xy(train, trend))
    if family == "rf":
        p = M.RFParams.check(seed=spec.seed, **kw)
        return _rf_params(p), lambda train: M.train_rf(*xy(train, trend), p)
    if family == "keras":
        p = M.KerasParams.check(seed=spec.seed, **kw)
        params = {"epochs": p.epochs, "batch_size": p.batch_size, "learning_rate": p.learning_rate,
                  "hidden_units": ",".join(map(str, p.hidden_units)), "patience": p.patience, "seed": p.seed,
                  "validation_split": p.validation_split, "ensemble": p.ensemble, "bins": p.bins}

        def fit(train: pd.DataFrame) -> object:
            # early stopping looks at rows of the training window (the newest ones for a time split)
            fit_rows, val_rows = validation_split(train, p.validation_split, spec.split_by, spec.seed)
            return M.train_keras(*xy(fit_rows, trend), p, validation=xy(val_rows, trend))[0]

        return params, fit
    raise WindpipeError(f"Unknown model family {family!r}.", f"use one of {', '.join(M.FAMILIES)}")

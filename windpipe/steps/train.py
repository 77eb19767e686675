"""The training steps (lr, rf, keras, gbm, ...): the processed entity -> a logged model with holdout metrics.

Reads:  the `processed` entity (a path, any URI MLflow can fetch, or by default `latest`: the entity the
        newest finished run in the experiment wrote), recorded as the run's `windpipe.input.processed` tag.
Writes: the model (`models:/m-...`: it takes utc_timestamp and the four weather columns; signature,
        input example, the code it carries, explicit pip requirements), holdout metrics, a
        predicted-vs-recorded figure, the entity as an MLflow dataset input, tags.

One shared function logs everything (`log_training`); the families (windpipe.training.families, one
module each) differ only in how they check their parameters and fit, and in the flavor that logs the
model (`log_model`: `sklearn` or `keras`).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from windpipe import names
from windpipe.entities.schema import PROCESSED, data_date
from windpipe.entities.store import read_entity, resolve_uri
from windpipe.errors import WindpipeError
from windpipe.faults import fault_point
from windpipe.models import loading
from windpipe.names import FEATURES, TARGETS, TIMESTAMP
from windpipe.steps.cli import flag
from windpipe.tracking.runs import child_run, input_uri, log_batch, step_run
from windpipe.training import families
from windpipe.training.families import (
    Family,
    TrainingRows,
    core_columns,
    natural,
    natural_columns,
    output_columns,
    score_fitted,
)
from windpipe.training.families.rf import RFParams, rf_grid
from windpipe.training.params import as_depth_list, as_float, as_int, as_int_list
from windpipe.training.split import SplitSpec, backtest_windows, check_split, xy

if TYPE_CHECKING:
    from mlflow.models import ModelSignature
    from mlflow.models.model import ModelInfo

FIGURE_PATH = "figures/predicted_vs_recorded.html"
BACKTEST_FIGURE_PATH = "figures/backtest.html"
BACKTEST_TABLE_PATH = "backtest/folds.json"


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
    spec = SplitSpec(split_by=str(split_by).strip(), holdout_weeks=as_float("holdout_weeks", holdout_weeks, 0.0),
                     test_size=as_float("test_size", test_size, 0.0, 1.0), seed=as_int("seed", seed, 0))
    check_split(spec.test_size, spec.split_by, spec.holdout_weeks)
    return spec


def load_data(data: str, spec: SplitSpec, tmp_dir: Path | None = None, cut: bool = True) -> Data:
    """Fetch and validate the entity, split it as `spec` says (`cut=False`: every row is a test row)."""
    uri = input_uri(PROCESSED.name, data)
    df = read_entity(PROCESSED, resolve_uri(uri, tmp_dir))
    train, test = spec.cut(df) if cut else (df.iloc[:0], df)
    return Data(df, uri, train, test, spec)


# ---------------------------------------------------------------- logging shared by every family

def pip_requirements(family: Family) -> list[str]:
    """Explicit, pinned requirements (never let MLflow infer them: ~7 s per model)."""
    out = []
    for name in family.requirements:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            out.append(name)
    return out


def signature(columns: list[str], outputs: list[str] = TARGETS) -> ModelSignature:
    """The natural inputs -> `outputs` (double: TARGETS, then with intervals each target's quantiles).
    utc_timestamp is a datetime the model may also find as the DataFrame's index, so MLflow's schema check lets
    it be absent (the model then says what is missing)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("datetime", c, required=False) if c == TIMESTAMP else ColSpec("double", c)
                       for c in columns]),
        outputs=Schema([ColSpec("double", t) for t in outputs]))


def model_metadata(model: Any) -> dict[str, object]:
    """What the MLmodel file says about the input: the columns the model's core reads, in order (the time
    columns among them it derives from utc_timestamp itself)."""
    return {names.INPUT_COLUMNS_META: core_columns(model)}


def input_example(rows: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Five rows of the natural inputs; times as naive UTC (MLflow's datetime type takes no time zone)."""
    out = rows.head(5)[[c for c in columns if c != TIMESTAMP]].astype("float64").reset_index(drop=True)
    if TIMESTAMP in columns:
        out.insert(0, TIMESTAMP, pd.to_datetime(rows[TIMESTAMP].head(5), utc=True).dt.tz_localize(None).to_numpy())
    return out


def log_model(family: Family, model: Any, rows: pd.DataFrame) -> ModelInfo:
    """Log the natural model `model` as `model`: signature, input example, metadata, explicit requirements, and
    windpipe.training.inputs as the module `windpipe_inputs` (code_paths: the model loads without windpipe)."""
    import mlflow

    from windpipe.models.skops_types import import_skops
    from windpipe.tracking.internals import pinned_requirements
    from windpipe.training import inputs

    columns = natural_columns(model)
    with tempfile.TemporaryDirectory() as tmp, pinned_requirements():
        code = Path(tmp) / f"{inputs.MODULE}.py"
        shutil.copyfile(inputs.__file__, code)
        kwargs = {"name": "model", "signature": signature(columns, output_columns(model)),
                  "input_example": input_example(rows, columns),
                  "pip_requirements": pip_requirements(family), "metadata": model_metadata(model),
                  "code_paths": [str(code)]}
        if family.flavor == "keras":
            from mlflow.models import Model

            return Model.log(artifact_path=None, flavor=_NaturalKerasFlavor(), model=model, **kwargs)
        trusted = skops_trusted(family)
        import_skops()  # before MLflow imports skops: its type lists from the cache
        try:
            return mlflow.sklearn.log_model(model, serialization_format="skops", skops_trusted_types=trusted,
                                            **kwargs)
        except mlflow.exceptions.MlflowException:
            # MLflow saves with skops and loads the file back with `trusted` before storing anything; a type the
            # family forgot fails there: say which one and where to add it (checking up front costs a second
            # skops dump of every model)
            check_trusted(family, model, trusted)
            raise


def skops_trusted(family: Family) -> list[str]:
    """The types a `family` model's skops file may hold beyond what skops trusts by default: the windpipe_inputs
    classes every scikit-learn model is built of, and the family's own (`Family.skops_trusted`)."""
    from windpipe.training import inputs

    return [f"{inputs.MODULE}.{name}" for name in ("NaturalInputs", "Forecast", "CapacityModel")] + list(
        family.skops_trusted)


def check_trusted(family: Family, model: Any, trusted: list[str]) -> list[str]:
    """`trusted`, after checking that skops needs no other type to load `model`: a type the family forgot would
    log a model nobody can load."""
    import skops.io

    missing = sorted(set(skops.io.get_untrusted_types(data=skops.io.dumps(model))) - set(trusted))
    if missing:
        raise WindpipeError(f"The {family.name} model holds types that skops does not trust by default and the family "
                            f"does not list: {', '.join(missing)}.",
                            f"add them to skops_trusted in the {family.name} family's module "
                            "(windpipe/training/families/), if they are safe to load")
    return trusted


class _NaturalKerasFlavor:
    """A Keras family's model: the network under MLflow's `keras` flavor (mlflow.keras.load_model gives it,
    reading the core columns), and a `python_function` flavor that takes the natural inputs
    (loader_module windpipe_inputs, KerasForecaster). mlflow.keras.save_model takes tensor signatures only."""

    __name__ = "mlflow.keras"

    def save_model(self, path: str, model: Any, mlflow_model: Any, **kwargs: Any) -> None:
        import keras
        import mlflow.pyfunc

        from windpipe.training import inputs

        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "keras"  # pyfunc.save_model copies it to data/keras: both flavors read it there
            model.save(str(data))
            mlflow_model.add_flavor("keras", data="data/keras", keras_version=keras.__version__,
                                    keras_backend=keras.backend.backend(), save_exported_model=False)
            mlflow.pyfunc.save_model(path=path, loader_module=inputs.MODULE, data_path=str(data),
                                     mlflow_model=mlflow_model, **kwargs)


def log_training(family: Family, model: Any, params: dict[str, object], data: Data, fit_seconds: float,
                 time_features: bool, log_model_too: bool = True, new_run: bool = False) -> dict[str, object]:
    """Log params, holdout metrics, the figure, the dataset input, the model and the tags of one run.

    Returns the metrics plus `model_uri` (None when `log_model_too` is False). `new_run`: the run
    was just started here (a grid child), so it has no parameters yet to leave out.
    """
    import mlflow

    from windpipe.training.figures import figure_html, predicted_vs_recorded
    from windpipe.training.metrics import clipped_metrics, quantile_metrics, regression_metrics

    y_test = data.test[TARGETS]
    scored = score_fitted(model, data.test)
    pred, quantiles = scored.point, scored.quantiles
    # the share the head clipped to [0, capacity]: how far the core alone strays from physics
    metrics = {**regression_metrics(y_test, pred), **clipped_metrics(scored.clipped)}
    if quantiles is not None and len(y_test):  # pinball loss, the 80 % interval's coverage and width
        metrics.update(quantile_metrics(y_test, quantiles))
    data.log_input("training")
    tags = {names.FAMILY_TAG: family.name, names.DATA_DATE_TAG: data_date(data.train),
            names.TRAINING_DATA_TAG: data.uri}
    model_uri = None
    if log_model_too:
        fig = predicted_vs_recorded(y_test, pred, title=f"{family.name}: holdout, {data.spec.describe()} "
                                                       f"({len(y_test)} rows)")
        mlflow.log_text(figure_html(fig), FIGURE_PATH)
        info = log_model(family, model, data.test)
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
    from windpipe.training.figures import backtest_figure, figure_html

    def fold_fit(train: pd.DataFrame) -> object:
        if final is not None and train.index.equals(data.train.index):
            return final  # the same rows, the same seed: the same model
        return fit(train)

    started = time.perf_counter()
    table = run_backtest(data.df, fold_fit, folds, data.spec.holdout_weeks or 13.0, say=lambda m: print(m, flush=True))
    out = {**summary(table), **fold_metrics(table), "backtest_seconds": time.perf_counter() - started}
    log_batch({"backtest_folds": folds, "backtest_weeks": data.spec.holdout_weeks}, out)
    fig = backtest_figure(table, title=f"{label}: rolling-origin backtest, {folds} folds of "
                                       f"{data.spec.holdout_weeks:g} weeks")
    mlflow.log_text(figure_html(fig), BACKTEST_FIGURE_PATH)
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
    """Fit one model of `family` on the processed entity and log it (the `main` entry point of every family).

    Checks the parameters, then reads and splits (by default the newest holdout_weeks are the holdout),
    fits on the rows before the holdout and logs; with backtest_folds > 0 also refits on everything
    before each of the last folds windows and logs the backtest. Returns the holdout metrics and model_uri.
    """
    with step_run(family, "main", step_dir=step_dir), tempfile.TemporaryDirectory() as tmp:
        spec = split_spec(seed, test_size, split_by, holdout_weeks)      # 1. parameters (before any work)
        trend, folds = flag(time_features), as_int("backtest_folds", backtest_folds, 0)
        fam, params, fit = family_fitter(family, family_params, spec, trend)
        d = load_data(data, spec, Path(tmp))                               # 2. the entity (before any training)
        if folds:
            backtest_windows(d.df, folds, spec.holdout_weeks)              # 3. the folds fit the data
        log_batch({**params, **d.split_params()})                          # ours first (autolog logs fit args)
        with keras_autolog(fam):
            model, fit_s = fit_timed(lambda: fit(d.train, intervals=False))
        log_epochs(fam, model)
        model = fit.add_intervals(model, d.train)  # (its calibration fit outside the autologged epochs)
        out = log_training(fam, model, params, d, fit_s, trend)
        print(f"{family}: r2 {out['r2']:.4f} rmse {out['rmse']:.3f} wind bias {out['bias_wind_GW']:+.2f} GW "
              f"on {d.spec.describe()} (fit {fit_s:.1f} s) -> {out['model_uri']}")
        if folds:  # (a fold's model is scored on its point forecast: its quantiles would cost one fit more)
            out.update(log_backtest(partial(fit, intervals=False), d, folds, trend,
                                    final=model if spec.split_by == "time" else None, label=family))
        return out


@contextmanager
def keras_autolog(family: Family) -> Iterator[None]:
    """Keras families: mlflow.keras.autolog around the fit (per-epoch metrics), then the metric `epochs_run`
    (read from the network's History by `log_epochs`)."""
    if family.flavor != "keras":
        yield
        return
    import mlflow

    mlflow.keras.autolog(log_models=False, log_datasets=False, silent=True)
    try:
        yield
    finally:
        mlflow.keras.autolog(disable=True)


def log_epochs(family: Family, model: Any) -> None:
    if family.flavor == "keras":
        import mlflow

        mlflow.log_metric("epochs_run", len(model.model.history.history.get("loss", [])))


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
        trend, folds = flag(time_features), as_int("backtest_folds", backtest_folds, 0)
        combos = [RFParams.check(n, dpt, min_samples_leaf, seed, n_jobs)
                  for n in as_int_list("n_estimators", n_estimators)
                  for dpt in as_depth_list("max_depth", max_depth)]
        rf = families.get("rf")
        d = load_data(data, spec, Path(tmp))
        if folds:
            backtest_windows(d.df, folds, spec.holdout_weeks)
        X, y = xy(d.train, trend)
        head = TrainingRows(d.train, trend).head()
        best: tuple[float, str, object, RFParams, float] | None = None
        for i, (p, core, fit_s) in enumerate(rf_grid(X, y, combos), 1):  # forests grow tree by tree count
            model = natural(core, trend, head=head)
            with child_run(f"rf_n{p.n_estimators}_d{p.max_depth}",
                           {names.STEP_TAG: "rf", names.ENTRY_TAG: "grid_child"}) as child:
                fault_point("rf:grid_child")
                out = log_training(rf, model, p.logged(), d, fit_s, trend, log_model_too=False, new_run=True)
            print(f"[{i}/{len(combos)}] n_estimators={p.n_estimators} max_depth={p.max_depth}: "
                  f"r2 {out['r2']:.4f} ({fit_s:.1f} s)", flush=True)
            if best is None or names.better(out["r2"], best[0], "r2"):
                best = (out["r2"], child.info.run_id, model, p, fit_s)
        r2, best_id, model, p, fit_s = best
        # (its quantiles: one fit more; the children's Forecast objects are the grid's own, the head is replaced)
        model = rf.add_intervals(model, TrainingRows(d.train, trend, spec.split_by, spec.seed), p)
        out = log_training(rf, model, {"best_n_estimators": p.n_estimators, "best_max_depth": p.max_depth,
                                       "min_samples_leaf": p.min_samples_leaf, "seed": p.seed,
                                       "grid_size": len(combos), "grid_n_estimators": str(n_estimators),
                                       "grid_max_depth": str(max_depth)},
                           d, fit_s, trend)
        mlflow.set_tag(names.BEST_RUN_TAG, best_id)
        print(f"best: n_estimators={p.n_estimators} max_depth={p.max_depth} r2 {r2:.4f} (run {best_id})"
              f" -> {out['model_uri']}")
        if folds:
            out.update(log_backtest(lambda train: rf.fit_natural(TrainingRows(train, trend), p, False), d, folds, trend,
                                    final=model if spec.split_by == "time" else None, label="rf grid best"))
        return {**out, "best_run_id": best_id}


def backtest(family: str, data: str, seed: str, holdout_weeks: str, time_features: str, backtest_folds: str,
             step_dir: Path | None = None, **family_params: str) -> dict[str, float]:
    """Rolling-origin backtest only: refit the family on everything before each of the last backtest_folds
    windows of holdout_weeks and score the window; log per-fold and mean metrics and a figure, no model."""
    with step_run(family, "backtest", step_dir=step_dir), tempfile.TemporaryDirectory() as tmp:
        spec = split_spec(seed, 0.2, "time", holdout_weeks)
        trend, folds = flag(time_features), as_int("backtest_folds", backtest_folds, 1)
        _fam, params, fit = family_fitter(family, family_params, spec, trend)
        d = load_data(data, spec, Path(tmp))
        backtest_windows(d.df, folds, spec.holdout_weeks)
        d.log_input("backtest")
        log_batch({**params, "data_uri": d.uri, "time_features": trend},
                  tags={names.FAMILY_TAG: family, names.TRAINING_DATA_TAG: d.uri, names.DATA_DATE_TAG: data_date(d.df)})
        return log_backtest(partial(fit, intervals=False), d, folds, trend, label=family)


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
                  {names.EVALUATED_MODEL_TAG: model_uri, names.TRAINING_DATA_TAG: d.uri, names.FAMILY_TAG: family,
                   names.DATA_DATE_TAG: data_date(rows)})
        print(f"evaluate {model_uri} on {scope} ({len(rows)} rows): r2 {metrics['eval_r2']:.4f}")
        return metrics


# ---------------------------------------------------------------- family specifics

def entry_points(family: str) -> dict[str, Callable[..., object]]:
    """A family's project entry points (`main`, `backtest`, `evaluate`) for its step.py."""
    return {"main": partial(train, family), "backtest": partial(backtest, family),
            "evaluate": partial(evaluate, family)}


def family_fitter(family: str, kw: dict[str, object], spec: SplitSpec,
                  trend: bool) -> tuple[Family, dict[str, object], Fitter]:
    """(the family, params to log, fit(training rows) -> natural model), after checking its parameters.

    `kw` holds the family's own parameters (rf: n_estimators, ...; keras: epochs, ...), `trend` says
    whether the model reads the time columns; a family that holds out rows for early stopping takes them
    from the training window (`spec.split_by=time`: the newest of them)."""
    fam = families.get(family)
    p = fam.parse(seed=spec.seed, **kw)
    return fam, fam.log_params(p, trend), Fitter(fam, p, spec, trend)


@dataclass(frozen=True)
class Fitter:
    """fit(training rows, intervals=True) -> the natural model a run logs (with its conformal quantiles unless
    `intervals` is False: the backtest's folds); `add_intervals` calibrates them for a model fitted without."""

    family: Family
    params: Any
    spec: SplitSpec
    trend: bool

    def rows(self, train: pd.DataFrame) -> TrainingRows:
        return TrainingRows(train, self.trend, self.spec.split_by, self.spec.seed)

    def __call__(self, train: pd.DataFrame, intervals: bool = True) -> Any:
        return self.family.fit_natural(self.rows(train), self.params, intervals)

    def add_intervals(self, model: Any, train: pd.DataFrame) -> Any:
        return self.family.add_intervals(model, self.rows(train), self.params)

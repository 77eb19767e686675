"""Every name the parts of windpipe share: columns, run and version tags, aliases, metric direction.

This module owns those contracts: no other module writes a tag string, an alias name or a
metric's direction. It imports nothing but `collections.abc`, so the lightest process (the marts writer)
can use it.
"""

from __future__ import annotations

from collections.abc import Mapping

# ---------------------------------------------------------------------------------- columns

TIMESTAMP = "utc_timestamp"
FEATURES = ["windspeed", "temperature", "rad_horizontal", "rad_diffuse"]
TARGETS = ["solar_GW", "wind_GW"]
PRED_COLUMNS = [f"{t}_pred" for t in TARGETS]  # solar_GW_pred, wind_GW_pred
# derived from utc_timestamp by windpipe.training.features for models that follow the trend
TIME_FEATURES = ["hour_sin", "hour_cos", "doy_sin", "doy_cos", "trend"]
# the quantiles an uncertainty forecast is judged at (P10, P50, P90): the 80 % interval is P10..P90
QUANTILES = (0.1, 0.5, 0.9)
INTERVAL = (0.1, 0.9)  # the quantiles that bound the interval whose coverage and width are measured


def quantile_column(target: str, q: float) -> str:
    """The column of quantile `q` of `target`: solar_GW_p10, wind_GW_p90, ..."""
    return f"{target}_p{round(q * 100):02d}"


# every target's quantiles, target by target (solar_GW_p10, solar_GW_p50, solar_GW_p90, wind_GW_p10, ...): the
# order of a model's quantile output, the batch output file and the output mart
QUANTILE_COLUMNS = [quantile_column(t, q) for t in TARGETS for q in QUANTILES]


# ---------------------------------------------------------------------------------- run tags

_P = "windpipe."
STEP_TAG = _P + "step"  # process, lr, rf, keras, compare, promote, predict, pipeline, ...
ENTRY_TAG = _P + "entry_point"  # main, grid, evaluate, grid_child, ...
CODE_VERSION_TAG = _P + "code_version"  # git commit + hash of the library and the step folder
DATA_DATE_TAG = _P + "data_date"  # last timestamp of the training data, YYYYMMDD
FAILURE_TAG = _P + "failure_reason"  # why a run FAILED (or was KILLED)
OUTCOME_TAG = _P + "outcome"  # a step's result in words, for the pipeline's summary (promote: "not promoted v1: ...")
PROCESS_TAG = _P + "process"  # "<host> <pid> <start time>" of the process running the run (finds killed runs)
MODEL_URI_TAG = _P + "model_uri"  # models:/m-... of the model the run logged
FAMILY_TAG = _P + "model_family"  # lr, rf, keras, gbm, ... (windpipe.training.families)
BEST_RUN_TAG = _P + "best_run_id"  # a grid parent or the compare step: the winning run
BEST_FAMILY_TAG = _P + "best_model_family"
EVALUATED_MODEL_TAG = _P + "evaluated_model_uri"
ENTITY_TAG_PREFIX = _P + "entity."  # + entity name: the URI of the entity a run wrote (`latest` finds it)
PROCESSED_TAG = ENTITY_TAG_PREFIX + "processed"  # the processed entity the process step wrote
INPUT_TAG_PREFIX = _P + "input."  # + entity name: the URI of the entity a run read (`latest` resolved)
TRAINING_DATA_TAG = INPUT_TAG_PREFIX + "processed"  # the processed entity a training (or evaluate) run read
# the pipeline driver and its cache
CACHE_KEY_TAG = _P + "cache_key"  # also on a model version: the work (step, code, params, inputs) that made it
UPSTREAM_TAG = _P + "upstream"
PIPELINE_RUN_TAG = _P + "pipeline_run_id"
# on a step run: the task of its pipeline run it belongs to (`predict.3` for a mapped one): an orchestrator's
# retry ends the RUNNING run a dead attempt left
TASK_TAG = _P + "task"
# on an orchestrated pipeline run from git: the commit its open task resolved `git_version` to; every task of
# the DAG run, on whichever worker, runs the steps at this commit (a branch that moves meanwhile changes nothing)
GIT_COMMIT_TAG = _P + "git_commit"
PIPELINE_STEP_TAG_PREFIX = _P + "pipeline."  # + step name, on the pipeline run: "<run id> ran|reused"
QUICK_TAG = _P + "quick"
FORCE_TAG = _P + "force"
ENV_MANAGER_TAG = _P + "env_manager"
PIPELINE_NAME_TAG = _P + "pipeline_name"  # on a pipeline run: training or prediction
ORCHESTRATOR_TAG = _P + "orchestrator"  # on a pipeline run: local (windpipe pipeline run) or airflow
DAG_RUN_TAG = _P + "airflow_dag_run"  # on a pipeline run an Airflow DAG run opened: <dag id>/<run id>
PROMOTE_TAG_PREFIX = _P + "promote."  # + field of the promotion result, on the promote step's run
# batch prediction
BATCH_ID_TAG = _P + "batch_id"
DRIFT_STATUS_TAG = _P + "drift_status"
DRIFT_REFERENCE_TAG = _P + "drift.reference"
PREDICT_MODEL_TAG = _P + "predict.model_uri"
MODEL_VERSION_TAG = _P + "model_version"
# performance monitoring (windpipe monitor)
MONITOR_STATUS_TAG = _P + "monitor_status"  # ok | degraded: did any batch's error pass the limit

# MLflow's own tags that windpipe reads or sets
MLFLOW_PARENT_RUN_TAG = "mlflow.parentRunId"
MLFLOW_GIT_COMMIT_TAG = "mlflow.source.git.commit"
MLFLOW_GIT_BRANCH_TAG = "mlflow.source.git.branch"
MLFLOW_PROJECT_ENV_TAG = "mlflow.project.env"
MLFLOW_PROJECT_ENTRY_TAG = "mlflow.project.entryPoint"
MLFLOW_PROJECT_BACKEND_TAG = "mlflow.project.backend"
MLFLOW_RUN_NAME_TAG = "mlflow.runName"
MLFLOW_USER_TAG = "mlflow.user"
MLFLOW_SOURCE_NAME_TAG = "mlflow.source.name"
MLFLOW_SOURCE_TYPE_TAG = "mlflow.source.type"
MLFLOW_GIT_REPO_URL_TAG = "mlflow.source.git.repoURL"

# ---------------------------------------------------------------------------------- version tags

INSTANCE_TAG = _P + "instance_name"  # <model>_v<version>_<data date>, e.g. wind_solar_v3_20161231
RUN_ID_TAG = _P + "run_id"
PREVIOUS_TAG = _P + "previous_production"
REASON_TAG = _P + "promotion_reason"
PROMOTED_AT_TAG = _P + "promoted_at"
ROLLED_BACK_AT_TAG = _P + "rolled_back_at"
GATE_TAG = _P + "gate"
HOLDOUT_TAG = _P + "holdout"
HOLDOUT_PREFIX = "holdout_"  # + metric: the version's score on its holdout

# ---------------------------------------------------------------------------------- alias history
# MLflow keeps no alias history, so each move windpipe makes is a run of its own experiment.

ALIAS_HISTORY_EXPERIMENT = "windpipe-alias-history"
MOVE_MODEL_TAG = _P + "move.model"
MOVE_ALIAS_TAG = _P + "move.alias"
MOVE_FROM_TAG = _P + "move.from_version"  # "" when the alias pointed nowhere
MOVE_TO_TAG = _P + "move.to_version"
MOVE_ACTION_TAG = _P + "move.action"  # first, promote, force, rollback, outside
MOVE_USER_TAG = _P + "move.user"
MOVE_HOST_TAG = _P + "move.host"
MOVE_REASON_TAG = _P + "move.reason"
MOVE_PIPELINE_TAG = _P + "move.pipeline_run_id"

# ---------------------------------------------------------------------------------- model metadata (MLmodel)

INPUT_COLUMNS_META = _P + "input_columns"  # the columns the model core reads, in order (older Keras: its input)

# ---------------------------------------------------------------------------------- aliases

PRODUCTION = "production"
CHALLENGER = "challenger"

# ---------------------------------------------------------------------------------- entities and steps

MODEL_ENTITY = "model"  # what a training step writes; its URI is in MODEL_URI_TAG


def entity_tag(entity: str) -> str:
    """The run tag holding the URI of `entity` that a run read or wrote: windpipe.entity.<name>."""
    return MODEL_URI_TAG if entity == MODEL_ENTITY else ENTITY_TAG_PREFIX + entity


def input_tag(entity: str) -> str:
    """The run tag holding the URI of `entity` that a run read: windpipe.input.<name>."""
    return INPUT_TAG_PREFIX + entity


def read_uri(tags: Mapping[str, str], entity: str = "processed") -> str | None:
    """The URI of `entity` that the run with `tags` read (a training run's data). Runs logged before the
    input tags existed recorded it under the entity tag, which now means what a run wrote."""
    return tags.get(input_tag(entity)) or tags.get(entity_tag(entity)) or None


LATEST = "latest"  # a step's input parameter: the entity the newest finished run wrote


def is_path(uri: str) -> bool:
    """True when `uri` names a local file rather than something MLflow downloads (runs:/, models:/, s3://...)."""
    return "://" not in uri and not uri.startswith(("runs:/", "models:/", "mlflow-artifacts:/"))


def pipeline_step_tag(step: str) -> str:
    return PIPELINE_STEP_TAG_PREFIX + step


def alias_uri(model_name: str, alias: str = PRODUCTION) -> str:
    """models:/<name>@<alias>."""
    return f"models:/{model_name}@{alias}"


def version_uri(model_name: str, version: int | str) -> str:
    """models:/<name>/<version>."""
    return f"models:/{model_name}/{version}"


def instance_name_for(model_name: str, version: int | str, data_date: str | None) -> str:
    """`<name>_v<version>_<data date>`: how a model instance is named everywhere."""
    return f"{model_name}_v{version}_{data_date or 'nodate'}"


# ---------------------------------------------------------------------------------- metric direction

#: metric names (or prefixes, before `_<target>`) where a bigger value is better
HIGHER_IS_BETTER = ("r2", "explained_variance", "accuracy", "f1", "precision", "recall", "auc")
#: signed errors (mean(predicted - recorded)): the one closest to zero is best
ZERO_IS_BEST = ("bias",)
#: metrics with a nominal value, the one closest to it is best: the share of recorded values inside the
#: P10..P90 interval (80 % for an honest interval)
NOMINAL = {"coverage80": 0.8}
#: the quantile metrics (windpipe.training.metrics.quantile_metrics): pinball loss averaged over QUANTILES (GW),
#: the interval's coverage (nominal 0.8) and mean width (GW); and the share of raw point predictions the model
#: clipped to [0, capacity] (lower is better, as for every metric not named above)
PINBALL, COVERAGE, WIDTH, CLIPPED = "pinball", "coverage80", "width80", "clipped_share"
#: prefixes that say where a metric was measured, not which way it ranks
METRIC_PREFIXES = (HOLDOUT_PREFIX, "val_", "eval_", "best_", "backtest_")


def _base(metric: str) -> str:
    """`holdout_r2_wind_GW` -> `r2_wind_GW`, `backtest_fold3_bias_wind_GW` -> `bias_wind_GW`."""
    base = metric.lower()
    for prefix in METRIC_PREFIXES:
        base = base.removeprefix(prefix)
    head, sep, rest = base.partition("_")
    if sep and head.startswith("fold") and head[4:].isdigit():  # a backtest fold's metric
        base = rest
    return base


def _is(base: str, family: tuple[str, ...]) -> bool:
    return any(base == m or base.startswith(f"{m}_") for m in family)


def higher_is_better(metric: str) -> bool:
    """True for metrics where bigger is better (`r2`, `r2_solar_GW`, `holdout_r2`, `backtest_r2`, ...).

    The one place that knows a metric's direction: `windpipe compare`, the pipeline's compare
    step and the promotion gate all rank through it (`zero_is_best` says when neither way is right).
    """
    return _is(_base(metric), HIGHER_IS_BETTER)


def zero_is_best(metric: str) -> bool:
    """True for signed errors (`bias_wind_GW`, `backtest_bias_solar_GW`): rank by distance from zero."""
    return _is(_base(metric), ZERO_IS_BEST)


def nominal(metric: str) -> float | None:
    """The value that is best for `metric` when it is neither higher nor lower (0 for a bias, 0.8 for the 80 %
    interval's coverage `coverage80_wind_GW`); None when bigger or smaller is simply better."""
    base = _base(metric)
    if _is(base, ZERO_IS_BEST):
        return 0.0
    return next((v for m, v in NOMINAL.items() if _is(base, (m,))), None)


def better(a: float, b: float, metric: str) -> bool:
    """True when `a` is strictly better than `b` for `metric`."""
    aim = nominal(metric)
    if aim is not None:
        return abs(a - aim) < abs(b - aim)
    return a > b if higher_is_better(metric) else a < b

"""Compare training runs: pure functions that return DataFrames and plotly figures.

Reads the runs of an experiment (default: `settings.experiment`) that FINISHED, logged a model
and carry the metric asked for; sorts them best first in the metric's direction
(`windpipe.names.higher_is_better`). `windpipe compare`, the pipeline's compare step and
`windpipe promote` all rank with `rank_runs`.

    from windpipe.models.compare import compare_runs, family_figure
    df = compare_runs(metric="rmse", top=5)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from windpipe import names
from windpipe.errors import WindpipeError, first_line
from windpipe.names import higher_is_better, zero_is_best
from windpipe.settings import Settings, get_settings
from windpipe.tracking.client import client as tracking_client

if TYPE_CHECKING:
    import plotly.graph_objects as go

HEADLINE_METRICS = ("rmse", "mae", "r2")
# the rolling-origin backtest's means (windpipe.training.backtest), shown beside the holdout when a run has them
BACKTEST_METRICS = ("backtest_r2", "backtest_bias_wind_GW")
ID_COLUMNS = ["run_id", "run_name", "family", "step", "entry_point", "status", "start_time", "data_date",
              "model_uri", "entity_uri", "parent_run_id"]
FORMATS = ("table", "csv", "json")


def get_experiment(client: Any, name: str) -> Any:
    """The active experiment called `name`; WindpipeError listing the available ones otherwise."""
    exp = client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage != "active":
        names = sorted(e.name for e in client.search_experiments())
        raise WindpipeError(f"There is no experiment {name!r} on this tracking server; "
                            f"available: {', '.join(names) or '(none)'}.",
                            "pass --experiment with one of those, or train a model first")
    return exp


def search_all_runs(client: Any, experiment_id: str, filter_string: str = "") -> list:
    """Every FINISHED run of an experiment matching `filter_string` (all pages)."""
    from mlflow.exceptions import MlflowException

    filt = "attributes.status = 'FINISHED'" + (f" and {filter_string}" if filter_string else "")
    runs, token = [], None
    while True:
        try:
            page = client.search_runs([experiment_id], filter_string=filt, max_results=1000, page_token=token)
        except MlflowException as exc:
            raise WindpipeError(f"The filter {filter_string!r} is not valid ({first_line(exc)}).",
                                "use MLflow search syntax, e.g. \"params.split_by = 'random'\" or "
                                "\"tags.`windpipe.model_family` = 'rf'\"") from None
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def runs_frame(runs: list) -> pd.DataFrame:
    """One row per run: identity columns, every metric (bare names) and every param (`params.<name>`)."""
    rows = []
    for r in runs:
        tags = r.data.tags
        row = {
            "run_id": r.info.run_id,
            "run_name": r.info.run_name,
            "family": tags.get(names.FAMILY_TAG, tags.get(names.STEP_TAG, "")),
            "step": tags.get(names.STEP_TAG, ""),
            "entry_point": tags.get(names.ENTRY_TAG, ""),
            "status": r.info.status,
            "start_time": pd.Timestamp(r.info.start_time, unit="ms", tz="UTC"),
            "data_date": tags.get(names.DATA_DATE_TAG, ""),
            "model_uri": tags.get(names.MODEL_URI_TAG, ""),
            "entity_uri": names.read_uri(tags) or "",  # the data the run trained on
            "parent_run_id": tags.get(names.MLFLOW_PARENT_RUN_TAG, ""),
        }
        row.update({k: float(v) for k, v in r.data.metrics.items()})
        row.update({f"params.{k}": v for k, v in r.data.params.items()})
        rows.append(row)
    df = pd.DataFrame(rows, columns=ID_COLUMNS if not rows else None)
    metric_cols = sorted({c for c in df.columns if c not in ID_COLUMNS and not c.startswith("params.")},
                         key=lambda c: (c not in HEADLINE_METRICS, HEADLINE_METRICS.index(c)
                                        if c in HEADLINE_METRICS else 0, c))
    param_cols = sorted(c for c in df.columns if c.startswith("params."))
    return df[ID_COLUMNS + metric_cols + param_cols]


def rank_runs(df: pd.DataFrame, metric: str = "rmse", top: int | None = None,
              require_model: bool = True) -> pd.DataFrame:
    """Keep runs with `metric` (and a model), best first; one row per model; add a 1-based `rank`."""
    if metric not in df.columns:
        raise WindpipeError(f"No run has the metric {metric!r}.", "pick a metric the runs logged")
    out = df[df[metric].notna()]
    if require_model:
        out = out[out["model_uri"].astype(str) != ""]
    key = out[metric].abs() if zero_is_best(metric) else out[metric]
    out = (out.assign(_key=key).sort_values(["_key", "start_time"], ascending=[not higher_is_better(metric), False],
                                            kind="stable").drop(columns="_key"))
    # a grid parent and its best child may name the same logged model: keep it once
    out = out[~(out["model_uri"].astype(str).ne("") & out["model_uri"].duplicated())]
    if top is not None:
        if top < 1:
            raise WindpipeError(f"--top must be at least 1, got {top}.", "pass --top 5, say")
        out = out.head(top)
    out = out.reset_index(drop=True)
    out.insert(0, "rank", range(1, len(out) + 1))
    return out


def compare_runs(settings: Settings | None = None, experiment: str | None = None, metric: str = "rmse",
                 filter_string: str = "", top: int | None = None, require_model: bool = True,
                 client: Any = None) -> pd.DataFrame:
    """The finished runs of `experiment` with `metric` and a model, best first.

    Unknown experiment or metric: WindpipeError listing the available ones.
    """
    settings = settings or get_settings()
    client = client or tracking_client(settings)
    name = experiment or settings.experiment
    exp = get_experiment(client, name)
    df = runs_frame(search_all_runs(client, exp.experiment_id, filter_string))
    if df.empty:
        where = f" matching {filter_string!r}" if filter_string else ""
        raise WindpipeError(f"The experiment {name!r} has no finished runs{where}.",
                            "train a model first (e.g. `mlflow run projects/lr`)"
                            + (", or loosen --filter" if filter_string else ""))
    if metric not in df.columns:
        known = available_metrics(df)
        raise WindpipeError(f"No run in {name!r} logged the metric {metric!r}; available: "
                            f"{', '.join(known) or '(none)'}.", "pass --metric with one of those")
    return rank_runs(df, metric, top, require_model)


def available_metrics(df: pd.DataFrame) -> list[str]:
    """The metric columns of a runs frame."""
    return [c for c in df.columns if c not in ID_COLUMNS and c != "rank" and not c.startswith("params.")]


def varying_params(df: pd.DataFrame) -> list[str]:
    """Param columns whose values differ between the rows (the ones worth reading)."""
    return [c for c in df.columns if c.startswith("params.") and df[c].astype(str).nunique(dropna=False) > 1]


def format_runs(df: pd.DataFrame, metric: str = "rmse", fmt: str = "table") -> str:
    """Render a ranked frame: `table` (readable, params that vary), `csv` or `json` (every column)."""
    if fmt not in FORMATS:
        raise WindpipeError(f"Unknown format {fmt!r}.", f"use one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return df.to_json(orient="records", date_format="iso", indent=2)
    if df.empty:
        return "(no runs)"
    metrics = [metric] + [m for m in (*HEADLINE_METRICS, *BACKTEST_METRICS) if m != metric and m in df.columns]
    cols = ["rank", "run_id", "family", "entry_point", "data_date", *metrics, *varying_params(df)]
    view = df[cols].rename(columns=lambda c: c.removeprefix("params."))
    return (f"sorted by {metric} ({direction(metric)})\n"
            + view.to_string(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-"))


def direction(metric: str) -> str:
    """How `metric` ranks, in words."""
    if zero_is_best(metric):
        return "closest to zero is best"
    return f"{'higher' if higher_is_better(metric) else 'lower'} is better"


# --------------------------------------------------------------------------------------- figures


def family_figure(df: pd.DataFrame, metric: str = "rmse") -> go.Figure:
    """Each run as a point per model family (hover: run id, name), the best run circled."""
    import plotly.express as px

    data = df.assign(run=df["run_id"].str[:8])
    fig = px.strip(data, x="family", y=metric, color="family", hover_data=["run", "run_name", "entry_point"],
                   title=f"{metric} by model family ({direction(metric)})")
    if not data.empty:
        best = data.iloc[0]
        fig.add_scatter(x=[best["family"]], y=[best[metric]], mode="markers", name=f"best ({best['run']})",
                        marker={"size": 18, "symbol": "circle-open", "color": "black"})
    return fig


def learning_curves(run_ids: list[str], keys: tuple[str, ...] = ("loss", "val_loss"),
                    client: Any = None, settings: Settings | None = None) -> pd.DataFrame:
    """Per-epoch metric history (Keras autolog) as a long frame: run_id, key, step, value."""
    client = client or tracking_client(settings)
    rows = []
    for run_id in run_ids:
        for key in keys:
            for m in client.get_metric_history(run_id, key):
                rows.append({"run_id": run_id, "key": key, "step": int(m.step), "value": float(m.value)})
    return pd.DataFrame(rows, columns=["run_id", "key", "step", "value"]).sort_values(
        ["run_id", "key", "step"], kind="stable").reset_index(drop=True)


def keras_run_ids(df: pd.DataFrame) -> list[str]:
    """The runs of a frame that trained a Keras model."""
    return df.loc[df["family"] == "keras", "run_id"].tolist()


def learning_curve_figure(curves: pd.DataFrame) -> go.Figure:
    """Loss per epoch, one colour per run, dashed for validation."""
    import plotly.express as px

    data = curves.assign(run=curves["run_id"].str[:8])
    fig = px.line(data, x="step", y="value", color="run", line_dash="key", markers=True,
                  title="Keras learning curves", labels={"step": "epoch", "value": "loss"})
    return fig

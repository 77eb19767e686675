"""The compare step: rank the models the training steps wrote, with the same function as `windpipe compare`.

Reads:  the model URIs of this pipeline run's training steps, and their runs' metrics.
Writes: tag windpipe.entity.candidate (the best model's URI, read by promote), metric
        best_<metric> and candidates, and compare.md (the ranking) on its run.
"""

from __future__ import annotations

from pathlib import Path

from windpipe import names
from windpipe.errors import UsageError, WindpipeError
from windpipe.models import loading
from windpipe.models.compare import rank_runs, runs_frame
from windpipe.tracking.client import mlflow_client
from windpipe.tracking.runs import step_run


def main(models: str, metric: str, step_dir: Path | None = None) -> str:
    """Pick the best of MODELS by METRIC; its URI becomes the candidate. Returns it."""
    import mlflow

    uris = [u.strip() for u in models.split(",") if u.strip()]
    with step_run("compare", "main", step_dir=step_dir):
        if not uris:
            raise UsageError("compare got no models.", "pass models=models:/m-...,models:/m-...")
        client = mlflow_client()
        runs = []
        for uri in uris:
            run_id = loading.resolve(uri, client=client).run_id
            if run_id is None:
                raise WindpipeError(f"The model {uri} was not logged by a run.", "pass models logged by the steps")
            runs.append(client.get_run(run_id))
        ranked = rank_runs(runs_frame(runs), metric)
        if ranked.empty:
            raise WindpipeError(f"None of the runs behind {', '.join(uris)} logged {metric!r} and a model.",
                                "check the training steps' runs, or choose another metric")
        best = ranked.iloc[0]
        lines = ["| rank | run | family | " + metric + " |", "|---|---|---|---|"]
        lines += [f"| {r['rank']} | {r['run_id']} | {r['family']} | {r[metric]:.4f} |" for _, r in ranked.iterrows()]
        mlflow.log_text("\n".join(lines) + "\n", "compare.md")
        mlflow.log_metrics({f"best_{metric}": float(best[metric]), "candidates": len(ranked)})
        mlflow.set_tags({names.BEST_RUN_TAG: best["run_id"], names.BEST_FAMILY_TAG: best["family"],
                         names.entity_tag("candidate"): best["model_uri"]})
        print("\n".join(lines))
        print(f"best by {metric}: run {best['run_id']} ({best[metric]:.4f}) -> {best['model_uri']}")
        return str(best["model_uri"])

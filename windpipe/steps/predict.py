"""The predict step: score a parquet batch with the production model, inside an MLflow run.

Reads:  IN.parquet (the four features; utc_timestamp optional) and models:/wind_solar@production
        (or --model-uri); the model's training entity (for drift, cached in <home>/cache/).
Writes: OUT.parquet (row_no, utc_timestamp, solar_GW_pred, wind_GW_pred, model_name, model_version,
        batch_id), one batch in the data marts, and a run tagged windpipe.step=predict with metrics
        rows, rows_dropped, rows_per_s, drift_psi_<feature>, drift_ks_<feature>.
"""

from __future__ import annotations

import time
from pathlib import Path

from windpipe import names
from windpipe.scoring import drift
from windpipe.scoring.batch import BatchResult, run_batch
from windpipe.settings import get_settings
from windpipe.stack import objects
from windpipe.steps.cli import flag
from windpipe.tracking.client import diagnose
from windpipe.tracking.runs import step_run


def main(input: str, output: str, model_uri: str | None = None, overwrite: bool = False,
         drop_invalid: bool = False, source: str = "cli", step_dir: Path | None = None) -> BatchResult:
    """Run one batch inside a `predict` run; return what was done.

    Everything the run logs goes to MLflow before the batch is committed: a tracking server or artifact
    store that is down (checked first, and again by the logging itself) leaves no file and no rows.
    """
    import mlflow

    objects.check_name(input, "input file")  # before the run: nothing is written for a name nothing can carry
    objects.check_name(output, "output file")
    with step_run("predict", step_dir=step_dir) as run:
        down = diagnose(get_settings())  # the artifact store, before scoring and committing anything
        if down is not None:
            raise down
        # (not the MLproject's parameter names: `mlflow run` logged those already)
        mlflow.log_params({"input_path": objects.absolute(input), "output_path": objects.absolute(output),
                           "model_requested": model_uri or "production alias", "source": source})
        started = time.perf_counter()

        def log(res: BatchResult) -> None:
            seconds = time.perf_counter() - started
            metrics = {"rows": res.rows, "rows_dropped": res.rows_dropped, "extra_columns": len(res.extra_columns),
                       "predict_seconds": seconds, "rows_per_s": res.rows / seconds if seconds else 0.0,
                       **{f"seconds_{k}": v for k, v in res.seconds.items() if k != "total"}}
            tags = {names.BATCH_ID_TAG: str(res.batch_id), names.DRIFT_STATUS_TAG: res.drift_status,
                    names.PREDICT_MODEL_TAG: res.model.load_uri}
            if res.model.version:
                tags[names.MODEL_VERSION_TAG] = res.model.version
            if res.model.instance_name:
                tags[names.INSTANCE_TAG] = res.model.instance_name
            if res.model.training_entity_uri:
                tags[names.DRIFT_REFERENCE_TAG] = res.model.training_entity_uri
            if res.drift is not None:
                metrics.update(drift.mlflow_metrics(res.drift))
                mlflow.log_dict(res.drift.to_dict("records"), "drift.json")
            mlflow.log_metrics(metrics)
            mlflow.set_tags(tags)

        res = run_batch(input, output, model_uri, overwrite, drop_invalid, source, run_id=run.info.run_id,
                        before_commit=log)
        seconds = time.perf_counter() - started
        print(f"scored {res.rows} rows with {res.model.name or res.model.load_uri} "
              f"v{res.model.version or '?'} in {seconds:.2f} s -> {res.output} "
              f"(batch {res.batch_id}, drift {res.drift_status})")
        if res.drift is not None:
            print(f"  drift against the training data's {res.drift['reference'].iloc[0]}:")
            for r in res.drift.itertuples():
                print(f"  {r.feature:<15} psi {r.psi:6.3f}  shift {r.shift:6.2f}  ks {r.ks:5.3f}  {r.status}")
        return res


def project_main(input: str, output: str, model_uri: str, overwrite: str, drop_invalid: str,
                 step_dir: Path | None = None) -> BatchResult:
    """Score INPUT with the production model (or MODEL_URI) and log the batch (`mlflow run projects/predict`)."""
    return main(input, output, model_uri or None, flag(overwrite), flag(drop_invalid), source="project",
                step_dir=step_dir)

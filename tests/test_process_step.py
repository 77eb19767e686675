"""`mlflow run projects/process`: the real CLI, a real server, local and virtualenv environments."""

from __future__ import annotations

import pandas as pd
import pytest

from windpipe.entities.schema import PROCESSED

from .conftest import latest_run, mlflow_run

pytestmark = pytest.mark.slow


def test_process_step_logs_entity_and_dataset(use_platform, raw_dir, tmp_path):
    import mlflow

    proc = mlflow_run(use_platform, "process", "-P", f"raw_dir={raw_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = latest_run(use_platform, "process")
    assert run.info.status == "FINISHED"
    assert run.data.tags["windpipe.data_date"] == "20131231"
    local = mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/entities/processed.parquet",
                                                dst_path=str(tmp_path))
    df = pd.read_parquet(local)
    PROCESSED.validate(df)
    assert run.data.metrics["rows"] == len(df)
    assert run.data.tags["windpipe.entity.processed"] == f"runs:/{run.info.run_id}/entities/processed.parquet"
    inputs = run.inputs.dataset_inputs
    assert [d.dataset.name for d in inputs] == ["processed"]
    # MLflow keeps one dataset per (name, digest) in an experiment, so the digest identifies the data
    # (its source is the first run that logged identical data)
    assert inputs[0].dataset.digest == mlflow.data.from_pandas(df).digest


def test_process_step_bad_raw_dir_fails_the_run_with_reason(use_platform, tmp_path):
    proc = mlflow_run(use_platform, "process", "-P", f"raw_dir={tmp_path / 'missing'}")
    assert proc.returncode != 0
    assert "does not exist" in proc.stderr and "windpipe data synth" in proc.stderr
    run = latest_run(use_platform, "process")
    assert run.info.status == "FAILED"
    assert "does not exist" in run.data.tags["windpipe.failure_reason"]
    assert not run.outputs or not run.outputs.model_outputs


def test_process_step_runs_in_its_own_virtualenv(use_platform, raw_dir):
    """The default environment manager builds the env from python_env.yaml (slow the first time)."""
    proc = mlflow_run(use_platform, "process", "-P", f"raw_dir={raw_dir}", env_manager="", timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = latest_run(use_platform, "process")
    assert run.data.tags.get("mlflow.project.env") == "virtualenv"
    assert run.info.status == "FINISHED"

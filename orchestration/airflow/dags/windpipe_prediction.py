"""windpipe's prediction pipeline as an airflow DAG: each new parquet file in the inbox is scored with the
production model into the data marts (scored files move to done/, refused ones to failed/); daily.

Built from the step interfaces (projects/*/step.yaml) by windpipe.pipeline.dags.build_dag, from the
same step graph `windpipe pipeline run` runs; each task runs its step as an `mlflow run` of its
project, a child of one MLflow pipeline run. Trigger it with a conf such as
{"inbox": "/data/inbox"}. See docs/orchestration.md.
"""

try:
    from windpipe.pipeline.dags import build_dag
    from windpipe.settings import get_settings
except ImportError as exc:  # airflow imports DAG files in its own environment: windpipe must be importable there
    raise ImportError(f"windpipe is not importable in Airflow's environment ({exc}). Fix: `make airflow` "
                      "(installs it with --no-deps), or put the checkout on PYTHONPATH.") from None

# this machine's settings: Airflow parses this file again where each task runs
dag = build_dag("prediction", settings=get_settings())

"""Run by tests/test_orchestration.py inside Airflow's own environment: .venv-airflow/bin/python airflow_env.py ...

    dagbag DAGS_DIR                 the DAGs Airflow builds from the DAG files: tasks, upstreams, import errors
    test DAGS_DIR DAG_ID CONF...     dag.test() once per conf, in this one process (Airflow builds its in-process
                                     execution API once); each run's state, task states and XComs

Prints one line `@@RESULT@@<json>`. Imports nothing of the main environment (no MLflow here).
"""

from __future__ import annotations

import json
import sys
import time


def dagbag(dags_dir: str) -> dict:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=dags_dir)
    dags = {dag_id: {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks} for dag_id, dag in bag.dags.items()}
    mapped = {dag_id: sorted(t.task_id for t in dag.tasks if type(t).__name__.endswith("MappedOperator"))
              for dag_id, dag in bag.dags.items()}
    schedules = {dag_id: getattr(dag.timetable, "expression", None) for dag_id, dag in bag.dags.items()}
    heavy = sorted(m for m in ("mlflow", "pandas", "sklearn") if m in sys.modules)
    return {"dags": dags, "mapped": mapped, "schedules": schedules, "heavy": heavy,
            "import_errors": {k.rsplit("/", 1)[-1]: v for k, v in bag.import_errors.items()}}


def dag_test(dags_dir: str, dag_id: str, confs: list[dict]) -> list[dict]:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag = DagBag(dag_folder=dags_dir).dags[dag_id]
    out = []
    for conf in confs:
        started = time.monotonic()
        dr = dag.test(run_conf=conf)
        seconds = time.monotonic() - started
        tis = {f"{ti.task_id}[{ti.map_index}]" if ti.map_index >= 0 else ti.task_id: str(ti.state)
               for ti in dr.get_task_instances()}
        with create_session() as session:
            rows = session.query(XComModel).filter_by(dag_id=dag_id, run_id=dr.run_id, key="return_value")
            xcom = {f"{r.task_id}[{r.map_index}]" if r.map_index >= 0 else r.task_id: r.value for r in rows}
        out.append({"state": str(dr.state), "tasks": tis, "xcom": xcom, "seconds": seconds, "run_id": dr.run_id})
    return out


if __name__ == "__main__":
    what = sys.argv[1]
    result = dagbag(sys.argv[2]) if what == "dagbag" else dag_test(sys.argv[2], sys.argv[3],
                                                                       [json.loads(c) for c in sys.argv[4:]])
    print("@@RESULT@@" + json.dumps(result, default=str), flush=True)

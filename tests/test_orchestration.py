"""The pipeline is its step interfaces: the plan, the graph and both Airflow DAGs come from step.yaml.

Fast tests build the DAG layout in this environment; the slow ones run Airflow 3 in its own
environment (`make airflow`, .venv-airflow): the DAG files import there, their tasks equal the
step graph, `dag.test()` runs both DAGs against the team stack (PostgreSQL, artifacts proxied to
S3, basic auth: the login reaches the tasks from the environment only), and `windpipe airflow up`
runs the prediction DAG through the scheduler against a local platform.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pytest

from windpipe.errors import UsageError, WindpipeError
from windpipe.pipeline.dags import CLOSE, INBOX, OPEN, dag_layout, run_command, task_command
from windpipe.pipeline.graph import build_graph
from windpipe.pipeline.inbox import Inbox
from windpipe.pipeline.interfaces import load_interfaces
from windpipe.pipeline.plan import config_from_conf, make_plan
from windpipe.pipeline.scaffold import new_step

from .conftest import REPO, Platform, platform_env, point_at, settings_from, stored_artifacts, trainers

if TYPE_CHECKING:
    from windpipe.settings import Settings

AIRFLOW_VENV = Path(os.environ.get("WINDPIPE_AIRFLOW_VENV", REPO / ".venv-airflow"))
AIRFLOW_PY = AIRFLOW_VENV / "bin" / "python"
DAGS = REPO / "orchestration" / "airflow" / "dags"
HELPER = Path(__file__).with_name("airflow_env.py")
TRAINING_STEPS = ["process", *trainers(), "compare", "promote"]


def upstreams(layout) -> dict[str, list[str]]:
    return {t.task_id: sorted(t.upstream) for t in layout}


@pytest.fixture
def projects(tmp_path) -> Path:
    """A copy of projects/ to add steps to and break."""
    dest = tmp_path / "projects"
    shutil.copytree(REPO / "projects", dest, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


# ---------------------------------------------------------------------------------------------- layout


def test_the_dags_follow_the_step_graph():
    training = {t.task_id: t for t in dag_layout("training")}
    assert list(training) == [OPEN, *TRAINING_STEPS, CLOSE]
    assert upstreams(training.values()) == {
        OPEN: [], "process": [OPEN], **{n: ["process"] for n in trainers()},
        "compare": trainers(), "promote": ["compare"], CLOSE: sorted(TRAINING_STEPS)}
    assert training[CLOSE].trigger_rule == "all_done" and not any(t.mapped for t in training.values())
    prediction = {t.task_id: t for t in dag_layout("prediction")}
    assert upstreams(prediction.values()) == {OPEN: [], INBOX: [OPEN], "predict": [INBOX], CLOSE: ["predict"]}
    assert prediction["predict"].mapped  # one task instance per inbox file
    graph = build_graph(load_interfaces(), "training")
    for name in graph.order:  # every dependency is a producer of what the step reads
        assert set(training[name].needs) == set(graph.needs(name))


def test_a_scaffolded_step_joins_the_plan_the_graph_and_both_dags(projects):
    new_step("weather_stats", inputs="processed", dest=projects)
    new_step("check_features", inputs="features", pipeline="prediction", dest=projects)
    specs = load_interfaces(projects)
    plan = make_plan(specs, "training", external={"raw": "/raw"})
    assert "weather_stats" in plan.names and plan.step("weather_stats").needs == ("process",)
    assert "weather_stats" in build_graph(specs).order and "check_features" in build_graph(specs).order
    training = upstreams(dag_layout("training", projects))
    assert training["weather_stats"] == ["process"] and "weather_stats" in training[CLOSE]
    prediction = {t.task_id: t for t in dag_layout("prediction", projects)}
    assert prediction["check_features"].upstream == (INBOX,) and prediction["check_features"].mapped
    assert "check_features" in prediction[CLOSE].upstream
    proc = subprocess.run([sys.executable, "-m", "windpipe", "steps", "--projects", str(projects)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "weather_stats" in proc.stdout and "check_features" in proc.stdout


def test_removing_an_input_from_step_yaml_changes_the_wiring(projects):
    spec = projects / "lr" / "step.yaml"
    text = spec.read_text()
    block = "inputs:\n  - entity: processed      # schema: windpipe.entities.schema.PROCESSED\n    parameter: data\n"
    assert block in text
    spec.write_text(text.replace(block, "inputs: []\n"))  # lr reads `latest` by itself
    assert upstreams(dag_layout("training", projects))["lr"] == [OPEN]  # lr no longer waits for process
    assert make_plan(load_interfaces(projects), external={"raw": "/raw"}).step("lr").needs == ()


@pytest.mark.parametrize("break_it, message", [
    (lambda p: (p / "lr" / "step.yaml").write_text("step: lr\ninputs: [candidate]\noutputs: [model]\n"),
     "cycle"),
    (lambda p: (p / "keras" / "step.yaml").write_text(
        "step: keras\ninputs: [{entity: ghost, columns: {v: float}}]\noutputs: [model]\n"),
     "'keras' reads the entity 'ghost', which no step"),
    (lambda p: (p / "rf" / "MLproject").unlink(), "has no MLproject"),
])
def test_a_broken_interface_stops_every_dag_with_the_step_and_the_fix(projects, break_it, message):
    break_it(projects)
    for pipeline in ("training", "prediction"):
        with pytest.raises(WindpipeError, match=message) as err:
            dag_layout(pipeline, projects)
        assert err.value.fix


def test_the_conf_of_a_dag_run_is_checked_like_the_command_line(tmp_path):
    config = config_from_conf("training", {"quick": "true", "params": {"rf.max_depth": "8,12", "keras": {"epochs": 2}}})
    assert config.preset == "quick" and config.overrides == {"rf": {"max_depth": "8,12"}, "keras": {"epochs": "2"}}
    assert config_from_conf("training", {"params": ["rf.max_depth=4"]}).overrides == {"rf": {"max_depth": "4"}}
    assert config_from_conf("prediction", {"inbox": str(tmp_path)}).inbox == str(tmp_path)
    assert config_from_conf("prediction", {"inbox": "s3://mlflow/inbox/"}).inbox == "s3://mlflow/inbox/"
    with pytest.raises(UsageError, match="unknown key.*'quik'.*takes raw, quick"):
        config_from_conf("training", {"quik": True})
    with pytest.raises(UsageError, match="force must be true or false"):
        config_from_conf("training", {"force": "maybe"})
    pinned = config_from_conf("training", {"from_git": " https://git.example/windpipe.git ", "git_version": "v2"})
    assert (pinned.git_uri, pinned.git_version) == ("https://git.example/windpipe.git", "v2")
    with pytest.raises(UsageError, match="git_version 'v2' needs from_git"):
        config_from_conf("training", {"git_version": "v2"})
    with pytest.raises(UsageError, match="from_git must be a string"):
        config_from_conf("training", {"from_git": ["https://git.example/windpipe.git"]})
    bad = config_from_conf("training", {"params": {"rf.max_dpeth": "3"}})
    with pytest.raises(WindpipeError, match=r"Step 'rf' \(grid entry point\) has no parameter 'max_dpeth' "
                                            r"\(the DAG run's conf.*max_depth"):
        make_plan(load_interfaces(), overrides=bad.overrides, external={"raw": "/raw"}, source=bad.source)
    # the open task runs the same check (and exits 2) before any run exists
    proc = subprocess.run([sys.executable, "-m", "windpipe", "pipeline", "open", "--dag-run", "d/r", "--conf",
                           json.dumps({"params": {"rf.max_dpeth": 3}})], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no parameter 'max_dpeth'" in proc.stderr and "Traceback" not in proc.stderr


def injection_conf(marker: Path) -> dict:
    """The conf a hostile test used to run `touch` on the worker through Airflow's templates (issue: template
    injection): a value that closes shell quoting, and a template that would render it into the command."""
    return {"params": {"x": f"' ; touch {marker} ; echo '"}, "raw": "{{ dag_run.conf.params.x }}"}


def test_tasks_pass_what_users_write_on_stdin_never_in_the_command_line(tmp_path, capsys):
    open_, step, close = (t for t in dag_layout("training") if t.task_id in (OPEN, "rf", CLOSE))
    marker = tmp_path / "pwned"
    conf = injection_conf(marker)
    cmd = task_command(step, "training", conf, "/venv/bin", pipeline_run="r" * 32, upstream={"process": "p" * 32})
    assert cmd.argv == ["/venv/bin/windpipe", "pipeline", "step", "rf", "--pipeline", "training", "--stdin"]
    assert json.loads(cmd.stdin) == {"conf": conf, "pipeline_run": "r" * 32, "upstream": {"process": "p" * 32}}
    assert task_command(open_, "training", conf, "/venv/bin", dag_run="d/r").argv[-1] == "--stdin"
    assert "files" not in json.loads(task_command(close, "training", {}, "/venv/bin", pipeline_run="r" * 32).stdin)
    box = next(t for t in dag_layout("prediction") if t.task_id == INBOX)
    cmd = task_command(box, "prediction", {"inbox": "s3://b/in/"}, "/venv/bin", pipeline_run="r" * 32)
    assert cmd.argv == ["/venv/bin/windpipe", "pipeline", "inbox", "--pipeline", "prediction", "--stdin"]
    assert json.loads(cmd.stdin) == {"conf": {"inbox": "s3://b/in/"}, "pipeline_run": "r" * 32}

    # for real, as the open task runs it: the conf arrives as written and is refused; nothing is executed
    with pytest.raises(RuntimeError, match="exited with code 2"):
        run_command(task_command(open_, "training", conf, Path(sys.executable).parent, dag_run="d/r"), env={})
    out = capsys.readouterr().out
    assert "Cannot read the DAG run's conf params \"x=' ; touch" in out and "Traceback" not in out, out
    assert not marker.exists()
    # a conf larger than the kernel takes as one argument (128 KB) reaches the command whole
    # (pointed at a platform that is not running: one on the default ports, a developer's, would take the run)
    big = {"params": {"rf.max_depth": "8," * 100_000 + "8"}, "raw": str(tmp_path)}
    with pytest.raises(RuntimeError, match="exited with code"):
        run_command(task_command(open_, "training", big, Path(sys.executable).parent, dag_run="d/r"),
                    env=platform_env(tmp_path / "no-platform"))
    assert "Argument list too long" not in capsys.readouterr().out


def test_a_dag_runs_conf_names_absolute_folders_numbers_and_managers_that_work_here(tmp_path):
    with pytest.raises(UsageError, match="raw must be an absolute path.*temporary folder"):
        config_from_conf("training", {"raw": "data/raw"})
    with pytest.raises(UsageError, match="inbox must be an absolute path"):
        config_from_conf("prediction", {"inbox": "inbox"})
    with pytest.raises(UsageError, match="Unknown environment manager 'docker'.*env_manager"):
        config_from_conf("training", {"env_manager": "docker"})
    with pytest.raises(UsageError, match="conda environment manager needs `conda`"):
        config_from_conf("training", {"env_manager": "conda"})
    config = config_from_conf("training", {"raw": str(tmp_path), "params": {"keras.epochs": "{{ 7*7 }}"}})
    with pytest.raises(WindpipeError, match=r"Step 'keras' parameter 'epochs' must be a number, got '\{\{ 7\*7 \}\}'"):
        make_plan(load_interfaces(), overrides=config.overrides, external={"raw": "/raw"}, source=config.source)


# ---------------------------------------------------------------------------------------------- Airflow


def airflow_output(*args: str, env: dict[str, str], timeout: float = 1200) -> tuple[object, str]:
    """Run tests/airflow_env.py in Airflow's own environment; return its result and all it printed (under
    `dag.test()` that is the tasks' logs: the commands they ran and their output)."""
    proc = subprocess.run([str(AIRFLOW_PY), str(HELPER), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("@@RESULT@@")), None)
    assert proc.returncode == 0 and line, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(line.removeprefix("@@RESULT@@")), proc.stdout + proc.stderr


def airflow(*args: str, env: dict[str, str], timeout: float = 1200) -> object:
    """Run tests/airflow_env.py in Airflow's own environment; return its result."""
    return airflow_output(*args, env=env, timeout=timeout)[0]


def airflow_env(home: Path, base: dict[str, str], dags: Path = DAGS, settings: Settings | None = None,
                **extra: str) -> dict[str, str]:
    """Airflow's settings as `windpipe airflow up` makes them (for `settings`, else the platform `base` names),
    in a private AIRFLOW_HOME."""
    from windpipe.stack.airflow_server import airflow_env as env_of

    settings = settings or (settings_from(base) if "WINDPIPE_MLFLOW_PORT" in base else None)
    env = env_of(settings, base) if settings else dict(base)
    env.update({"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "WINDPIPE_BIN_DIR": str(Path(sys.executable).parent),
                **extra})
    return env


needs_airflow = pytest.mark.skipif(not AIRFLOW_PY.exists(), reason="Airflow's environment is missing: `make airflow`")


@pytest.fixture(scope="module")
def migrated(tmp_path_factory) -> Path:
    """`airflow db migrate` once (dag.test needs the tables); each test copies the database."""
    home = tmp_path_factory.mktemp("airflow-template")
    env = airflow_env(home, dict(os.environ))
    proc = subprocess.run([str(AIRFLOW_VENV / "bin" / "airflow"), "db", "migrate"], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return home / "airflow.db"


@pytest.fixture
def team_corner(team_platform: Platform, request: pytest.FixtureRequest,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    """The session's team platform, with an experiment and a registered model of this test's own
    (WINDPIPE_EXPERIMENT, WINDPIPE_MODEL_NAME: other tests share the server); this process is its client."""
    name = request.node.name.removeprefix("test_")[:40]
    model = f"wind_solar_{name}"
    own = {"WINDPIPE_EXPERIMENT": name, "WINDPIPE_MODEL_NAME": model}
    p = Platform(team_platform.settings.model_copy(update={"experiment": name, "model_name": model}),
                 {**team_platform.env, **own})
    for key, value in own.items():
        monkeypatch.setenv(key, value)
    yield point_at(p, monkeypatch)
    from windpipe.marts import tables
    from windpipe.settings import clear_settings_cache

    tables.dispose_engines()
    clear_settings_cache()


def airflow_home(migrated: Path, tmp_path: Path) -> Path:
    """A private AIRFLOW_HOME whose database is a copy of the migrated one."""
    home = tmp_path / "airflow"
    home.mkdir()
    shutil.copy(migrated, home / "airflow.db")
    return home


def assert_no_secret(secret: str, output: str, *folders: Path) -> None:
    """`secret` is in no line Airflow printed for the tasks and in no file it wrote (task logs, its database).
    (The checks are booleans: a failure must not print the secret either.)"""
    leaked = secret in output
    assert not leaked, "the password is in what Airflow printed for the tasks"
    for folder in folders:
        for f in folder.rglob("*"):
            leaked = f.is_file() and secret.encode() in f.read_bytes()
            assert not leaked, f"the password is in {f}"


@pytest.mark.slow
@needs_airflow
def test_dag_files_import_in_airflows_environment_and_equal_the_step_graph(projects, tmp_path):
    env = airflow_env(tmp_path / "home", dict(os.environ), WINDPIPE_PROJECTS=str(projects))
    new_step("weather_stats", inputs="processed", dest=projects)
    new_step("check_features", inputs="features", pipeline="prediction", dest=projects)
    bag = airflow("dagbag", str(DAGS), env=env)
    assert bag["import_errors"] == {} and bag["heavy"] == []  # no MLflow or pandas needed to build them
    for pipeline, dag_id in (("training", "windpipe_training"), ("prediction", "windpipe_prediction")):
        assert bag["dags"][dag_id] == upstreams(dag_layout(pipeline, projects))
    assert "weather_stats" in bag["dags"]["windpipe_training"]
    assert bag["mapped"]["windpipe_prediction"] == ["check_features", "predict"]
    assert bag["schedules"] == {"windpipe_training": "0 0 * * 0", "windpipe_prediction": "0 0 * * *"}

    # a DAG file that cannot be built: Airflow's import error is windpipe's message, not frames from inside
    (projects / "lr" / "step.yaml").write_text("step: lr\ninputs: [candidate]\noutputs: [model]\n")
    broken = airflow("dagbag", str(DAGS), env=env)
    assert broken["dags"] == {}
    for name in ("windpipe_training.py", "windpipe_prediction.py"):
        error = broken["import_errors"][name]
        assert "The step interfaces form a cycle" in error and "fix:" in error, error
        assert "graph.py" not in error and "interfaces.py" not in error, error


def _pipeline_runs(p) -> list:
    import mlflow

    mlflow.set_tracking_uri(p.tracking_uri)
    return mlflow.search_runs(experiment_names=[p.settings.experiment], output_format="list",
                              filter_string="tags.`windpipe.step` = 'pipeline'", order_by=["start_time DESC"])


def _steps_of(parent) -> dict[str, tuple[str, str]]:
    return {k.removeprefix("windpipe.pipeline."): tuple(v.split(" ")[:2]) for k, v in parent.data.tags.items()
            if k.startswith("windpipe.pipeline.")}


@pytest.mark.slow
@needs_airflow
def test_training_dag_runs_every_step_as_a_child_then_reuses_them(team_corner, migrated, raw_dir, tmp_path):
    """On the team stack (the DAGs do not care which; its login, proxy and PostgreSQL are what can break)."""
    import mlflow

    p = team_corner
    home = airflow_home(migrated, tmp_path)
    code = tmp_path / "code"  # the code version keys the cache: run from a copy nobody edits meanwhile
    shutil.copytree(REPO / "windpipe", code / "windpipe", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "projects", code / "projects", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    env = airflow_env(home, p.env, settings=p.settings, PYTHONPATH=str(code), WINDPIPE_PROJECTS=str(code / "projects"))
    quick = {"raw": str(raw_dir), "quick": True}
    marker = tmp_path / "pwned"
    (bad, injected, templated, cold, warm), output = airflow_output(
        "test", str(DAGS), "windpipe_training", json.dumps({**quick, "params": {"rf.x": 1}}),
        json.dumps(injection_conf(marker)), json.dumps({**quick, "params": {"keras.epochs": "{{ 7*7 }}"}}),
        json.dumps(quick), json.dumps(quick), env=env)
    assert_no_secret(p.env["MLFLOW_TRACKING_PASSWORD"], output, home)

    # a parameter the step does not declare: the open task refuses it, nothing runs, the DAG run fails
    assert bad["state"] == "failed" and bad["tasks"][OPEN] == "failed"
    assert {bad["tasks"][s] for s in TRAINING_STEPS} == {"upstream_failed"}
    # templates in a conf are not rendered: the values arrive as written and are refused; nothing is executed
    for run in (injected, templated):
        assert run["state"] == "failed" and run["tasks"][OPEN] == "failed", run
        assert {run["tasks"][s] for s in TRAINING_STEPS} == {"upstream_failed"}
    assert not marker.exists()
    assert "parameter 'epochs' must be a number, got '{{ 7*7 }}'" in output

    assert cold["state"] == "success", cold
    runs = _pipeline_runs(p)
    assert len(runs) == 2  # one per good DAG run; the bad conf opened none
    first, second = runs[1], runs[0]
    assert cold["xcom"][OPEN] == first.info.run_id and first.info.status == "FINISHED"
    assert first.data.tags["windpipe.orchestrator"] == "airflow"
    steps = _steps_of(first)
    assert {s: how for s, (_, how) in steps.items()} == {s: "ran" for s in TRAINING_STEPS}
    for name, (run_id, _) in steps.items():  # run ids travel by XCom; each step is a child of the pipeline run
        assert cold["xcom"][name] == run_id
        child = mlflow.get_run(run_id)
        assert child.data.tags["mlflow.parentRunId"] == first.info.run_id and child.info.status == "FINISHED"
        assert child.data.tags["mlflow.project.entryPoint"] == ("grid" if name == "rf" else "main")
    assert mlflow.get_run(steps["lr"][0]).data.params["data"] == mlflow.get_run(
        steps["process"][0]).data.tags["windpipe.entity.processed"]
    version = mlflow.MlflowClient().get_model_version_by_alias(p.settings.model_name, "production")
    assert version.run_id == mlflow.get_run(steps["compare"][0]).data.tags["windpipe.best_run_id"]
    # the promoted model went through the tracking server's proxy into the S3 bucket
    model_id = mlflow.get_run(version.run_id).data.tags["windpipe.model_uri"].removeprefix("models:/")
    exp = first.info.experiment_id
    assert "artifacts/MLmodel" in stored_artifacts(p, f"{exp}/models/{model_id}"), (
        model_id, version.model_id, sorted(stored_artifacts(p, f"{exp}/models"))[:10])

    # run again: every step reused, no new step run; the local driver reuses them too (the same cache)
    assert warm["state"] == "success" and second.info.status == "FINISHED"
    assert {s: v for s, v in _steps_of(second).items()} == {s: (rid, "reused") for s, (rid, _) in steps.items()}
    proc = subprocess.run([sys.executable, "-m", "windpipe", "pipeline", "run", "--raw", str(raw_dir), "--quick"],
                          env={**p.env, "PYTHONPATH": str(code), "WINDPIPE_PROJECTS": str(code / "projects")},
                          capture_output=True, text=True, timeout=900, cwd=code)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    local = _pipeline_runs(p)[0]
    assert {s: v for s, v in _steps_of(local).items()} == {s: (rid, "reused") for s, (rid, _) in steps.items()}


def _stored(p, prefix: str) -> list[str]:
    """What the team stack's bucket holds below the S3 prefix, relative to it (its own listing)."""
    from windpipe.stack import objects

    return sorted(e.name for e in objects.listing(prefix, p.settings, deep=True))


def _airflow_test(env: dict[str, str], conf: dict) -> subprocess.Popen:
    """`dag.test()` of the prediction DAG in Airflow's environment, in the background (see airflow_output)."""
    return subprocess.Popen([str(AIRFLOW_PY), str(HELPER), "test", str(DAGS), "windpipe_prediction", json.dumps(conf)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
@needs_airflow
def test_prediction_dag_on_the_team_stack(team_corner, migrated, tmp_path):
    """The prediction DAG under `dag.test()` on the team stack, its inbox an S3 prefix (s3://<bucket>/inbox-.../):
    six objects, one bad, two named to run code through Airflow's templates. Five batches land in PostgreSQL's marts
    holding the five files' rows; each object ends in done/ or failed/ once; run again, nothing is scored; two DAG
    runs at once over new objects score each once. The login reaches the tasks from the environment only: the
    password is in no command, log line or file."""
    import uuid

    import mlflow

    from tests.models import log_registered_model, tiny_processed
    from windpipe.marts import queries, tables
    from windpipe.names import BATCH_ID_TAG, FEATURES, TIMESTAMP
    from windpipe.stack import objects, s3

    p = team_corner
    password = p.env["MLFLOW_TRACKING_PASSWORD"]
    model = log_registered_model(p, tmp_dir=tmp_path)
    prefix = f"s3://{p.settings.team.s3_bucket}/inbox-{uuid.uuid4().hex[:8]}/"
    client = s3.client(p.settings)

    def put(name: str, df: pd.DataFrame) -> None:
        client.put_object(Bucket=p.settings.team.s3_bucket, Key=objects.split(prefix + name)[1],
                          Body=df.to_parquet(index=False))

    data = tiny_processed(600)[[TIMESTAMP, *FEATURES]]
    # two names that once ran code through Airflow's templates (issue: template injection): scored as named
    evil = ["e{{(params|string)[1]}};touch ${WINDPIPE_HOME}_PWNED;#.parquet", "x{{7*7}}.parquet"]
    good = dict(zip([*evil, "a.parquet", "b.parquet", "new.parquet"], (24, 30, 36, 42, 48), strict=True))
    start = 0
    for name, rows in good.items():
        put(name, data.iloc[start:start + rows])
        start += rows
    put("bad.parquet", data.iloc[:10].drop(columns=["windspeed"]))
    home = airflow_home(migrated, tmp_path)
    env = airflow_env(home, p.env, settings=p.settings)
    (first, again), output = airflow_output("test", str(DAGS), "windpipe_prediction", json.dumps({"inbox": prefix}),
                                            json.dumps({"inbox": prefix}), env=env)
    # the bad object fails its task and the DAG run (someone should look at it); the others are scored all the same
    assert first["state"] == "failed" and first["tasks"]["close"] == "failed", output[-4000:]
    assert again["state"] == "success", output[-4000:]
    assert_no_secret(password, output, home)
    assert not Path(env["WINDPIPE_HOME"] + "_PWNED").exists()
    stored = _stored(p, prefix)
    assert [k for k in stored if not k.startswith("done/") and not k.startswith("failed/")] == [], stored
    assert sorted(k.removeprefix("done/") for k in stored if k.startswith("done/") and ".predictions." not in k) == \
        sorted(good)  # each once, under its own name (x49.parquet would be a rendered template)
    assert [k for k in stored if k.startswith("failed/")] == ["failed/bad.parquet", "failed/bad.parquet.reason.txt"]
    with objects.local_copy(prefix + "failed/bad.parquet.reason.txt", p.settings) as reason:
        assert "predict failed" in reason.read_text() and "windspeed" in reason.read_text()

    engine = tables.get_engine(p.settings.effective_marts_url)
    assert engine.dialect.name == "postgresql"

    def batches() -> pd.DataFrame:
        found = queries.latest_batches(engine, limit=1000)
        return found[found.model_name == p.settings.model_name]

    mine = batches()
    assert sorted(mine.row_count) == sorted(good.values())  # five batches, the five files' rows, none twice
    assert sum(len(queries.batch_rows(engine, int(b))) for b in mine.id) == sum(good.values())
    assert set(mine.status) == {"complete"} and set(mine.source) == {"project"}

    parent, rerun = _pipeline_runs(p)[1], _pipeline_runs(p)[0]
    assert parent.info.status == "FAILED" and parent.data.tags["windpipe.orchestrator"] == "airflow"
    assert parent.data.tags["windpipe.entity.production"] == f"models:/{p.settings.model_name}/{model['version']}"
    steps = _steps_of(parent)
    assert sorted(how for _, how in steps.values()) == ["failed", *["ran"] * 5], steps
    assert rerun.info.status == "FINISHED" and _steps_of(rerun) == {}  # nothing new: nothing scored
    # new.parquet's batch: read from S3, predictions written back to S3 beside it, artifacts through the proxy
    run_id = next(rid for rid, how in steps.values() if how == "ran" and mlflow.get_run(rid).data.params[
        "input_path"].endswith("/new.parquet"))
    predict = mlflow.get_run(run_id)
    assert predict.data.params["input_path"].startswith(prefix + "claimed/")
    scored = [k for k in stored if k.startswith("done/new.") and k.endswith(".predictions.parquet")]
    with objects.local_copy(prefix + scored[0], p.settings) as out:
        out = pd.read_parquet(out)
    assert len(out) == 48 and set(out.batch_id) == {int(predict.data.tags[BATCH_ID_TAG])}
    leaked = password in json.dumps([predict.data.params, predict.data.tags])
    assert not leaked, "the password is in the predict run's params or tags"
    assert "artifacts/drift.json" in stored_artifacts(p, f"{predict.info.experiment_id}/{run_id}")

    # two DAG runs at once (two Airflows) over new objects: each object is scored once
    more = {"c.parquet": 12, "d.parquet": 18}
    for name, rows in more.items():
        put(name, data.iloc[start:start + rows])
        start += rows
    for i in (1, 2):
        (tmp_path / f"concurrent{i}").mkdir()
    homes = [airflow_home(migrated, tmp_path / f"concurrent{i}") for i in (1, 2)]
    procs = [_airflow_test(airflow_env(h, p.env, settings=p.settings), {"inbox": prefix}) for h in homes]
    outs = [proc.communicate(timeout=1200)[0] for proc in procs]
    for proc, out in zip(procs, outs, strict=True):
        assert proc.returncode == 0 and '"state": "success"' in out, out[-4000:]
    assert sorted(batches().row_count) == sorted([*good.values(), *more.values()])
    stored = _stored(p, prefix)
    assert sorted(k.removeprefix("done/") for k in stored if k.startswith("done/") and ".predictions." not in k) == \
        sorted([*good, *more]) and not [k for k in stored if k.startswith("claimed/")]
    ran = [how for run in _pipeline_runs(p)[:2] for _, how in _steps_of(run).values()]
    assert ran == ["ran"] * len(more), ran


@pytest.mark.slow
@needs_airflow
def test_airflow_up_without_the_login_the_tasks_need_starts_nothing(team_platform):
    """The team stack asks for a login and the environment has none: every task would fail on HTTP 401, so
    `windpipe airflow up` says so, with the fix, before it starts or writes anything."""
    from windpipe.stack.procs import free_port

    p = team_platform
    env = {k: v for k, v in p.env.items() if not k.startswith(("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"))}
    env.update({"WINDPIPE_AIRFLOW_PORT": str(free_port()), "WINDPIPE_AIRFLOW_VENV": str(AIRFLOW_VENV)})
    cmd = [sys.executable, "-m", "windpipe", "airflow"]
    proc = subprocess.run([*cmd, "up"], env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    if proc.returncode == 0:  # (it started after all: stop it)
        subprocess.run([*cmd, "down"], env=env, capture_output=True, timeout=300, cwd=REPO)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert "Airflow's tasks could not log in" in proc.stderr and "asks for a login (HTTP 401)" in proc.stderr
    assert 'eval "$(windpipe env)"' in proc.stderr
    assert not (p.home / "airflow").exists() and not list((p.home / "run").glob("airflow-*"))


@pytest.mark.slow
@needs_airflow
def test_airflow_serves_the_dags_and_the_prediction_dag_scores_each_new_file_once(make_platform, tmp_path):
    """`windpipe airflow up` for real (127.0.0.1, a password nobody printed), then the prediction DAG through
    the scheduler: two inbox files, one bad: one batch in the marts, the bad file in failed/ with its
    reason; the good file dropped in again is not scored twice."""
    import urllib.error
    import urllib.request

    from tests.models import log_registered_model, tiny_processed
    from windpipe.marts import queries, tables
    from windpipe.names import FEATURES, TIMESTAMP
    from windpipe.stack import airflow_server
    from windpipe.stack.procs import free_port

    p = make_platform()
    box = tmp_path / "inbox"
    env = {**p.env, "WINDPIPE_AIRFLOW_PORT": str(free_port()), "WINDPIPE_INBOX": str(box),
           "WINDPIPE_AIRFLOW_VENV": str(AIRFLOW_VENV)}
    settings = settings_from(env).model_copy(update={"airflow_port": int(env["WINDPIPE_AIRFLOW_PORT"])})
    try:
        up = p.windpipe("airflow", "up", extra_env=env, timeout=900)
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        secret = p.home / "airflow_passwords.json"
        assert secret.stat().st_mode & 0o777 == 0o600
        password = json.loads(secret.read_text())["admin"]
        logs = "".join(f.read_text(errors="replace") for f in (p.home / "logs").glob("airflow-*.log"))
        assert password not in logs + up.stdout + up.stderr and "Password for user" not in logs
        status = p.windpipe("airflow", "status", extra_env=env)
        assert status.returncode == 0 and status.stdout.count("up   airflow") == 3, status.stdout
        with pytest.raises(urllib.error.HTTPError) as refused:  # no anonymous access
            urllib.request.urlopen(f"{settings.airflow_url}/api/v2/dags", timeout=10)
        assert refused.value.code == 401
        token = airflow_server.token(settings)
        for dag_id in ("windpipe_training", "windpipe_prediction"):
            airflow_server.wait_for_dag(settings, dag_id, token)
        again = p.windpipe("airflow", "up", extra_env=env)
        assert again.returncode == 0 and "already running" in again.stdout

        model = log_registered_model(p, tmp_dir=tmp_path)
        box.mkdir()
        frame = tiny_processed(48)[[TIMESTAMP, *FEATURES]]
        frame.to_parquet(box / "good.parquet", index=False)
        frame.drop(columns=["windspeed"]).to_parquet(box / "bad.parquet", index=False)
        first = p.windpipe("airflow", "trigger", "windpipe_prediction", "--wait", extra_env=env, timeout=900)
        # a refused file fails the DAG run (someone should look at it); the good one is scored all the same
        assert first.returncode == 1 and "failed" in first.stdout, first.stdout[-3000:] + first.stderr[-3000:]
        engine = tables.get_engine(p.settings.effective_marts_url)
        assert queries.count_rows(engine)["batches"] == 1
        predictions = [f.name for f in (box / "done").glob("good.*.predictions.parquet")]
        assert sorted(f.name for f in (box / "done").iterdir()) == sorted(["good.parquet", *predictions])
        assert len(pd.read_parquet(box / "done" / predictions[0])) == 48
        assert (box / "failed" / "bad.parquet").exists() and Inbox(str(box), p.settings).new() == []
        reason = (box / "failed" / "bad.parquet.reason.txt").read_text()
        assert "predict failed" in reason and "windspeed" in reason, reason
        parent = _pipeline_runs(p)[0]
        assert parent.info.status == "FAILED" and parent.data.tags["windpipe.orchestrator"] == "airflow"
        assert parent.data.tags["windpipe.entity.production"] == f"models:/{p.settings.model_name}/{model['version']}"
        assert {k: v[1] for k, v in _steps_of(parent).items()} == {"predict.0": "failed", "predict.1": "ran"}

        # the same bytes again (the content is the identity): not scored twice, filed with a note; then nothing new
        shutil.copy(box / "done" / "good.parquet", box / "good.parquet")
        for _ in range(2):
            rerun = p.windpipe("airflow", "trigger", "windpipe_prediction", "--wait", extra_env=env, timeout=900)
            assert rerun.returncode == 0 and "success" in rerun.stdout, rerun.stdout[-3000:] + rerun.stderr[-3000:]
        assert queries.count_rows(engine)["batches"] == 1
        runs = _pipeline_runs(p)
        assert [r.info.status for r in runs[:2]] == ["FINISHED", "FINISHED"]
        assert _steps_of(runs[0]) == {} and _steps_of(runs[1]) == {}
        assert "not scored again" in (box / "done" / "good.parquet.note.txt").read_text()
        assert Inbox(str(box), p.settings).new() == [] and (box / "done" / "good.parquet").exists()
    finally:
        down = p.windpipe("airflow", "down", extra_env=env, timeout=300)
    assert down.returncode == 0 and p.windpipe("airflow", "status", extra_env=env).returncode == 1


# ---------------------------------------------------------------------------------------------- leftovers, --wait


def test_airflow_down_and_up_stop_what_a_killed_scheduler_left_behind(tmp_path):
    """kill -9 of the scheduler leaves its forked workers reparented to init (issue: ~143 MB each, they survived `up`
    and `down`): `down` finds them in the session the scheduler led and stops them; nothing else is touched."""
    import psutil

    from windpipe.identity import pid_alive
    from windpipe.settings import Settings
    from windpipe.stack import airflow_server
    from windpipe.stack.procs import start_detached

    settings = Settings(home=tmp_path / "home", airflow_venv=tmp_path / "no-airflow")
    # a stand-in scheduler: it forks a worker that moves to a process group of its own (as edge task supervisors do)
    code = ("import os, subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import os, time; os.setpgrp(); time.sleep(300)'])\n"
            "print(p.pid, flush=True)\ntime.sleep(300)\n")
    log = settings.paths.log_file("airflow-scheduler")
    leader = start_detached([sys.executable, "-c", code], dict(os.environ), log,
                            settings.paths.pid_file("airflow-scheduler"), settings.home)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # not Airflow's: left alone
    try:
        deadline = time.monotonic() + 30
        while not log.read_text().strip() and time.monotonic() < deadline:
            time.sleep(0.1)
        worker = int(log.read_text().split()[0])
        os.kill(leader, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(leader) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pid_alive(worker) and psutil.Process(worker).ppid() != leader  # reparented, still running
        assert airflow_server.leftovers(settings) == [worker]
        said: list[str] = []
        airflow_server.down(settings, say=said.append)
        assert not pid_alive(worker) and pid_alive(stranger.pid)
        assert f"airflow: stopped process {worker}, left behind by a service that was killed" in said
        assert airflow_server.leftovers(settings) == []
    finally:
        for pid in (leader, stranger.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        stranger.wait()


def test_trigger_wait_names_an_api_server_that_stopped_answering(tmp_path):
    """`windpipe airflow trigger --wait` while the API server dies: the message and the fix, not a URLError."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from windpipe.settings import Settings
    from windpipe.stack import airflow_server

    class Once(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"state": "running"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            threading.Thread(target=self.server.shutdown).start()  # then it is gone

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Once)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    settings = Settings(home=tmp_path, airflow_port=server.server_address[1])
    try:
        with pytest.raises(WindpipeError) as err:
            airflow_server.wait_for_run(settings, "windpipe_training", "manual__1", "token", timeout=60, patience=2)
    finally:
        server.server_close()
    assert "stopped answering while waiting for the DAG run windpipe_training manual__1" in err.value.problem
    assert "windpipe airflow status" in err.value.fix


def test_a_retried_task_ends_the_run_its_dead_attempt_left_running(use_platform):
    """A worker killed with kill -9 leaves its step run RUNNING (on another machine: no process of this host to
    check); the task's retry ends it KILLED, with its nested runs, and touches no other task's run."""
    import mlflow

    from windpipe import names
    from windpipe.steps.driver import end_earlier_attempts

    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(use_platform.settings.experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(use_platform.settings.experiment)
    parent = client.create_run(exp_id, tags={names.STEP_TAG: "pipeline"})

    def child(task: str, **tags: str) -> str:
        return client.create_run(exp_id, tags={names.PIPELINE_RUN_TAG: parent.info.run_id, names.TASK_TAG: task,
                                               names.PROCESS_TAG: "edge-b 4242 1.00", **tags}).info.run_id

    dead, other, sibling = child("predict.0"), child("predict.1"), child("predict.10")
    nested = client.create_run(exp_id, tags={names.MLFLOW_PARENT_RUN_TAG: dead}).info.run_id
    assert sorted(end_earlier_attempts(client, client.get_run(parent.info.run_id), "predict.0")) == sorted(
        [dead, nested])
    for run_id in (dead, nested):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED"
        assert "an earlier attempt of the task predict.0 (on edge-b) died" in run.data.tags[names.FAILURE_TAG]
    assert {client.get_run(r).info.status for r in (other, sibling, parent.info.run_id)} == {"RUNNING"}
    for run_id in (other, sibling, parent.info.run_id):
        client.set_terminated(run_id, "FINISHED")


def test_a_step_names_its_workers_queue_in_step_yaml(projects):
    """`queue:` in a step.yaml sends its task to the workers of that queue; the others go to the default queue; a
    worker without --queues listens on all of them; a name that is no queue name is refused with the file."""
    from windpipe.pipeline.dags import worker_queues

    queues = {t.task_id: t.queue for t in dag_layout("training", projects)}
    assert queues["keras"] == "heavy" and {q for t, q in queues.items() if t != "keras"} == {None}
    assert worker_queues(projects) == ["default", "heavy"]
    spec = projects / "lr" / "step.yaml"
    spec.write_text(spec.read_text() + "queue: small\n")
    assert {t.task_id: t.queue for t in dag_layout("training", projects)}["lr"] == "small"
    assert worker_queues(projects) == ["default", "heavy", "small"]
    spec.write_text(spec.read_text().replace("queue: small", "queue: a,b"))
    with pytest.raises(WindpipeError) as err:
        dag_layout("training", projects)
    assert "`queue: 'a,b'` is not a queue name" in err.value.problem and str(spec) in err.value.problem

"""The pipeline driver: every step a child run, entities by URI, the cache, resuming, a clear FTP error."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from windpipe.errors import UsageError, WindpipeError
from windpipe.names import CACHE_KEY_TAG, MODEL_URI_TAG, PROCESSED_TAG
from windpipe.pipeline.cache import StepResult, cache_key, content_hash, input_values, step_key
from windpipe.pipeline.interfaces import load_interfaces
from windpipe.pipeline.plan import make_plan, parse_overrides

from .conftest import REPO, latest_run, trainers
from .processes import code_snapshot, processes_of

TRAINERS = trainers()  # gbm, keras, lr, rf: every step that writes a model
STEPS = ["process", *TRAINERS, "compare", "promote"]


def test_parse_overrides():
    assert parse_overrides(["rf.max_depth=8,12", "keras.epochs=5"]) == {
        "rf": {"max_depth": "8,12"}, "keras": {"epochs": "5"}}
    for bad in ("max_depth=8", "rf.max_depth", ".x=1"):
        with pytest.raises(UsageError, match="STEP.NAME=VALUE"):
            parse_overrides([bad])


def test_cache_key_changes_with_every_input():
    """Each part of the key matters: project, entry point, params, code, upstream runs, external content."""
    args = ("process", "main", {"a": "1"}, "c1", {"process": "r1"}, {"raw": "h"})
    base = cache_key(*args)
    assert base == cache_key(*args)
    for i, other in enumerate(("lr", "grid", {"a": "2"}, "c2", {"process": "r2"}, {"raw": "h2"})):
        changed = list(args)
        changed[i] = other
        assert cache_key(*changed) != base, f"argument {i} does not change the key"


def test_plan_follows_the_interfaces():
    """Order, wiring and entry points come from step.yaml; presets too."""
    plan = make_plan(load_interfaces(), "training", "quick", external={"raw": "/data"})
    names = plan.names
    assert names[0] == "process" and names[-2:] == ["compare", "promote"]
    assert names[1:-2] == TRAINERS and {"lr", "rf", "keras", "gbm"} <= set(TRAINERS)
    assert plan.step("rf").entry_point == "grid"
    assert plan.step("rf").params["n_estimators"] == "16,32"  # the quick preset
    assert plan.step("keras").params["epochs"] == "3"
    assert plan.step("gbm").params["max_iter"] == "20"
    assert plan.step("lr").needs == ("process",)
    assert plan.step("compare").needs == tuple(TRAINERS)  # every model producer, in run order
    assert plan.step("promote").needs == ("compare",)
    full = make_plan(load_interfaces(), "training", "full", external={"raw": "/data"})
    assert full.step("rf").params["n_estimators"] == "32,64"
    assert full.step("lr").params["seed"] == "42"  # the MLproject default
    assert make_plan(load_interfaces(), "prediction", overrides={"predict": {"output": "/o"}},
                     external={"features": "/f"}).names == ["predict"]


def test_input_values_come_from_the_producers_runs():
    plan = make_plan(load_interfaces(), "training", external={"raw": "/data/raw"})
    results = {name: StepResult(name, f"run-{name}", False, 0.0, {}, {}) for name in plan.names}
    results["process"].tags[PROCESSED_TAG] = "runs:/p/entities/processed.parquet"
    for name in TRAINERS:
        results[name].tags[MODEL_URI_TAG] = f"models:/m-{name}"
    assert input_values(plan, plan.step("process"), results) == {"raw_dir": "/data/raw"}
    assert input_values(plan, plan.step("rf"), results) == {"data": "runs:/p/entities/processed.parquet"}
    assert input_values(plan, plan.step("compare"), results) == {"models": ",".join(f"models:/m-{n}" for n in TRAINERS)}
    del results["lr"].tags[MODEL_URI_TAG]
    with pytest.raises(WindpipeError, match="lr run run-lr recorded no model"):
        input_values(plan, plan.step("compare"), results)


def test_a_step_key_names_the_work_not_the_runs_that_did_it():
    """A forced rerun (new runs, new entity URIs, the same work upstream) keys a step alike; other work upstream
    or another external input does not."""
    plan = make_plan(load_interfaces(), "training", external={"raw": "/data/raw"})

    def results(process_run: str, process_key: str) -> dict:
        done = {name: StepResult(name, f"{process_run}-{name}", False, 0.0, {}, {}) for name in plan.names}
        done["process"].tags.update({PROCESSED_TAG: f"runs:/{process_run}/entities/processed.parquet",
                                     CACHE_KEY_TAG: process_key})
        return done

    def key(step: str, done: dict, extra: str = "h1") -> str:
        return step_key(plan, plan.step(step), done, "code1", {"raw": extra})[2]

    first, forced = results("run1", "k-process"), results("run2", "k-process")
    assert key("lr", first) == key("lr", forced)
    params, upstream, _ = step_key(plan, plan.step("lr"), forced, "code1", {})
    assert params["data"] == "runs:/run2/entities/processed.parquet" and upstream == {"process": "run2-process"}
    assert key("lr", first) != key("lr", results("run1", "k-other"))  # other raw files upstream: other work
    assert key("lr", first) != key("rf", first)
    assert key("process", first) != key("process", first, extra="h2")
    del forced["process"].tags[CACHE_KEY_TAG]  # a producer without a key (a run made by hand) counts by its run
    assert key("lr", forced) != key("lr", first)


def test_bad_overrides_are_refused_before_anything_runs():
    specs = load_interfaces()
    with pytest.raises(UsageError, match=r"'nope'.*steps: .*rf"):
        make_plan(specs, "training", overrides={"nope": {"x": "1"}}, external={"raw": "/r"})
    with pytest.raises(WindpipeError, match=r"Step 'rf' \(grid entry point\) has no parameter 'max_dpeth'.*max_depth"):
        make_plan(specs, "training", overrides={"rf": {"max_dpeth": "8"}}, external={"raw": "/r"})
    with pytest.raises(UsageError, match="wires from the 'processed' entity"):
        make_plan(specs, "training", overrides={"lr": {"data": "x.parquet"}}, external={"raw": "/r"})
    with pytest.raises(WindpipeError, match="'predict' reads the external entity 'features'.*does not provide"):
        make_plan(specs, "prediction", overrides={"predict": {"output": "/o"}})  # nothing to score


def test_a_broken_interface_stops_the_plan(tmp_path):
    projects = tmp_path / "projects"
    shutil.copytree(REPO / "projects", projects, symlinks=True)
    yaml = projects / "lr" / "step.yaml"
    yaml.write_text(yaml.read_text().replace("parameter: data", "parameter: dataset"))
    with pytest.raises(WindpipeError, match=r"lr.*'dataset'"):
        make_plan(load_interfaces(projects), "training", external={"raw": "/r"})


def test_missing_raw_files_is_a_clear_error(tmp_path):
    with pytest.raises(WindpipeError, match="windpipe data synth"):
        content_hash(tmp_path)


def _status(run) -> dict[str, tuple[str, str]]:
    """step -> (run id, 'ran' | 'reused' | 'failed') from a pipeline run's tags."""
    out = {}
    for key, value in run.data.tags.items():
        if key.startswith("windpipe.pipeline."):
            run_id, how = value.split(" ")[:2]
            out[key.removeprefix("windpipe.pipeline.")] = (run_id, how)
    return out


def _step_runs(p) -> list:
    import mlflow

    return mlflow.search_runs(experiment_names=[p.settings.experiment], output_format="list",
                              filter_string="tags.`windpipe.cache_key` != ''")


@pytest.fixture
def snapshot(tmp_path) -> Path:
    """A copy of the code taken now: the pipeline runs from it, so its code version stays put."""
    return code_snapshot(tmp_path / "code")


def _cli(p, snap: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**p.env, "PYTHONPATH": str(snap)}
    return subprocess.run([sys.executable, "-m", "windpipe", *args], env=env, cwd=snap, capture_output=True,
                          text=True, timeout=900)


def _mlflow_run(p, snap: Path, project: str, *args: str) -> subprocess.CompletedProcess:
    env = {**p.env, "PYTHONPATH": str(snap), "MLFLOW_EXPERIMENT_NAME": p.settings.experiment}
    return subprocess.run([sys.executable, "-m", "mlflow", "run", str(snap / "projects" / project), *args,
                           "--env-manager", "local"], env=env, cwd=snap, capture_output=True, text=True, timeout=900)


NATIVE_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d|absl::InitializeLog|cudart_stub|cpu_feature_guard", re.M)


def _assert_quiet(output: str, runs: dict, step_logs: Path) -> None:
    """What a person reads: no C++ log lines, no progress bars, no MLflow chatter, one line for the pipeline
    run; each step's own output (its one line per run) is in its log file, its diagnostics in its run's log
    artifact."""
    import mlflow

    assert not NATIVE_LOG_LINE.search(output), NATIVE_LOG_LINE.search(output).group(0)
    assert "/step" not in output and "\r" not in output and "\x1b[" not in output  # Keras progress bars
    assert "View run" not in output and "=== Running command" not in output, output[-3000:]
    assert len(re.findall(r"^pipeline run: http://\S+/runs/", output, re.M)) == 1, output[-3000:]
    for name, run in runs.items():
        text = (step_logs / f"{name}.log").read_text()
        assert len(re.findall(rf"^{name} run: http://\S+/runs/", text, re.M)) == 1, (name, text[-3000:])
        assert not NATIVE_LOG_LINE.search(text) and "View run" not in text, (name, text[-3000:])
        if run is not None:
            logged = [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "logs")]
            assert logged == [f"logs/{name}.log"], (name, logged)
    log = Path(mlflow.artifacts.download_artifacts(run_id=runs["keras"].info.run_id, artifact_path="logs/keras.log"))
    assert "INFO" in log.read_text()  # at least Keras's progress, which went to the log instead of the console


def _child_runs(p, parent) -> list:
    """The runs under the pipeline run `parent` (a run just created may not carry its step tag yet)."""
    import mlflow

    return mlflow.search_runs(experiment_names=[p.settings.experiment], output_format="list",
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")


def _children(p, parent) -> dict[str, object]:
    """step -> its run under the pipeline run `parent`."""
    return {r.data.tags["windpipe.step"]: r for r in _child_runs(p, parent)}


def _most_at_once(runs) -> int:
    """The largest number of runs that were running at the same moment (from their start and end times)."""
    events = sorted([(r.info.start_time, 1) for r in runs] + [(r.info.end_time, -1) for r in runs])
    now = most = 0
    for _, change in events:
        now += change
        most = max(most, now)
    return most


def _overlap(a, b) -> bool:
    return a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time


@pytest.mark.slow
def test_pipeline_runs_side_by_side_caches_resumes_and_survives_an_ftp_restart(make_platform, raw_dir, snapshot):
    import mlflow

    from windpipe.stack import services as plat
    from windpipe.stack.procs import stop_pid

    p = make_platform()
    mlflow.set_tracking_uri(p.tracking_uri)
    run = ["pipeline", "run", "--raw", str(raw_dir), "--quick", "--env-manager", "local"]

    # the FTP artifact server is down: a clear error, then (server back) the next run completes
    stop_pid(plat.running_pid(p.settings, plat.FTP))
    proc = _cli(p, snapshot, *run)
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "artifact store" in proc.stderr and "windpipe up" in proc.stderr, proc.stderr[-2000:]
    assert _step_runs(p) == []  # found before any step ran, not after MLflow's upload retries
    plat.up(p.settings, say=lambda _m: None)

    # cold, two steps side by side: every step runs as a child of the pipeline run; entities go by URI
    proc = _cli(p, snapshot, *run, "--jobs", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parent = latest_run(p, "pipeline")
    assert parent.info.status == "FINISHED" and parent.data.metrics["jobs"] == 2
    status = _status(parent)
    assert sorted(status) == sorted(STEPS) and {how for _, how in status.values()} == {"ran"}
    runs = _children(p, parent)
    assert set(runs) == set(STEPS)
    assert {name: r.info.run_id for name, r in runs.items()} == {name: rid for name, (rid, _) in status.items()}
    trained = [runs[n] for n in TRAINERS]
    assert _most_at_once(runs.values()) == 2  # side by side, never more than --jobs
    assert any(_overlap(a, b) for a in trained for b in trained if a is not b)
    entity = runs["process"].data.tags["windpipe.entity.processed"]
    assert entity.startswith("runs:/") and entity.endswith("processed.parquet")
    for r in trained:
        assert r.data.params["data"] == entity and r.info.status == "FINISHED"
        assert runs["process"].info.end_time <= r.info.start_time  # each waits for its producer
    assert runs["compare"].data.params["models"] == ",".join(runs[n].data.tags["windpipe.model_uri"]
                                                             for n in TRAINERS)
    assert runs["compare"].info.start_time >= max(r.info.end_time for r in trained)
    assert runs["promote"].data.params["model_uri"] == runs["compare"].data.tags["windpipe.entity.candidate"]
    assert mlflow.MlflowClient().get_model_version_by_alias(p.settings.model_name, "production")
    for name in STEPS:
        assert name in proc.stdout  # the progress lines and the summary table
        assert (p.home / "logs" / "pipeline" / parent.info.run_id / f"{name}.log").stat().st_size > 0
    _assert_quiet(proc.stdout + proc.stderr, runs, p.home / "logs" / "pipeline" / parent.info.run_id)
    n_step_runs = len(_step_runs(p))

    # warm, one step at a time: the same cache keys, every run reused, no new step run
    proc = _cli(p, snapshot, *run, "--jobs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _status(latest_run(p, "pipeline")) == {name: (rid, "reused") for name, (rid, _) in status.items()}
    assert proc.stdout.count("reused") >= len(STEPS)
    assert len(_step_runs(p)) == n_step_runs

    # `mlflow run projects/pipeline` drives the same cache
    proc = _mlflow_run(p, snapshot, "pipeline", "-P", f"raw_dir={raw_dir}", "-P", "quick=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {how for _, how in _status(latest_run(p, "pipeline")).values()} == {"reused"}

    # a bad rf parameter fails rf with a clear error; the other trainers finish, compare and promote never start
    proc = _cli(p, snapshot, *run, "--param", "rf.max_depth=banana")
    assert proc.returncode == 1 and "error:" in proc.stderr and "rf" in proc.stderr, proc.stderr[-2000:]
    assert "not run: compare, promote" in proc.stderr
    failed = latest_run(p, "pipeline")
    assert failed.info.status == "FAILED"
    assert {k: how for k, (_, how) in _status(failed).items()} == {"process": "reused", "rf": "failed",
                                                                   **{n: "reused" for n in TRAINERS if n != "rf"}}

    # fixed and rerun: it resumes; only rf and what follows it run
    proc = _cli(p, snapshot, *run, "--param", "rf.max_depth=4,6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {k: how for k, (_, how) in _status(latest_run(p, "pipeline")).items()} == {
        "process": "reused", **{n: "reused" for n in TRAINERS}, "rf": "ran", "compare": "ran", "promote": "ran"}

    # --force --jobs 1 reruns everything one after another: the same results as side by side
    versions = {v.version for v in mlflow.MlflowClient().search_model_versions(f"name = '{p.settings.model_name}'")}
    proc = _cli(p, snapshot, *run, "--force", "--jobs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    forced = latest_run(p, "pipeline")
    assert {how for _, how in _status(forced).values()} == {"ran"}
    again = _children(p, forced)
    assert _most_at_once(again.values()) == 1
    assert again["process"].data.tags["windpipe.cache_key"] == runs["process"].data.tags["windpipe.cache_key"]
    for name in ("process", "lr", "rf", "gbm"):  # (the last digit may differ: threads sum the trees in any order)
        timing = {k for k in runs[name].data.metrics if k.endswith("seconds")}
        assert set(again[name].data.metrics) == set(runs[name].data.metrics), name
        assert {k: v for k, v in again[name].data.metrics.items() if k not in timing} == pytest.approx(
            {k: v for k, v in runs[name].data.metrics.items() if k not in timing}, rel=1e-9), name
    assert again["keras"].data.metrics["rmse"] == pytest.approx(runs["keras"].data.metrics["rmse"], rel=0.05)
    assert again["compare"].data.tags["windpipe.best_model_family"] == runs["compare"].data.tags[
        "windpipe.best_model_family"]
    # the same work has the same keys, so the model made again is the version that holds it, not a new one
    assert {n: r.data.tags["windpipe.cache_key"] for n, r in again.items()} == {
        n: r.data.tags["windpipe.cache_key"] for n, r in runs.items()}
    assert {v.version for v in mlflow.MlflowClient().search_model_versions(
        f"name = '{p.settings.model_name}'")} == versions
    assert "already holds this model (same step, code, params, inputs" in again["promote"].data.tags[
        "windpipe.promote.note"]

    # stopped (SIGTERM) while steps run: their process trees end, their runs are KILLED, the pipeline run FAILED
    env = {**p.env, "PYTHONPATH": str(snapshot)}
    proc = subprocess.Popen([sys.executable, "-m", "windpipe", *run, "--force", "--jobs", "2"], env=env,
                            cwd=snapshot, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    running = []
    deadline = time.monotonic() + 300
    while not running and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        stopped = latest_run(p, "pipeline")
        if stopped.info.run_id != forced.info.run_id:
            running = [r for r in _child_runs(p, stopped) if r.info.status == "RUNNING"]
    assert running, "no step started"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "The pipeline was stopped (signal 15)" in err, err[-2000:]
    stopped = latest_run(p, "pipeline")
    assert stopped.info.status == "FAILED"
    after = {r.info.run_id: r for r in _child_runs(p, stopped)}
    assert "RUNNING" not in {r.info.status for r in after.values()}
    killed = [r for r in after.values() if r.info.status == "KILLED"]
    assert killed  # (a step may have ended just before the signal)
    for r in killed:  # a running step is stopped; one whose run was made but not yet started is not started
        reason = r.data.tags["windpipe.failure_reason"]
        assert "stopped with the pipeline" in reason or reason == "not started: the pipeline is stopping", reason
        assert not processes_of(r.info.run_id), "a step process outlived the pipeline"


@pytest.mark.slow
def test_pipeline_from_git_runs_the_committed_steps(make_platform, raw_dir, snapshot):
    """--from-git: every step is cloned from the repository at one resolved commit, which keys the cache."""
    import mlflow

    git = ["git", "-C", str(snapshot), "-c", "user.name=windpipe", "-c", "user.email=windpipe@localhost"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "steps"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    p = make_platform()
    mlflow.set_tracking_uri(p.tracking_uri)
    run = ["pipeline", "run", "--raw", str(raw_dir), "--quick", "--env-manager", "local",
           "--from-git", f"file://{snapshot}", "--git-version", "main"]

    proc = _cli(p, snapshot, *run)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = _status(latest_run(p, "pipeline"))
    assert sorted(status) == sorted(STEPS) and {how for _, how in status.values()} == {"ran"}
    for name, (run_id, _) in status.items():
        tags = mlflow.get_run(run_id).data.tags
        assert tags["mlflow.source.git.commit"] == commit, name

    # the same commit again: every step reused
    proc = _cli(p, snapshot, *run)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {how for _, how in _status(latest_run(p, "pipeline")).values()} == {"reused"}

    # a ref that does not exist: a clear error before any step runs
    proc = _cli(p, snapshot, *run[:-1], "no-such-branch")
    assert proc.returncode == 1 and "has no ref 'no-such-branch'" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_a_dag_run_from_git_runs_every_task_at_the_commit_its_open_task_resolved(use_platform, raw_dir, snapshot):
    """The Airflow tasks of a DAG run with from_git: the open task resolves git_version once; a task that runs
    later (on any worker) runs its step at that commit, even after the branch moved."""
    import mlflow

    git = ["git", "-C", str(snapshot), "-c", "user.name=windpipe", "-c", "user.email=windpipe@localhost"]

    def commit_all(message: str) -> str:
        for args in (["add", "-A"], ["commit", "-q", "--allow-empty", "-m", message]):
            subprocess.run([*git, *args], check=True, capture_output=True)
        return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()

    subprocess.run([*git, "init", "-q", "-b", "main"], check=True, capture_output=True)
    pinned = commit_all("steps")
    conf = {"raw": str(raw_dir), "quick": True, "from_git": f"file://{snapshot}", "git_version": "main"}
    opened = _cli(use_platform, snapshot, "pipeline", "open", "--pipeline", "training", "--dag-run", "git/1",
                  "--conf", json.dumps(conf))
    assert opened.returncode == 0, opened.stderr[-3000:]
    parent = opened.stdout.split()[-1]
    assert mlflow.get_run(parent).data.tags["windpipe.git_commit"] == pinned

    moved = commit_all("the branch moves on after the DAG run started")
    task = {"conf": conf, "pipeline_run": parent, "upstream": {}}
    env = {**use_platform.env, "PYTHONPATH": str(snapshot)}
    proc = subprocess.run([sys.executable, "-m", "windpipe", "pipeline", "step", "process", "--pipeline", "training",
                           "--stdin"], input=json.dumps(task), env=env, cwd=snapshot, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    step = _child_runs(use_platform, mlflow.get_run(parent))
    assert [r.data.tags["mlflow.source.git.commit"] for r in step] == [pinned] and pinned != moved

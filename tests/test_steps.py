"""Steps as separate repositories: interfaces, the DAG, new-step, export-step, the graph."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from windpipe.errors import UsageError, WindpipeError
from windpipe.pipeline.graph import build_graph
from windpipe.pipeline.interfaces import (
    Parameter,
    load_interface,
    load_interfaces,
    parse_interface,
    step_defaults,
    step_folders,
)

from .conftest import REPO, trainers

PROJECTS = REPO / "projects"


def spec(name: str, inputs=(), outputs=(), params=(), **extra):
    """A tiny in-code interface (unknown entities get one float column; `params` are its MLproject's)."""
    def port(e):
        return e if isinstance(e, dict) else {"entity": e, "columns": {"v": "float"}}

    data = {"step": name, "inputs": [port(e) for e in inputs], "outputs": [port(e) for e in outputs], **extra}
    eps = {"main": {p: Parameter(p, default="x") for p in params}}
    return parse_interface(data, Path(f"/nowhere/{name}"), entry_points=eps)


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def windpipe_cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "windpipe", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env or dict(os.environ))


def mlflow_run_uri(platform, uri: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**platform.env, "MLFLOW_EXPERIMENT_NAME": platform.settings.experiment}
    return subprocess.run([sys.executable, "-m", "mlflow", "run", uri, *args, "--env-manager", "local"],
                          env=env, capture_output=True, text=True, timeout=900, cwd=cwd)


def runs_of(platform, step: str):
    import mlflow

    mlflow.set_tracking_uri(platform.tracking_uri)
    return mlflow.search_runs(experiment_names=[platform.settings.experiment],
                              filter_string=f"tags.`windpipe.step` = '{step}'", order_by=["start_time DESC"],
                              output_format="list")


# ---------------------------------------------------------------------------------------------- interfaces


@pytest.mark.parametrize("folder", step_folders(PROJECTS), ids=lambda p: p.name)
def test_every_step_has_an_interface_that_names_its_mlproject_parameters(folder):
    assert (folder / "step.yaml").exists(), f"{folder} has no step.yaml (its interface)"
    s = load_interface(folder)
    assert s.name == folder.name
    for port in s.inputs + s.outputs:
        assert port.parameter is None or port.parameter in s.parameters


def test_parameter_defaults_live_in_the_mlproject_only():
    """step.yaml repeats no parameter; the step script's options come from the MLproject."""
    import yaml

    for folder in step_folders(PROJECTS):
        data = yaml.safe_load((folder / "step.yaml").read_text())
        assert "entry_points" not in data and "parameters" not in data, folder
    assert step_defaults("rf", "grid")["max_depth"] == "6,10,14"
    assert step_defaults("rf")["max_depth"] == "14"
    proc = subprocess.run([sys.executable, str(PROJECTS / "rf" / "step.py"), "grid", "--help"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "[default: 6,10,14]" in proc.stdout and "comma list of depths" in proc.stdout


def test_a_preset_naming_an_unknown_parameter_is_refused():
    with pytest.raises(WindpipeError, match=r"Step 'x' \(main entry point\) has no parameter 'epoch'.*epochs"):
        spec("x", params=["epochs"], presets={"quick": {"epoch": 3}})
    assert spec("x", params=["epochs"], presets={"quick": {"epochs": 3}}).presets == {"quick": {"epochs": "3"}}


MLPROJECT = "name: x\nentry_points:\n  main:\n    parameters: {a: {type: float, default: 1}}\n    command: x\n"


@pytest.mark.parametrize("text, message", [
    ("step: [x", "not valid YAML"),
    ("- a\n- b\n", "must be a mapping"),
    ("description: no name\n", "lacks `step: <name>`"),
    ("step: x\nsurprise: 1\n", "unknown key"),
    ("step: x\nentry_points: {main: {}}\n", "live in the MLproject only"),
    ("step: x\ninputs: [{entity: mystery}]\n", "must declare `columns"),
    ("step: x\ninputs: [{entity: processed, columns: {a: float}}]\n", "windpipe.entities"),
    ("step: x\ninputs: [{entity: t, columns: {a: text}}]\n", "unknown kind"),
    ("step: x\ninputs: [{entity: processed, parameter: nope}]\n", "parameter 'nope', which the main entry"),
    ("step: x\nentry_point: grid\n", "entry point 'grid', which the MLproject does not have"),
    ("step: x\npipeline: nightly\n", "not one of training"),
    ("step: x\ninputs: [{entity: processed, paramter: a}]\n", "unknown key"),
])
def test_bad_interfaces_are_refused_with_the_reason(tmp_path, text, message):
    (tmp_path / "MLproject").write_text(MLPROJECT)
    (tmp_path / "step.yaml").write_text(text)
    with pytest.raises(WindpipeError, match=message):
        load_interface(tmp_path)


def test_bad_mlproject_parameters_are_refused(tmp_path):
    (tmp_path / "MLproject").write_text("name: x\nentry_points: {main: {parameters: {a: {type: int}}}}\n")
    (tmp_path / "step.yaml").write_text("step: x\n")
    with pytest.raises(WindpipeError, match="has type 'int'"):
        load_interface(tmp_path)


def test_missing_interface_or_mlproject_names_the_file(tmp_path):
    folder = tmp_path / "projects" / "x"
    folder.mkdir(parents=True)
    (folder / "MLproject").write_text(MLPROJECT)
    with pytest.raises(WindpipeError, match="step.yaml does not exist"):
        load_interface(folder)
    (folder / "MLproject").unlink()
    (folder / "step.yaml").write_text("step: x\n")
    with pytest.raises(WindpipeError, match="has no MLproject, so MLflow cannot run it"):
        load_interface(folder)
    with pytest.raises(WindpipeError, match="has no MLproject"):
        load_interfaces(folder.parent)  # a step folder without an MLproject stops every listing


# ---------------------------------------------------------------------------------------------- inputs: latest


@pytest.fixture
def newest_written(tmp_path, monkeypatch) -> str:
    """A processed entity on disk that `latest` resolves to (as if the newest process run had written it)."""
    from windpipe.entities.schema import PROCESSED
    from windpipe.entities.store import write_entity
    from windpipe.tracking import runs

    from .models import tiny_processed

    path = str(write_entity(PROCESSED, tiny_processed(48), tmp_path / "newest.parquet"))
    monkeypatch.setattr(runs, "latest_entity_uri", lambda entity: path if entity == "processed" else None)
    return path


@pytest.mark.parametrize("value", ["", "latest", "  latest ", None])
def test_trainers_and_generic_steps_resolve_latest_alike(newest_written, tmp_path, value):
    from windpipe.entities.schema import PROCESSED
    from windpipe.steps.generic import read_input_entity
    from windpipe.steps.train import load_data, split_spec

    data = load_data(value, split_spec(42, 0.2, "random", 1), tmp_path)
    df, uri = read_input_entity(PROCESSED, value, tmp_path)
    assert data.uri == uri == newest_written and len(data.df) == len(df) == 48


def test_an_input_given_is_kept_and_a_local_path_made_absolute(tmp_path, monkeypatch):
    from windpipe.tracking.runs import input_uri

    monkeypatch.chdir(tmp_path)
    assert input_uri("processed", " runs:/0a1b/entities/processed.parquet ") == "runs:/0a1b/entities/processed.parquet"
    assert input_uri("processed", "s3://bucket/p.parquet") == "s3://bucket/p.parquet"
    assert input_uri("processed", "data/p.parquet") == str(tmp_path / "data" / "p.parquet")


def test_what_a_run_read_is_its_input_tag_or_for_older_runs_its_entity_tag():
    from windpipe.names import read_uri

    assert read_uri({"windpipe.input.processed": "runs:/a/x", "windpipe.entity.processed": "runs:/b/x"}) == "runs:/a/x"
    assert read_uri({"windpipe.entity.processed": "runs:/b/x"}) == "runs:/b/x"  # logged before the input tag
    assert read_uri({"windpipe.model_uri": "models:/m-1"}) is None


# ---------------------------------------------------------------------------------------------- the DAG


def test_repository_dag_runs_process_before_training_before_compare_and_predict():
    g = build_graph(load_interfaces(PROJECTS))
    order = g.order
    assert order[0] == "process"
    for trainer in trainers(PROJECTS):
        assert order.index("process") < order.index(trainer) < order.index("compare") < order.index("promote")
        assert trainer in g.producers("model")
    assert order.index("promote") < order.index("predict")
    assert "pipeline" in g.drivers and "pipeline" not in order
    assert set(g.external) == {"raw", "processed_file", "features"}
    assert g.upstream("predict") == ["process", *trainers(PROJECTS), "compare", "promote"]
    assert g.downstream("rf") == ["compare", "promote", "predict"]
    training = build_graph(load_interfaces(PROJECTS), "training")
    assert "predict" not in training.order and training.order[-1] == "promote"
    assert build_graph(load_interfaces(PROJECTS), "prediction").order == ["predict"]


def test_dag_order_layers_and_upstream():
    g = build_graph([spec("c", ["b1", "a1"], ["c1"]), spec("a", [], ["a1"]), spec("b", ["a1"], ["b1"])])
    assert g.order == ["a", "b", "c"]
    assert g.layers[0] == ["step:a"] and g.layers[-1] == ["entity:c1"]
    assert g.upstream("c") == ["a", "b"]
    assert sorted(g.consumers("a1")) == ["b", "c"] and g.producers("b1") == ["b"]


def test_removing_an_input_from_step_yaml_changes_the_wiring():
    with_input = build_graph([spec("a", [], ["x"]), spec("b", ["x"], ["y"])])
    without = build_graph([spec("a", [], ["x"]), spec("b", [], ["y"])])
    assert with_input.upstream("b") == ["a"] and without.upstream("b") == []


def test_cycle_between_interfaces_names_steps_and_entities():
    with pytest.raises(WindpipeError, match="cycle") as err:
        build_graph([spec("a", ["y"], ["x"]), spec("b", ["x"], ["y"]), spec("c", [], ["z"])])
    assert "(steps a, b)" in err.value.problem
    assert "x ->" in err.value.problem or "y ->" in err.value.problem
    assert err.value.fix and "step.yaml" in err.value.fix


def test_input_no_step_produces_is_an_error_unless_external():
    with pytest.raises(WindpipeError, match="reads the entity 'ghost', which no step produces") as err:
        build_graph([spec("a", [], ["x"]), spec("b", ["x", "ghost"], ["y"])])
    assert "'b'" in err.value.problem and err.value.fix
    assert build_graph([spec("a", [], ["x"]), spec("b", ["x", "ghost"], ["y"])], external=["ghost"]).order == ["a", "b"]
    ext = {"entity": "ghost", "columns": {"v": "float"}, "external": True}
    assert build_graph([spec("b", [ext], ["y"])]).external == ["ghost"]


def test_an_entity_two_steps_write_needs_all_true_in_its_reader():
    two = [spec("a", [], ["x"]), spec("b", [], ["x"])]
    with pytest.raises(WindpipeError, match="reads one 'x', but 2 steps write it"):
        build_graph([*two, spec("c", ["x"], ["y"])])
    g = build_graph([*two, spec("c", [{"entity": "x", "columns": {"v": "float"}, "all": True}], ["y"])])
    assert g.needs("c") == ["a", "b"]


def test_duplicate_step_names_are_refused(tmp_path):
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "MLproject").write_text("name: x\nentry_points: {main: {command: x}}\n")
        (tmp_path / folder / "step.yaml").write_text("step: same\n")
    with pytest.raises(WindpipeError, match="Two step folders declare the step 'same'"):
        load_interfaces(tmp_path)


# ---------------------------------------------------------------------------------------------- new-step


@pytest.fixture
def steps_dir(tmp_path) -> Path:
    """A projects/ folder holding a copy of the process step (its python_env.yaml is the reference)."""
    dest = tmp_path / "projects"
    dest.mkdir()
    (dest / "process").mkdir()
    for f in ("MLproject", "python_env.yaml", "step.py", "step.yaml"):
        (dest / "process" / f).write_text((PROJECTS / "process" / f).read_text())
    return dest


def test_new_step_creates_a_runnable_folder(steps_dir):
    import yaml

    from windpipe.pipeline.scaffold import new_step

    folder = new_step("describe_weather", inputs="processed", outputs="weather_copy", dest=steps_dir)
    assert sorted(p.name for p in folder.iterdir()) == ["MLproject", "README.md", "python_env.yaml", "step.py",
                                                      "step.yaml", "test_step.py", "windpipe"]
    assert (folder / "windpipe").is_symlink() and (folder / "windpipe" / "names.py").exists()
    assert yaml.safe_load((folder / "python_env.yaml").read_text())["dependencies"] == \
        yaml.safe_load((PROJECTS / "process" / "python_env.yaml").read_text())["dependencies"]
    s = load_interface(folder)
    assert [p.entity for p in s.inputs] == ["processed"] and s.inputs[0].parameter == "processed_uri"
    assert s.parameters["processed_uri"].default == "latest"
    assert s.output("weather_copy").columns["solar_GW"] == "float"
    g = build_graph(load_interfaces(steps_dir))
    assert g.order == ["process", "describe_weather"]
    compile((folder / "step.py").read_text(), "step.py", "exec")
    assert not [p for p in steps_dir.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("name", ["", "a", "Bad", "1abc", "with-dash", "has space", "class", "windpipe", "tests",
                                  "x" * 41, "../evil"])
def test_new_step_refuses_bad_names_and_writes_nothing(steps_dir, name):
    from windpipe.pipeline.scaffold import new_step

    before = listing(steps_dir)
    with pytest.raises(UsageError, match="not a valid step name|reserved"):
        new_step(name, dest=steps_dir)
    assert listing(steps_dir) == before


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "process"}, "exists already"),
    ({"name": "other", "inputs": "ghost"}, "No step produces the entity 'ghost'"),
    ({"name": "other", "inputs": "processed", "outputs": "processed"}, "cycle"),
    ({"name": "other", "outputs": "model"}, "model entity"),
    ({"name": "other", "inputs": "raw"}, "files entity"),
    ({"name": "other", "outputs": "Bad-Entity"}, "not a valid entity name"),
    ({"name": "other", "inputs": "processed,processed"}, "listed twice"),
])
def test_new_step_bad_input_writes_nothing(steps_dir, kwargs, message):
    from windpipe.pipeline.scaffold import new_step

    before = listing(steps_dir)
    with pytest.raises(WindpipeError, match=message):
        new_step(dest=steps_dir, **kwargs)
    assert listing(steps_dir) == before


def test_new_step_cli_reports_errors_without_traceback(steps_dir):
    proc = windpipe_cli("new-step", "process", "--dest", str(steps_dir))
    assert proc.returncode == 2  # a usage error
    assert "error:" in proc.stderr and "exists already" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_new_steps_run_with_mlflow_and_chain_through_latest(use_platform, steps_dir):
    """A source step (sample table) and a consumer reading its newest output (`latest`), both via `mlflow run`."""
    from windpipe.pipeline.figure import step_statuses
    from windpipe.pipeline.scaffold import new_step

    proc = windpipe_cli("new-step", "tiny_source", "--dest", str(steps_dir), env=use_platform.env)
    assert proc.returncode == 0, proc.stderr
    new_step("tiny_use", inputs="tiny_source", outputs="tiny_copy", dest=steps_dir)
    # the generated test passes as generated
    test = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(steps_dir / "tiny_use")],
                          capture_output=True, text=True, timeout=300, cwd=steps_dir / "tiny_use")
    assert test.returncode == 0, test.stdout[-2000:]

    proc = mlflow_run_uri(use_platform, str(steps_dir / "tiny_source"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    source = runs_of(use_platform, "tiny_source")[0]
    assert source.info.status == "FINISHED"
    uri = source.data.tags["windpipe.entity.tiny_source"]
    assert uri == f"runs:/{source.info.run_id}/entities/tiny_source.parquet"

    proc = mlflow_run_uri(use_platform, str(steps_dir / "tiny_use"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    use = runs_of(use_platform, "tiny_use")[0]
    assert use.info.status == "FINISHED"
    assert use.data.tags["windpipe.input.tiny_source"] == uri
    assert use.data.metrics["rows_tiny_copy"] == 24
    # read as context "input", written as context "output" (windpipe.entities.log_entity)
    assert sorted(d.dataset.name for d in use.inputs.dataset_inputs) == ["tiny_copy", "tiny_source"]

    statuses = step_statuses(["tiny_source", "tiny_use", "never_ran"])
    assert statuses["tiny_use"].status == "FINISHED" and statuses["tiny_use"].start_ms is not None
    assert statuses["never_ran"].status == "NO RUNS"


# ---------------------------------------------------------------------------------------------- export-step


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


def test_export_step_makes_a_standalone_repository(tmp_path):
    from windpipe.pipeline.export import export_step

    res = export_step(PROJECTS / "process", tmp_path / "process-repo")
    repo = res.dest
    assert res.step == "process" and len(res.commit) == 40
    assert git(repo, "rev-parse", "HEAD") == res.commit
    assert git(repo, "status", "--porcelain") == ""
    tracked = git(repo, "ls-files").splitlines()
    for f in ("MLproject", "python_env.yaml", "step.py", "step.yaml", "EXPORTED.md", ".gitignore",
              "windpipe/__init__.py", "windpipe/names.py", "windpipe/steps/process.py"):
        assert f in tracked, f
    assert not (repo / "windpipe").is_symlink()
    assert not any("__pycache__" in f for f in tracked)
    assert load_interface(repo).name == "process"
    assert "vendored" in (repo / "EXPORTED.md").read_text()


def test_export_to_a_non_empty_folder_writes_nothing(tmp_path):
    from windpipe.pipeline.export import export_step

    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    before = listing(tmp_path)
    with pytest.raises(WindpipeError, match="exists and is not empty"):
        export_step(PROJECTS / "process", dest)
    assert listing(tmp_path) == before
    proc = windpipe_cli("export-step", "projects/process", str(dest))
    assert proc.returncode == 2 and "not empty" in proc.stderr and "Traceback" not in proc.stderr
    assert listing(tmp_path) == before
    with pytest.raises(WindpipeError, match="no MLproject"):
        export_step(tmp_path, tmp_path / "new")
    assert listing(tmp_path) == before


def test_export_into_an_empty_folder_is_fine(tmp_path):
    from windpipe.pipeline.export import export_step

    (tmp_path / "empty").mkdir()
    assert (export_step(PROJECTS / "process", tmp_path / "empty").dest / ".git").is_dir()


@pytest.mark.slow
def test_exported_lr_runs_with_mlflow_at_its_commit(use_platform, raw_dir, tmp_path):
    """`mlflow run DEST --version <commit>`: the exported lr step trains on a local processed file."""
    from windpipe.data.process import process, read_raw
    from windpipe.entities.schema import PROCESSED
    from windpipe.entities.store import write_entity

    data = write_entity(PROCESSED, process(*read_raw(raw_dir)), tmp_path / "processed.parquet")
    proc = windpipe_cli("export-step", "projects/lr", str(tmp_path / "lr-repo"))
    assert proc.returncode == 0, proc.stderr
    commit = git(tmp_path / "lr-repo", "rev-parse", "HEAD")
    assert commit in proc.stdout
    before = {r.info.run_id for r in runs_of(use_platform, "lr")}
    # run from a folder outside this checkout, so nothing can come from projects/ or the editable install's cwd
    proc = mlflow_run_uri(use_platform, str(tmp_path / "lr-repo"), "--version", commit, "-P", f"data={data}",
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next(r for r in runs_of(use_platform, "lr") if r.info.run_id not in before)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.source.git.commit"] == commit
    assert run.data.tags["windpipe.model_uri"].startswith("models:/")
    assert "r2" in run.data.metrics


# ---------------------------------------------------------------------------------------------- graph


def test_pipeline_figure_and_offline_html(tmp_path):
    from windpipe.pipeline.figure import pipeline_figure, write_pipeline_html
    from windpipe.tracking.runs import StepStatus

    specs = load_interfaces(PROJECTS)
    fig = pipeline_figure(specs, {"lr": StepStatus("lr", "FAILED", reason="boom")})
    steps_trace = next(t for t in fig.data if t.name == "steps")
    labels = " ".join(steps_trace.text)
    assert "failed" in labels and "unknown" in labels
    out = write_pipeline_html(fig, tmp_path / "p.html")
    html = out.read_text()
    for s in specs:
        assert s.name in html
    assert '<script src="http' not in html and len(html) > 1_000_000  # plotly.js inlined: works offline
    assert "unavailable" in pipeline_figure(specs).layout.title.text


def test_graph_cli_without_platform_says_statuses_unavailable(tmp_path):
    from windpipe.stack.procs import free_port

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    proc = windpipe_cli("graph", "--out", str(tmp_path / "g.html"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "run statuses unavailable" in proc.stdout
    html = (tmp_path / "g.html").read_text()
    for name in ("process", *trainers(PROJECTS), "compare", "promote", "predict", "pipeline"):
        assert name in html


def test_graph_cli_refuses_a_cycle(steps_dir, tmp_path):
    (steps_dir / "loop").mkdir()
    (steps_dir / "loop" / "MLproject").write_text("name: loop\nentry_points: {main: {command: x}}\n")
    (steps_dir / "loop" / "step.yaml").write_text("step: loop\ninputs: [processed]\noutputs: [raw]\n")
    proc = windpipe_cli("graph", "--projects", str(steps_dir), "--no-statuses", "--out", str(tmp_path / "g.html"))
    assert proc.returncode == 1 and "cycle" in proc.stderr and "loop" in proc.stderr
    assert not (tmp_path / "g.html").exists()


@pytest.mark.slow
def test_visualize_pipeline_notebook_runs_headless(use_platform, tmp_path):
    from windpipe.workbench.notebooks import run_notebook

    nb = run_notebook(REPO / "notebooks" / "visualize_pipeline.ipynb", env=use_platform.env,
                      out=tmp_path / "executed.ipynb", timeout=300)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "run order: process" in text
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))

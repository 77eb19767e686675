"""The core flows on both stacks, through one parametrised fixture (`stack_platform`: local | team).

Quick pipeline and promotion, `windpipe predict` into the stack's data marts (SQLite in the state
folder, or PostgreSQL's `marts` schema: binary COPY), a failed batch that leaves no file and no rows,
the dashboard's data (its predictions into the marts, the views' functions reading them, the error
on recorded power), the weekly report, and `windpipe serve` following a forced promotion and the
rollback. Each test builds on the one before (file order), on one platform per stack.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import Platform, latest_run, point_at, trainers
from tests.processes import wait_for
from windpipe.errors import WindpipeError
from windpipe.marts import queries, tables
from windpipe.names import FEATURES, MODEL_URI_TAG, PRED_COLUMNS, STEP_TAG, TIMESTAMP
from windpipe.settings import Settings, clear_settings_cache, get_settings


@pytest.fixture
def client(stack_platform: Platform, monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    """This process is a client of the stack's platform; its marts engines are closed afterwards."""
    yield point_at(stack_platform, monkeypatch)
    tables.dispose_engines()
    clear_settings_cache()


def _team(p: Platform) -> bool:
    return p.settings.stack == "team"


def _batch(raw_dir: Path) -> pd.DataFrame:
    from windpipe.data.process import process, read_raw

    return process(*read_raw(raw_dir)).tail(200)


def _marts(p: Platform):
    return tables.get_engine(get_settings().effective_marts_url)


@pytest.mark.slow
def test_quick_pipeline_and_promotion(client, raw_dir):
    import mlflow

    p = client
    proc = p.windpipe("pipeline", "run", "--raw", str(raw_dir), "--quick", "--env-manager", "local", timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parent = latest_run(p, "pipeline")
    assert parent.info.status == "FINISHED"
    production = mlflow.MlflowClient().get_model_version_by_alias(p.settings.model_name, "production")
    assert latest_run(p, "promote").info.status == "FINISHED" and int(production.version) >= 1
    if _team(p):  # artifacts go through the tracking server's proxy to S3
        assert parent.info.artifact_uri.startswith("mlflow-artifacts:/")


@pytest.mark.slow
def test_predict_lands_in_the_stacks_marts(client, raw_dir, tmp_path):
    import mlflow

    p = client
    batch = _batch(raw_dir)[[TIMESTAMP, *FEATURES]]
    inp = tmp_path / "in.parquet"
    batch.to_parquet(inp, index=False)
    production = mlflow.MlflowClient().get_model_version_by_alias(p.settings.model_name, "production")
    engine = _marts(p)
    assert engine.dialect.name == ("postgresql" if _team(p) else "sqlite")
    # in this process, and through the helper process big batches take (here: from one row on)
    for helper_rows in ("0", "1"):
        out = tmp_path / f"out{helper_rows}.parquet"
        proc = p.windpipe("predict", "--input", str(inp), "--output", str(out),
                          extra_env={"WINDPIPE_MARTS_HELPER_ROWS": helper_rows})
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        res = pd.read_parquet(out)
        assert len(res) == 200 and set(res.model_version.astype(str)) == {str(production.version)}
        batch_id = int(res.batch_id.iloc[0])
        newest = queries.latest_batches(engine, limit=1).iloc[0]
        assert (int(newest.id), newest.status, newest.row_count, newest.source) == (batch_id, "complete", 200, "cli")
        rows = queries.batch_rows(engine, batch_id)
        assert rows.row_no.tolist() == list(range(200))
        np.testing.assert_allclose(rows[PRED_COLUMNS].to_numpy(), res[PRED_COLUMNS].to_numpy())
        np.testing.assert_allclose(rows[FEATURES].to_numpy(), batch[FEATURES].to_numpy())
        assert (pd.to_datetime(rows[TIMESTAMP]).to_numpy()
                == pd.to_datetime(batch[TIMESTAMP], utc=True).dt.tz_localize(None).to_numpy()).all()
    if _team(p):
        _assert_in_postgres(p, batch_id)
        _assert_artifacts_in_s3(p)
    else:
        assert (p.home / "marts.db").exists()


def _assert_in_postgres(p: Platform, batch_id: int) -> None:
    """The rows are in PostgreSQL's `marts` schema, read with the marts' own login; no marts.db anywhere."""
    import psycopg

    with psycopg.connect(host=p.settings.host, port=p.settings.team.pg_port, user="marts", dbname="marts",
                         passfile=str(p.settings.paths.marts_passfile)) as conn:
        counts = [conn.execute(f"SELECT count(*) FROM marts.{t} WHERE batch_id = %s", (batch_id,)).fetchone()[0]
                  for t in ("input_mart", "output_mart")]
        assert counts == [200, 200]
    assert not (p.home / "marts.db").exists()


def _assert_artifacts_in_s3(p: Platform) -> None:
    """The artifacts are objects in the S3 store's bucket (rclone serves a folder), none on the client."""
    from windpipe.stack import postgres, s3

    predict = latest_run(p, "predict")
    exp = predict.info.experiment_id
    bucket = p.settings.paths.s3_root / p.settings.team.s3_bucket / "artifacts" / exp
    assert (bucket / predict.info.run_id / "artifacts").is_dir()
    assert list((bucket / "models").glob("m-*/artifacts/MLmodel"))
    keys = s3.client(p.settings).list_objects_v2(Bucket=p.settings.team.s3_bucket, Prefix=f"artifacts/{exp}/")
    assert keys["KeyCount"] > 0
    # nothing in the tracking store points at S3 or holds a key
    with postgres._connect(p.settings, postgres.APP_ROLE, "mlflow") as conn:
        uris = [r[0] for r in conn.execute("SELECT artifact_uri FROM runs").fetchall()]
    assert uris and all(u.startswith("mlflow-artifacts:/") for u in uris)


@pytest.mark.slow
def test_a_failed_batch_leaves_no_file_and_no_rows(client, raw_dir, tmp_path):
    """The batch fails after its rows went in (the step's MLflow logging before the commit): all rolled back."""
    from windpipe.scoring.batch import run_batch

    batch = _batch(raw_dir)[[TIMESTAMP, *FEATURES]]
    inp = tmp_path / "in.parquet"
    batch.to_parquet(inp, index=False)
    engine = _marts(client)
    before = queries.count_rows(engine)
    seen = []

    def tracking_down(result) -> None:
        seen.append(result.batch_id)
        raise WindpipeError("The tracking server went away.", "run `windpipe up`")

    for helper_rows in (0, 1):  # this process's connection, and the helper process's
        out = tmp_path / f"out{helper_rows}.parquet"
        settings = get_settings().model_copy(update={"marts_helper_rows": helper_rows})
        with pytest.raises(WindpipeError, match="tracking server went away"):
            run_batch(inp, out, settings=settings, before_commit=tracking_down, say=lambda _m: None)
        assert not out.exists() and not list(tmp_path.glob("*out*"))
    assert len(seen) == 2 and queries.count_rows(engine) == before


@pytest.mark.slow
def test_dashboard_data_reads_and_writes_the_stacks_marts(client, raw_dir, tmp_path):
    from windpipe.views.dashboard import app as board_app
    from windpipe.views.dashboard import fetchers

    p = client
    settings = get_settings()
    board = board_app.create_app(settings).windpipe
    store, _banner, start, end = board.refresh(None, None, None)
    board.predictions(store, start, end)
    board.flush()  # the dashboard's predictions: a batch in the marts
    batches = fetchers.recent_batches(settings)
    assert batches is not None and batches.source.iloc[0] == "dashboard" and (batches.source == "cli").sum() == 2
    drift = fetchers.recent_drift(settings)
    assert drift is not None and set(drift.feature) == set(FEATURES)
    assert set(drift.batch) >= set(batches[batches.source == "cli"].id)

    # recorded power for the scored hours: `windpipe monitor` writes the performance table, the model page reads it
    actuals = tmp_path / "actuals.csv"
    _batch(raw_dir).to_csv(actuals, index=False)
    proc = p.windpipe("monitor", "--actuals", str(actuals))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    perf = fetchers.performance_history(settings, settings.model_name)
    cli_ids = set(batches[batches.source == "cli"].id)
    assert perf is not None and set(perf.batch_id) >= cli_ids
    mine = perf[perf.batch_id.isin(cli_ids)]
    assert (mine.rows_with_actuals == 200).all() and (mine.rmse > 0).all()


@pytest.mark.slow
def test_report_on_the_production_model(client, tmp_path):
    out = tmp_path / "weekly.html"
    proc = client.windpipe("report", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "week " in proc.stdout and out.stat().st_size > 10_000



def _served_version(url: str) -> str | None:
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
            return json.loads(resp.read()).get("version")
    except OSError:
        return None


@pytest.mark.slow
def test_serve_follows_a_forced_promotion_and_the_rollback(client, raw_dir, tmp_path):
    """`windpipe serve`, a real HTTP server (on the team stack with the login from the environment and the
    model through the tracking server's proxy), follows `promote --force` and then `rollback`, and answers
    what the version it names predicts."""
    import signal
    import subprocess
    import sys

    import mlflow

    from tests.conftest import REPO
    from windpipe.deploy import serving
    from windpipe.models import loading
    from windpipe.stack.procs import free_port

    p = client
    versions = mlflow.MlflowClient()
    name = p.settings.model_name
    first = versions.get_model_version_by_alias(name, "production")
    # another model the pipeline trained (a run that logged one: not a grid's child, whichever family won)
    logged = mlflow.search_runs(experiment_names=[p.settings.experiment], output_format="list",
                                filter_string=f"tags.`{MODEL_URI_TAG}` LIKE 'models:/%'")
    other = next(r for r in logged if r.info.run_id != first.run_id and r.data.tags.get(STEP_TAG) in trainers())
    proc = p.windpipe("promote", "--run-id", other.info.run_id, "--force")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    second = versions.get_model_version_by_alias(name, "production")
    assert second.version != first.version and second.run_id == other.info.run_id

    rows = _batch(raw_dir).head(5)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "windpipe", "serve", "--port", str(port), "--poll", "0.5"],
                                  env=p.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for version in (second, None, first):
            if version is None:  # production back to the version it replaced
                proc = p.windpipe("rollback")
                assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
                assert versions.get_model_version_by_alias(name, "production").version == first.version
                continue
            wait_for(lambda v=version: server.poll() is not None or _served_version(url) == str(v.version),
                     f"version {version.version} answers", 120)
            assert server.poll() is None, log.read_text()[-3000:]
            uri = f"models:/{name}/{version.version}"
            columns, tensor = serving.input_spec(get_settings(), uri)
            served = serving.request_predictions(url, rows, columns, tensor)
            expected = loading.quantile_frame(*loading.predict_quantiles(loading.load(loading.resolve(uri)),
                                                                         rows[FEATURES], rows[TIMESTAMP]))
            assert list(served.columns) == list(expected.columns)  # the point forecast and its quantiles
            np.testing.assert_allclose(served.to_numpy(), expected.to_numpy(), rtol=1e-5)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    if _team(p):
        secret = p.env["MLFLOW_TRACKING_PASSWORD"]
        assert secret not in log.read_text(), "the password is in the server's output"

def test_settings_pick_the_marts_of_the_stack(tmp_path):
    """Fast: the marts URL each stack gets, and that no URL carries a password."""
    local = Settings(home=tmp_path)
    assert local.effective_marts_url == f"sqlite:///{tmp_path / 'marts.db'}"
    team = Settings(home=tmp_path, stack="team", team={"pg_port": 5999})
    assert team.effective_marts_url == (f"postgresql+psycopg://marts@127.0.0.1:5999/marts"
                                        f"?passfile={tmp_path / 'marts_pgpass'}")
    assert tables.display_url(team.effective_marts_url) == "postgresql+psycopg://marts@127.0.0.1:5999/marts"
    external = Settings(home=tmp_path, stack="team",
                        team={"pg_url": "postgresql+psycopg://u:secret@db.example.org/mlflow"})
    assert external.effective_marts_url.endswith("@db.example.org/mlflow")
    assert "secret" not in tables.display_url(external.effective_marts_url)
    chosen = Settings(home=tmp_path, stack="team", marts_url="sqlite:////srv/m.db")
    assert chosen.effective_marts_url == "sqlite:////srv/m.db"


def test_a_login_kept_in_the_env_file_reaches_mlflows_client(tmp_path, monkeypatch):
    """Fast: MLflow's client reads only os.environ, so a login kept in .env (not the shell) is put there
    for it and the steps; a login the shell sets wins."""
    import os

    from windpipe.settings import apply_process_environment

    logins = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "WINDPIPE_TRACKING_USERNAME",
              "WINDPIPE_TRACKING_PASSWORD")
    for name in logins:
        monkeypatch.setenv(name, "")  # (recorded, so that the teardown restores the test's environment)
        monkeypatch.delenv(name)
    env_file = tmp_path / ".env"
    env_file.write_text("WINDPIPE_TRACKING_USERNAME=ada\nWINDPIPE_TRACKING_PASSWORD=kept-in-the-file\n")
    monkeypatch.setenv("WINDPIPE_ENV_FILE", str(env_file))
    clear_settings_cache()
    apply_process_environment()
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("ada",
                                                                                              "kept-in-the-file")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "from-the-shell")
    clear_settings_cache()
    apply_process_environment()
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "from-the-shell"
    clear_settings_cache()


def test_the_team_settings_keep_their_variable_names(tmp_path, monkeypatch):
    """Fast: the team stack's settings are one nested model (settings.team), read from the variables they always
    had (WINDPIPE_PG_PORT, WINDPIPE_S3_BUCKET, ...), from the environment or the .env file (the environment
    wins); a bad value names its variable; the state folder's paths are one object (settings.paths)."""
    team_vars = {"WINDPIPE_PG_PORT": "6543", "WINDPIPE_S3_BUCKET": "from-the-shell", "WINDPIPE_AUTH": "basic",
                 "WINDPIPE_PG_URL": "postgresql+psycopg://u:secret@db.example.org/mlflow",
                 "WINDPIPE_REGISTRY_LEASE": "42"}
    for name in [*team_vars, "WINDPIPE_S3_PORT", "WINDPIPE_S3_REGION", "WINDPIPE_STACK"]:
        monkeypatch.setenv(name, "")  # (recorded, so that the teardown restores the test's environment)
        monkeypatch.delenv(name)
    for name, value in team_vars.items():
        monkeypatch.setenv(name, value)
    env_file = tmp_path / ".env"
    env_file.write_text("WINDPIPE_S3_BUCKET=from-the-file\nWINDPIPE_S3_REGION=eu-central-1\nWINDPIPE_STACK=team\n")
    monkeypatch.setenv("WINDPIPE_ENV_FILE", str(env_file))
    monkeypatch.setenv("WINDPIPE_HOME", str(tmp_path / "home"))
    clear_settings_cache()
    try:
        settings = get_settings()
        assert settings.stack == "team"
        team = settings.team
        assert (team.pg_port, team.s3_bucket, team.s3_region, team.auth, team.s3_port) == (
            6543, "from-the-shell", "eu-central-1", "basic", 9000)
        assert team.pg_url is not None and team.pg_url.get_secret_value().endswith("@db.example.org/mlflow")
        assert team.registry_lease == 42.0 and settings.effective_lock_url == team.pg_url.get_secret_value()
        assert settings.paths.pid_file("mlflow") == tmp_path / "home" / "run" / "mlflow.pid"
        assert settings.paths.marts_passfile == tmp_path / "home" / "marts_pgpass"
        monkeypatch.setenv("WINDPIPE_S3_PORT", "99999")
        clear_settings_cache()
        with pytest.raises(WindpipeError, match=r"WINDPIPE_S3_PORT='99999': Input should be less than or equal"):
            get_settings()
    finally:
        clear_settings_cache()

"""The team stack: real PostgreSQL, `rclone serve s3` and MLflow (basic auth on), started by windpipe.

One platform serves the session (`team_platform` in conftest; tests/test_stacks.py runs the core
flows on it first). The tests here run in file order; the last one stops and restarts parts of it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.conftest import REPO, Platform, latest_run, point_at, team_env
from tests.processes import Paused, code_snapshot, kill9, listening_sockets, popen
from windpipe.stack import postgres, s3, team
from windpipe.stack.procs import stop_pid
from windpipe.tracking.client import basic_auth_header

SECRETS = (postgres.SUPERUSER_PASSWORD, postgres.APP_PASSWORD, postgres.PASSFILE, postgres.MARTS_PASSWORD,
           "marts_pgpass", postgres.LOCKS_PASSWORD, "locks_pgpass", s3.KEY_ID, s3.SECRET_KEY, s3.CREDENTIALS,
           team.ADMIN_PASSWORD, team.FLASK_KEY, team.AUTH_CONFIG)


@pytest.fixture
def as_client(team_platform: Platform, monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    """This process is a client of the team platform (MLflow reads the MLFLOW_TRACKING_* variables)."""
    from windpipe.settings import clear_settings_cache

    yield point_at(team_platform, monkeypatch)
    clear_settings_cache()


def _secrets(p: Platform) -> dict[str, str]:
    """Every generated secret value (the files' contents, and each value inside the multi-line ones)."""
    values = {}
    for name in (postgres.SUPERUSER_PASSWORD, postgres.APP_PASSWORD, postgres.MARTS_PASSWORD,
                 postgres.LOCKS_PASSWORD, s3.KEY_ID, s3.SECRET_KEY, team.ADMIN_PASSWORD, team.FLASK_KEY):
        values[name] = p.settings.paths.secret_file(name).read_text().strip()
    assert all(len(v) >= 16 for v in values.values()), values.keys()
    return values


def _api(p: Platform, path: str, body: dict | None = None, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(f"{p.tracking_uri}{path}", data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json", **basic_auth_header(auth)})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.slow
def test_team_up_status_secrets_and_loopback(team_platform):
    import psutil

    p = team_platform
    proc = p.windpipe("status")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("postgres", "marts", "s3", "mlflow"):
        assert f"up   {name}" in proc.stdout, proc.stdout
    assert "query ok" in proc.stdout and "bucket mlflow listed" in proc.stdout and "artifact proxy ok" in proc.stdout
    # the marts: their own login and schema on the same PostgreSQL, the URL shown without its password file
    assert f"marts@127.0.0.1:{p.settings.team.pg_port}/marts " in proc.stdout and "passfile" not in proc.stdout
    # ... and that login reaches the marts' database only, not the tracking store; the registry lock's login
    # (windpipe.stack.locks) its own database only
    import psycopg

    for role, secret in (("marts", postgres.MARTS_PASSWORD), ("locks", postgres.LOCKS_PASSWORD)):
        password = p.settings.paths.secret_file(secret).read_text().strip()
        for db in ("marts", "locks", "mlflow", "mlflow_auth"):
            try:
                psycopg.connect(host=p.settings.host, port=p.settings.team.pg_port, user=role, dbname=db,
                                password=password).close()
                reached = True
            except psycopg.OperationalError as exc:
                assert "permission denied" in str(exc)
                reached = False
            assert reached is (db == role), (role, db)

    # up again: nothing new starts
    proc = p.windpipe("up")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("already running") == 3, proc.stdout

    # generated secrets: mode 0600, in no process's command line, no log, no status output
    for name in SECRETS:
        assert stat.S_IMODE(p.settings.paths.secret_file(name).stat().st_mode) == 0o600, name
    secrets = _secrets(p)
    servers = [postgres.running_pid(p.settings), s3.running_pid(p.settings), team.mlflow_pid(p.settings)]
    assert None not in servers
    argv = " ".join(" ".join(each.info["cmdline"] or []) for each in psutil.process_iter(["cmdline"]))
    logs = [*(p.home / "logs").glob("*.log"), postgres.log_path(p.settings)]
    assert len(logs) >= 3
    text = argv + proc.stdout + proc.stderr + "".join(f.read_text(errors="replace") for f in logs)
    leaked = [name for name, value in secrets.items() if value in text]
    assert leaked == []
    # ... and none in a row of the tracking store or the marts (run artifact URIs, params, tags, model sources)
    import psycopg

    rows = []
    for user, db, pw_file in (("mlflow", "mlflow", postgres.passfile(p.settings)),
                              ("marts", "marts", p.settings.paths.marts_passfile)):
        with psycopg.connect(host=p.settings.host, port=p.settings.team.pg_port, user=user, dbname=db,
                             passfile=str(pw_file)) as conn:
            tables = [r[0] for r in conn.execute("SELECT format('%I.%I', schemaname, tablename) FROM pg_tables "
                                                 "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")]
            for table in tables:
                rows += [r[0] for r in conn.execute(f"SELECT t::text FROM {table} t")]
    artifact_uris = [r for r in rows if "mlflow-artifacts:/" in r or "s3://" in r]
    assert len(tables) > 3 and artifact_uris, "the tracking store holds no run yet"
    assert [name for name, value in secrets.items() if any(value in r for r in rows)] == []
    # the tracking server's own environment holds paths to secrets, not secrets
    server_env = psutil.Process(team.mlflow_pid(p.settings)).environ()
    assert not [n for n, v in secrets.items() if any(v in x for x in server_env.values())]
    assert "PGPASSFILE" in server_env and "AWS_SHARED_CREDENTIALS_FILE" in server_env

    # every server listens on loopback only
    listening = listening_sockets(list(servers))
    assert {port for _, port in listening} >= {p.settings.team.pg_port, p.settings.team.s3_port, p.settings.mlflow_port}
    assert {ip for ip, _ in listening} == {"127.0.0.1"}, listening

    # the state folder: only the server's group may pass, nobody else may even do that
    if os.geteuid() == 0:
        assert stat.S_IMODE(p.home.stat().st_mode) == 0o710


@pytest.mark.slow
def test_basic_auth_refuses_requests_without_credentials(team_platform, raw_dir):
    p = team_platform
    search = "/api/2.0/mlflow/experiments/search"
    assert _api(p, search, {"max_results": 1}) == 401
    assert _api(p, search, {"max_results": 1}, auth=("admin", "wrong")) == 401
    assert _api(p, "/api/2.0/mlflow-artifacts/artifacts") == 401
    assert _api(p, search, {"max_results": 1}, auth=team.admin_credentials(p.settings)) == 200
    # a windpipe command without the credentials stops at once and says which variables to set
    env = {k: v for k, v in p.env.items() if k not in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    proc = _windpipe(env, "pipeline", "run", "--raw", str(raw_dir), "--quick")
    assert proc.returncode == 1 and "HTTP 401" in proc.stderr, proc.stdout + proc.stderr
    assert "MLFLOW_TRACKING_USERNAME" in proc.stderr and "Traceback" not in proc.stderr
    # `windpipe env` gives a shell the credentials without printing the password
    eval_lines = _windpipe(p.env, "env").stdout
    assert "MLFLOW_TRACKING_USERNAME=admin" in eval_lines and "MLFLOW_TRACKING_PASSWORD=\"$(cat " in eval_lines
    assert team.admin_credentials(p.settings)[1] not in eval_lines


def _windpipe(env: dict[str, str], *args: str):
    import subprocess

    return subprocess.run([sys.executable, "-m", "windpipe", *args], env=env, capture_output=True, text=True,
                          timeout=600, cwd=REPO)


@pytest.mark.slow
def test_existing_database_and_s3_are_used_and_left_alone(team_platform, tmp_path):
    """A second tracking server pointed (by settings) at the platform's PostgreSQL and S3 starts only itself."""
    from urllib.parse import quote

    p = team_platform
    key_id, secret = s3.keys(p.settings)
    app_password = p.settings.paths.secret_file(postgres.APP_PASSWORD).read_text().strip()
    home = tmp_path / "client-home"
    env = {**team_env(home), "WINDPIPE_AUTH": "none",
           "WINDPIPE_PG_URL": f"postgresql+psycopg://mlflow:{quote(app_password)}@127.0.0.1:{p.settings.team.pg_port}/mlflow",
           "WINDPIPE_S3_ENDPOINT_URL": p.settings.s3_endpoint, "WINDPIPE_S3_ACCESS_KEY_ID": key_id,
           "WINDPIPE_S3_SECRET_ACCESS_KEY": "wrong"}
    own = [postgres.running_pid(p.settings), s3.running_pid(p.settings)]

    # bad settings: a clear message naming the setting to change; nothing started, no secret shown
    from windpipe.stack.procs import free_port

    wrong_password = f"postgresql+psycopg://mlflow:not-{quote(app_password)}@127.0.0.1:{p.settings.team.pg_port}/mlflow"
    cases = [
        ({}, "refused the keys", "WINDPIPE_S3_SECRET_ACCESS_KEY"),  # (the secret key above is wrong)
        ({"WINDPIPE_S3_SECRET_ACCESS_KEY": secret, "WINDPIPE_PG_URL": wrong_password},
         "password authentication failed", "check WINDPIPE_PG_URL"),
        ({"WINDPIPE_S3_SECRET_ACCESS_KEY": secret, "WINDPIPE_S3_BUCKET": "no-such-bucket"},
         "has no bucket 'no-such-bucket'", "WINDPIPE_S3_BUCKET"),
        ({"WINDPIPE_S3_SECRET_ACCESS_KEY": secret, "WINDPIPE_S3_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"},
         "does not answer", "check WINDPIPE_S3_ENDPOINT_URL"),
        ({"WINDPIPE_S3_SECRET_ACCESS_KEY": secret, "WINDPIPE_MLFLOW_PORT": str(p.settings.team.pg_port)},
         f"Port {p.settings.team.pg_port} on 127.0.0.1 is taken", "WINDPIPE_MLFLOW_PORT=<port>"),
    ]
    for change, problem, fix in cases:
        proc = _windpipe({**env, **change}, "up")
        assert proc.returncode == 1, (change, proc.stdout + proc.stderr)
        assert problem in proc.stderr and fix in proc.stderr and "Traceback" not in proc.stderr, (change, proc.stderr)
        assert "mlflow: starting" not in proc.stdout and not list((home / "run").glob("*.pid")), change
        assert app_password not in proc.stdout + proc.stderr and secret not in proc.stdout + proc.stderr

    env["WINDPIPE_S3_SECRET_ACCESS_KEY"] = secret
    proc = _windpipe(env, "up")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "postgres: using postgresql+psycopg://mlflow:***@127.0.0.1" in proc.stdout, proc.stdout
    assert f"s3: using {p.settings.s3_endpoint}" in proc.stdout and "mlflow: starting" in proc.stdout
    assert app_password not in proc.stdout + proc.stderr
    assert not (home / "postgres").exists() and not (home / "s3").exists()
    proc = _windpipe(env, "status")
    # s3, postgres, marts, mlflow up, and the state folder's disk
    ups = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("up   ")]
    assert proc.returncode == 0 and sorted(ups) == ["disk", "marts", "mlflow", "postgres", "s3"], proc.stdout
    # the marts in a schema of their own in WINDPIPE_PG_URL's database, shown without the password
    assert f"up   marts   postgresql+psycopg://mlflow:***@127.0.0.1:{p.settings.team.pg_port}/mlflow" in proc.stdout
    assert app_password not in proc.stdout + proc.stderr

    proc = _windpipe(env, "down")
    assert proc.returncode == 0 and "mlflow: stopped" in proc.stdout, proc.stdout
    assert "postgres" not in proc.stdout and "s3" not in proc.stdout
    assert [postgres.running_pid(p.settings), s3.running_pid(p.settings)] == own


@pytest.mark.slow
def test_binary_copy_writes_what_the_generic_path_writes(team_platform, monkeypatch):
    """The PostgreSQL marts: binary COPY (in chunks) and SQLAlchemy's executemany store the same rows; a missing
    value (NaN, NaT) is NULL, as on SQLite."""
    import numpy as np
    import pandas as pd
    from sqlalchemy import func, select

    from windpipe.marts import dialects, queries, tables, writers
    from windpipe.names import FEATURES, PRED_COLUMNS, TIMESTAMP

    engine = tables.get_engine(team_platform.settings.effective_marts_url)
    rng = np.random.default_rng(1)
    features = pd.DataFrame({f: rng.normal(size=7) * 100 for f in FEATURES})
    features.iloc[3, 1] = np.nan
    ts = pd.Series(pd.date_range("2020-02-29 22:00:00.5", periods=7, freq="h", tz="UTC"))
    ts[5] = pd.NaT
    preds = rng.normal(size=(7, 2))
    preds[2, 0] = np.nan
    got = []
    for fast in (True, False):
        monkeypatch.setattr(dialects, "FAST_PATH", fast)
        monkeypatch.setattr(dialects, "COPY_ROWS", 2)  # 6 complete rows: three COPY buffers
        batch_id = writers.record_batch(engine, features, preds, model_name="m", model_version=1, model_uri="u",
                                        timestamps=ts, row_numbers=np.arange(0, 14, 2))
        got.append(queries.batch_rows(engine, batch_id))
        with engine.connect() as conn:  # NULL, not a NaN float or a far-away timestamp
            nulls = [conn.execute(select(func.count()).select_from(t).where(t.c.batch_id == batch_id, t.c[c].is_(None))
                                  ).scalar_one() for t, c in ((tables.input_mart, FEATURES[1]),
                                                              (tables.input_mart, TIMESTAMP),
                                                              (tables.output_mart, PRED_COLUMNS[0]))]
        assert nulls == [1, 1, 1], (fast, nulls)
    tables.dispose_engines()
    pd.testing.assert_frame_equal(got[0], got[1])
    rows = got[0]
    assert rows.row_no.tolist() == list(range(0, 14, 2))
    np.testing.assert_array_equal(rows[FEATURES].to_numpy(dtype=float), features.to_numpy())
    np.testing.assert_array_equal(rows[PRED_COLUMNS].to_numpy(dtype=float), preds)
    expected = ts.dt.tz_localize(None)
    assert rows[TIMESTAMP].isna().tolist() == expected.isna().tolist()
    assert (pd.to_datetime(rows[TIMESTAMP]).dropna() == expected.dropna().values).all()


@pytest.mark.slow
def test_postgres_killed_during_the_marts_write(as_client, tmp_path):
    """kill -9 of PostgreSQL while `windpipe predict` holds its batch open (input rows in, no commit): a clear
    error naming PostgreSQL, no output file, and after `windpipe up` no row of the batch."""
    from tests.models import log_registered_model
    from windpipe.marts import queries, tables
    from windpipe.names import FEATURES, TIMESTAMP

    p = as_client
    info = log_registered_model(p, alias=None, tmp_dir=tmp_path)
    inp, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    info["df"].tail(300)[[TIMESTAMP, *FEATURES]].to_parquet(inp, index=False)
    url = p.settings.effective_marts_url
    before = queries.count_rows(tables.get_engine(url))
    tables.dispose_engines()
    paused = Paused(tmp_path, "predict:marts_open")
    proc = popen(p, "predict", "--input", str(inp), "--output", str(out), "--model-uri", info["model_uri"],
                 extra_env=paused.env)
    paused.wait(proc)
    kill9(postgres.running_pid(p.settings))
    paused.go()
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stdout + stderr
    assert "The PostgreSQL server of the data marts" in stderr and "nothing of the batch was written" in stderr
    assert "Traceback" not in stderr and not out.exists() and not list(tmp_path.glob("*out*"))
    up = p.windpipe("up")
    assert up.returncode == 0 and "postgres: started" in up.stdout, up.stdout + up.stderr
    assert queries.count_rows(tables.get_engine(url)) == before
    tables.dispose_engines()



@pytest.mark.slow
def test_postgres_killed_while_predict_fetches_the_drift_reference(as_client, tmp_path):
    """kill -9 of PostgreSQL while `windpipe predict` fetches the model's training entity (its first batch: not
    cached yet) through the tracking server: the message names the tracking store's PostgreSQL server, not the
    entity's URI, and nothing is written."""
    import time

    from tests.models import log_registered_model
    from windpipe.names import FEATURES, TIMESTAMP

    p = as_client
    info = log_registered_model(p, alias=None, tmp_dir=tmp_path)
    inp, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    info["df"].tail(300)[[TIMESTAMP, *FEATURES]].to_parquet(inp, index=False)
    paused = Paused(tmp_path, "predict:drift_reference")
    proc = popen(p, "predict", "--input", str(inp), "--output", str(out), "--model-uri", info["model_uri"],
                 extra_env=paused.env)
    paused.wait(proc)
    kill9(postgres.running_pid(p.settings))
    started = time.monotonic()
    paused.go()
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        up = p.windpipe("up")
    print(f"\npredict ended {time.monotonic() - started:.1f} s after PostgreSQL was killed:\n{stderr}")
    assert up.returncode == 0, up.stdout + up.stderr
    assert proc.returncode == 1, stdout + stderr
    assert "PostgreSQL server of the tracking store" in stderr and "check the URI" not in stderr, stderr
    assert "Traceback" not in stderr and not out.exists() and not list(tmp_path.glob("*out*"))


def _everything_recorded(p: Platform, kept_run: str) -> dict:
    """Every run (id -> status), model version (-> its run) and alias (-> version), and the artifacts of
    `kept_run` (path -> bytes, read back through the tracking server's proxy from S3)."""
    import mlflow

    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=5000)
    versions = client.search_model_versions(f"name = '{p.settings.model_name}'")
    model = client.get_registered_model(p.settings.model_name)
    files = {f.path: mlflow.artifacts.load_text(f"runs:/{kept_run}/{f.path}") for f in client.list_artifacts(kept_run)}
    return {"runs": {r.info.run_id: r.info.status for r in runs}, "versions": {v.version: v.run_id for v in versions},
            "aliases": dict(model.aliases), "artifacts": files}


@pytest.mark.slow
def test_postgres_and_s3_killed_during_pipeline_steps_then_the_pipeline_resumes(as_client, raw_dir, tmp_path):
    """kill -9 of PostgreSQL, then of the S3 server, as the lr step starts: each time the pipeline stops with
    the part named; after `windpipe up` it resumes from the cache, and everything recorded before is there."""
    import mlflow

    p = as_client
    snap = code_snapshot(tmp_path / "code")
    args = ["pipeline", "run", "--raw", str(raw_dir), "--quick", "--env-manager", "local", "-P", "rf.n_estimators=4",
            "-P", "rf.max_depth=4", "-P", "keras.epochs=1"]
    from tests.models import log_registered_model

    log_registered_model(p, alias="challenger", tmp_dir=tmp_path)  # at least one run, version and alias
    with mlflow.start_run(experiment_id=mlflow.set_experiment(p.settings.experiment).experiment_id) as kept:
        mlflow.log_text("recorded before the kills", "kept.txt")
    before = _everything_recorded(p, kept.info.run_id)
    assert before["artifacts"] == {"kept.txt": "recorded before the kills"}

    def pipeline(pid: int | None) -> tuple[int, str, str]:
        paused = Paused(tmp_path, "step:lr") if pid else None
        proc = popen(p, *args, extra_env={"PYTHONPATH": str(snap), **(paused.env if paused else {})}, cwd=snap)
        if paused:
            paused.wait(proc)
            kill9(pid)
            paused.go()
        out, err = proc.communicate(timeout=900)
        return proc.returncode, out, err

    # PostgreSQL dies as lr starts: the message names it (the tracking server itself still answers /health)
    code, out, err = pipeline(postgres.running_pid(p.settings))
    assert code == 1, out[-3000:] + err[-3000:]
    assert f"The PostgreSQL server of the tracking store at 127.0.0.1:{p.settings.team.pg_port} does not answer" in err
    assert "windpipe up" in err and "Traceback" not in err, err[-3000:]
    up = p.windpipe("up")
    assert up.returncode == 0 and "postgres: started" in up.stdout, up.stdout + up.stderr

    # the S3 server dies as lr starts again: named as well
    code, out, err = pipeline(s3.running_pid(p.settings))
    assert code == 1, out[-3000:] + err[-3000:]
    assert f"The S3 store at {p.settings.s3_endpoint} does not answer" in err, err[-3000:]
    assert "windpipe up" in err and "Traceback" not in err, err[-3000:]
    lr = latest_run(p, "lr")
    assert lr.info.status == "FAILED" and "S3 store" in lr.data.tags["windpipe.failure_reason"]
    up = p.windpipe("up")
    assert up.returncode == 0 and "s3: starting" in up.stdout, up.stdout + up.stderr

    # both back: the pipeline resumes from the cache (process finished before the first kill: reused)
    code, out, err = pipeline(None)
    assert code == 0, out[-3000:] + err[-3000:]
    last = latest_run(p, "pipeline")
    how = {k.removeprefix("windpipe.pipeline."): v.split()[1] for k, v in last.data.tags.items()
           if k.startswith("windpipe.pipeline.")}
    assert last.info.status == "FINISHED" and how["process"] == "reused" and how["lr"] == "ran", how
    running = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                 filter_string="attributes.status = 'RUNNING'")
    assert running == []  # the runs the dead servers could not end were ended by the next pipeline

    # every earlier run, model version, alias and artifact is still there (runs left RUNNING were ended since)
    after = _everything_recorded(p, kept.info.run_id)
    assert {r: s for r, s in after["runs"].items() if before["runs"].get(r, "RUNNING") != "RUNNING"} == {
        r: s for r, s in before["runs"].items() if s != "RUNNING"}
    assert before["versions"].items() <= after["versions"].items()
    assert set(before["aliases"]) <= set(after["aliases"])  # (the resumed pipeline may have moved production)
    assert after["artifacts"] == before["artifacts"]

@pytest.mark.slow
def test_status_names_the_stopped_part_and_up_restarts_only_it(team_platform):
    p = team_platform
    mlflow_pid = team.mlflow_pid(p.settings)

    stop_pid(s3.running_pid(p.settings))
    proc = p.windpipe("status")
    assert proc.returncode == 1
    assert "DOWN s3" in proc.stdout and "up   postgres" in proc.stdout, proc.stdout
    # the whole message: which store, what is wrong, what to do
    assert re.search(rf"DOWN s3 .* The S3 store at {re.escape(p.settings.s3_endpoint)} does not answer \(\w+\)\.\n"
                     r"  fix: run `windpipe up`\n", proc.stdout), proc.stdout
    # ... and the tracking server, up, says that it cannot reach its artifact store
    assert re.search(r"DOWN mlflow .* cannot reach its artifact store", proc.stdout), proc.stdout

    # PostgreSQL killed hard: status names it, `up` restarts it (recovering from the crash)
    os.kill(postgres.running_pid(p.settings), signal.SIGKILL)
    proc = p.windpipe("status")
    assert proc.returncode == 1 and "DOWN postgres" in proc.stdout and "DOWN s3" in proc.stdout, proc.stdout
    marts = f"postgresql+psycopg://marts@127.0.0.1:{p.settings.team.pg_port}/marts"
    assert f"DOWN marts   {marts}" in proc.stdout, proc.stdout
    assert f"The PostgreSQL server of the data marts ({marts}) does not answer (" in proc.stdout, proc.stdout
    assert "fix: check that it runs (`windpipe status`; `windpipe up` starts the team stack's)" in proc.stdout

    proc = p.windpipe("up")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "s3: starting" in proc.stdout and "postgres: started" in proc.stdout, proc.stdout
    assert team.mlflow_pid(p.settings) == mlflow_pid  # the tracking server kept running and reconnects
    proc = p.windpipe("status")
    assert proc.returncode == 0, proc.stdout
    assert _api(p, "/api/2.0/mlflow/experiments/search", {"max_results": 5},
                auth=team.admin_credentials(p.settings)) == 200

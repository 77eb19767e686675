"""The team stack: real PostgreSQL, `rclone serve s3` and MLflow (basic auth on), started by windpipe.

One platform serves the whole module (the tests run in file order; the last one stops and restarts
parts of it). Its state folder is under /tmp: as root the PostgreSQL server runs as `postgres`,
which must be able to pass through every parent folder (pytest's own temporary root is 0700).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, Platform, latest_run, platform_env
from windpipe.settings import Settings
from windpipe.stack import postgres, s3, team
from windpipe.stack.procs import free_port, stop_pid
from windpipe.tracking.client import basic_auth_header

SECRETS = (postgres.SUPERUSER_PASSWORD, postgres.APP_PASSWORD, postgres.PASSFILE, s3.KEY_ID, s3.SECRET_KEY,
           s3.CREDENTIALS, team.ADMIN_PASSWORD, team.FLASK_KEY, team.AUTH_CONFIG)


def team_env(home: Path) -> dict[str, str]:
    env = platform_env(home)
    env.update({"WINDPIPE_STACK": "team", "WINDPIPE_AUTH": "basic", "WINDPIPE_PG_PORT": str(free_port()),
                "WINDPIPE_S3_PORT": str(free_port()), "WINDPIPE_STARTUP_TIMEOUT": "180"})
    return env


def team_settings(env: dict[str, str]) -> Settings:
    return Settings(home=Path(env["WINDPIPE_HOME"]), stack="team", auth=env["WINDPIPE_AUTH"],
                    mlflow_port=int(env["WINDPIPE_MLFLOW_PORT"]), pg_port=int(env["WINDPIPE_PG_PORT"]),
                    s3_port=int(env["WINDPIPE_S3_PORT"]), startup_timeout=180)


@pytest.fixture(scope="module")
def team_platform() -> Iterator[Platform]:
    """One team platform for this module, stopped and removed at the end."""
    home = Path(tempfile.mkdtemp(prefix="windpipe-team-"))
    env = team_env(home)
    p = Platform(team_settings(env), env)
    try:
        team.up(p.settings, say=lambda _m: None)
        user, password = team.admin_credentials(p.settings)
        # what a user's shell gets from `eval "$(windpipe env)"`
        p.env.update({"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password})
        yield p
    finally:
        team.down(p.settings, say=lambda _m: None)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def as_client(team_platform: Platform, monkeypatch: pytest.MonkeyPatch) -> Platform:
    """This process is a client of the team platform (MLflow reads the MLFLOW_TRACKING_* variables)."""
    import mlflow

    from windpipe.settings import clear_settings_cache

    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "WINDPIPE_HOME",
                "WINDPIPE_STACK", "WINDPIPE_MLFLOW_PORT", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)
        if key in team_platform.env:
            monkeypatch.setenv(key, team_platform.env[key])
    clear_settings_cache()
    mlflow.set_tracking_uri(team_platform.tracking_uri)
    return team_platform


def _secrets(p: Platform) -> dict[str, str]:
    """Every generated secret value (the files' contents, and each value inside the multi-line ones)."""
    values = {}
    for name in (postgres.SUPERUSER_PASSWORD, postgres.APP_PASSWORD, s3.KEY_ID, s3.SECRET_KEY,
                 team.ADMIN_PASSWORD, team.FLASK_KEY):
        values[name] = p.settings.secret_file(name).read_text().strip()
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
    for name in ("postgres", "s3", "mlflow"):
        assert f"up   {name}" in proc.stdout, proc.stdout
    assert "query ok" in proc.stdout and "bucket mlflow listed" in proc.stdout and "artifact proxy ok" in proc.stdout

    # up again: nothing new starts
    proc = p.windpipe("up")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("already running") == 3, proc.stdout

    # generated secrets: mode 0600, in no process's command line, no log, no status output
    for name in SECRETS:
        assert stat.S_IMODE(p.settings.secret_file(name).stat().st_mode) == 0o600, name
    secrets = _secrets(p)
    servers = [postgres.running_pid(p.settings), s3.running_pid(p.settings), team.mlflow_pid(p.settings)]
    assert None not in servers
    argv = " ".join(" ".join(each.info["cmdline"] or []) for each in psutil.process_iter(["cmdline"]))
    logs = [*(p.home / "logs").glob("*.log"), postgres.log_path(p.settings)]
    assert len(logs) >= 3
    text = argv + proc.stdout + proc.stderr + "".join(f.read_text(errors="replace") for f in logs)
    leaked = [name for name, value in secrets.items() if value in text]
    assert leaked == []
    # the tracking server's own environment holds paths to secrets, not secrets
    server_env = psutil.Process(team.mlflow_pid(p.settings)).environ()
    assert not [n for n, v in secrets.items() if any(v in x for x in server_env.values())]
    assert "PGPASSFILE" in server_env and "AWS_SHARED_CREDENTIALS_FILE" in server_env

    # every server listens on loopback only
    listening = set()
    for pid in servers:
        for each in (psutil.Process(pid), *psutil.Process(pid).children(recursive=True)):
            listening |= {(c.laddr.ip, c.laddr.port) for c in each.net_connections("tcp") if c.status == "LISTEN"}
    assert {port for _, port in listening} >= {p.settings.pg_port, p.settings.s3_port, p.settings.mlflow_port}
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
def test_pipeline_promote_and_predict_on_the_team_stack(as_client, raw_dir, tmp_path):
    import mlflow
    import pandas as pd

    from windpipe.data.process import process, read_raw
    from windpipe.names import FEATURES, TIMESTAMP

    p = as_client
    proc = p.windpipe("pipeline", "run", "--raw", str(raw_dir), "--quick", "--env-manager", "local", timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client = mlflow.MlflowClient()
    production = client.get_model_version_by_alias(p.settings.model_name, "production")
    parent = latest_run(p, "pipeline")
    assert parent.info.status == "FINISHED"
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:/")

    batch = process(*read_raw(raw_dir)).tail(200)[[TIMESTAMP, *FEATURES]]
    inp, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    batch.to_parquet(inp, index=False)
    proc = p.windpipe("predict", "--input", str(inp), "--output", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = pd.read_parquet(out)
    assert len(res) == 200 and set(res.model_version.astype(str)) == {str(production.version)}

    # the artifacts are objects in the S3 store's bucket (rclone serves a folder), none on the client
    predict = latest_run(p, "predict")
    exp = predict.info.experiment_id
    bucket = p.settings.s3_root / p.settings.s3_bucket / "artifacts" / exp
    assert (bucket / predict.info.run_id / "artifacts").is_dir()
    assert list((bucket / "models").glob("m-*/artifacts/MLmodel"))
    keys = s3.client(p.settings).list_objects_v2(Bucket=p.settings.s3_bucket, Prefix=f"artifacts/{exp}/")
    assert keys["KeyCount"] > 0
    # nothing in the tracking store points at S3 or holds a key
    with postgres._connect(p.settings, postgres.APP_ROLE, "mlflow") as conn:
        uris = [r[0] for r in conn.execute("SELECT artifact_uri FROM runs").fetchall()]
    assert uris and all(u.startswith("mlflow-artifacts:/") for u in uris)


@pytest.mark.slow
def test_existing_database_and_s3_are_used_and_left_alone(team_platform, tmp_path):
    """A second tracking server pointed (by settings) at the platform's PostgreSQL and S3 starts only itself."""
    from urllib.parse import quote

    p = team_platform
    key_id, secret = s3.keys(p.settings)
    app_password = p.settings.secret_file(postgres.APP_PASSWORD).read_text().strip()
    home = tmp_path / "client-home"
    env = {**team_env(home), "WINDPIPE_AUTH": "none",
           "WINDPIPE_PG_URL": f"postgresql+psycopg://mlflow:{quote(app_password)}@127.0.0.1:{p.settings.pg_port}/mlflow",
           "WINDPIPE_S3_ENDPOINT_URL": p.settings.s3_endpoint, "WINDPIPE_S3_ACCESS_KEY_ID": key_id,
           "WINDPIPE_S3_SECRET_ACCESS_KEY": "wrong"}
    own = [postgres.running_pid(p.settings), s3.running_pid(p.settings)]

    # bad keys: a clear message naming the setting; nothing started
    proc = _windpipe(env, "up")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "refused the keys" in proc.stderr and "WINDPIPE_S3_SECRET_ACCESS_KEY" in proc.stderr, proc.stderr
    assert "mlflow: starting" not in proc.stdout and "Traceback" not in proc.stderr

    env["WINDPIPE_S3_SECRET_ACCESS_KEY"] = secret
    proc = _windpipe(env, "up")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "postgres: using postgresql+psycopg://mlflow:***@127.0.0.1" in proc.stdout, proc.stdout
    assert f"s3: using {p.settings.s3_endpoint}" in proc.stdout and "mlflow: starting" in proc.stdout
    assert app_password not in proc.stdout + proc.stderr
    assert not (home / "postgres").exists() and not (home / "s3").exists()
    proc = _windpipe(env, "status")
    assert proc.returncode == 0 and proc.stdout.count("up   ") == 3, proc.stdout

    proc = _windpipe(env, "down")
    assert proc.returncode == 0 and "mlflow: stopped" in proc.stdout, proc.stdout
    assert "postgres" not in proc.stdout and "s3" not in proc.stdout
    assert [postgres.running_pid(p.settings), s3.running_pid(p.settings)] == own


@pytest.mark.slow
def test_status_names_the_stopped_part_and_up_restarts_only_it(team_platform):
    p = team_platform
    mlflow_pid = team.mlflow_pid(p.settings)

    stop_pid(s3.running_pid(p.settings))
    proc = p.windpipe("status")
    assert proc.returncode == 1
    assert "DOWN s3" in proc.stdout and "up   postgres" in proc.stdout, proc.stdout
    assert "The S3 store at" in proc.stdout and "windpipe up" in proc.stdout

    # PostgreSQL killed hard: status names it, `up` restarts it (recovering from the crash)
    os.kill(postgres.running_pid(p.settings), signal.SIGKILL)
    proc = p.windpipe("status")
    assert proc.returncode == 1 and "DOWN postgres" in proc.stdout and "DOWN s3" in proc.stdout, proc.stdout

    proc = p.windpipe("up")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "s3: starting" in proc.stdout and "postgres: started" in proc.stdout, proc.stdout
    assert team.mlflow_pid(p.settings) == mlflow_pid  # the tracking server kept running and reconnects
    proc = p.windpipe("status")
    assert proc.returncode == 0, proc.stdout
    assert _api(p, "/api/2.0/mlflow/experiments/search", {"max_results": 5},
                auth=team.admin_credentials(p.settings)) == 200

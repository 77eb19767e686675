"""Fixtures: real servers on free ports in temporary folders, stopped afterwards."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest

from windpipe.settings import TELEMETRY_OFF, Settings, clear_settings_cache
from windpipe.stack import services as platform
from windpipe.stack.procs import free_port, port_is_free

REPO = Path(__file__).resolve().parent.parent
# telemetry off as in every windpipe process: this one drives pipelines in threads too (windpipe.settings)
os.environ.update(TELEMETRY_OFF)
PLATFORM_VARS = ("WINDPIPE_HOME", "WINDPIPE_FTP_PORT", "WINDPIPE_MLFLOW_PORT", "WINDPIPE_FTP_PASSIVE_PORTS",
                 "WINDPIPE_FTP_PASSWORD", "MLFLOW_TRACKING_URI", "WINDPIPE_ENV_FILE",
                 # MLflow 3's set_experiment() exports MLFLOW_EXPERIMENT_ID into os.environ; an earlier
                 # test's id must not reach a later test's subprocesses
                 "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID",
                 # the team stack's choices (tests/test_team.py sets its own)
                 "WINDPIPE_STACK", "WINDPIPE_AUTH", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                 "WINDPIPE_PG_PORT", "WINDPIPE_S3_PORT", "WINDPIPE_STARTUP_TIMEOUT", "WINDPIPE_MARTS_URL")


def free_port_range(n: int = 10) -> str:
    for _ in range(200):
        base = random.randint(20000, 60000 - n)
        if all(port_is_free("127.0.0.1", p) for p in range(base, base + n)):
            return f"{base}-{base + n - 1}"
    raise RuntimeError("no free port range")


@dataclass
class Platform:
    """A running local platform and the environment that points at it."""

    settings: Settings
    env: dict[str, str]

    @property
    def home(self) -> Path:
        return self.settings.home

    @property
    def tracking_uri(self) -> str:
        return self.settings.local_tracking_uri

    def windpipe(self, *args: str, check: bool = False, timeout: float = 600,
                 extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run the `windpipe` command as a user would, with this platform's environment."""
        env = {**self.env, **(extra_env or {})}
        proc = subprocess.run([sys.executable, "-m", "windpipe", *args], env=env, capture_output=True,
                              text=True, timeout=timeout, cwd=REPO)
        if check and proc.returncode != 0:
            raise AssertionError(f"windpipe {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc


def platform_env(home: Path) -> dict[str, str]:
    mlflow_port = free_port()
    ftp_port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in PLATFORM_VARS}
    env.update({
        "WINDPIPE_HOME": str(home),
        "WINDPIPE_FTP_PORT": str(ftp_port),
        "WINDPIPE_MLFLOW_PORT": str(mlflow_port),
        "WINDPIPE_FTP_PASSIVE_PORTS": free_port_range(),
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}",
        "WINDPIPE_ENV_FILE": str(home / "no.env"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
    })
    return env


def settings_from(env: dict[str, str]) -> Settings:
    """The settings a windpipe process started with `env` reads (nothing of this test process's own environment)."""
    with mock.patch.dict(os.environ, env, clear=True):
        return Settings(_env_file=None)


@pytest.fixture
def make_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Factory: a fresh platform per call (for tests that kill servers); all stopped at the end."""
    started: list[Platform] = []

    def make(start: bool = True) -> Platform:
        env = platform_env(tmp_path_factory.mktemp("home"))
        p = Platform(settings_from(env), env)
        if start:
            platform.up(p.settings, say=lambda _m: None)
        started.append(p)
        return p

    yield make
    for p in started:
        platform.down(p.settings, say=lambda _m: None)


@pytest.fixture(scope="session")
def shared_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """One platform for the whole session; tests that only read and write runs share it."""
    env = platform_env(tmp_path_factory.mktemp("shared-home"))
    p = Platform(settings_from(env), env)
    platform.up(p.settings, say=lambda _m: None)
    yield p
    platform.down(p.settings, say=lambda _m: None)


@pytest.fixture
def use_platform(shared_platform: Platform, monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    """Point this process (MLflow client, get_settings) at the shared platform."""
    import mlflow

    for key in PLATFORM_VARS:
        monkeypatch.delenv(key, raising=False)
    for key in PLATFORM_VARS:
        if key in shared_platform.env:
            monkeypatch.setenv(key, shared_platform.env[key])
    clear_settings_cache()
    mlflow.set_tracking_uri(shared_platform.tracking_uri)
    yield shared_platform
    clear_settings_cache()


def team_env(home: Path) -> dict[str, str]:
    env = platform_env(home)
    env.update({"WINDPIPE_STACK": "team", "WINDPIPE_AUTH": "basic", "WINDPIPE_PG_PORT": str(free_port()),
                "WINDPIPE_S3_PORT": str(free_port()), "WINDPIPE_STARTUP_TIMEOUT": "180"})
    return env


@pytest.fixture(scope="session")
def team_platform() -> Iterator[Platform]:
    """One team platform (PostgreSQL, rclone S3, MLflow with basic auth) for the session, removed at the end.

    Its state folder is under /tmp: as root the PostgreSQL server runs as `postgres`, which must be able
    to pass through every parent folder (pytest's own temporary root is 0700).
    """
    from windpipe.stack import team

    home = Path(tempfile.mkdtemp(prefix="windpipe-team-"))
    env = team_env(home)
    p = Platform(settings_from(env), env)
    try:
        platform.up(p.settings, say=lambda _m: None)
        user, password = team.admin_credentials(p.settings)
        # what a user's shell gets from `eval "$(windpipe env)"`
        p.env.update({"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": password})
        yield p
    finally:
        platform.down(p.settings, say=lambda _m: None)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module", params=["local", "team"])
def stack_platform(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """The core flows on both stacks: a fresh local platform for the module, or the session's team platform."""
    if request.param == "team":
        yield request.getfixturevalue("team_platform")
        return
    env = platform_env(tmp_path_factory.mktemp("stack-home"))
    p = Platform(settings_from(env), env)
    platform.up(p.settings, say=lambda _m: None)
    yield p
    platform.down(p.settings, say=lambda _m: None)


def point_at(p: Platform, monkeypatch: pytest.MonkeyPatch) -> Platform:
    """This process is a client of the platform: its environment (MLflow reads MLFLOW_TRACKING_*) and settings."""
    import mlflow

    for key in PLATFORM_VARS:
        monkeypatch.delenv(key, raising=False)
        if key in p.env:
            monkeypatch.setenv(key, p.env[key])
    clear_settings_cache()
    mlflow.set_tracking_uri(p.tracking_uri)
    return p


def stored_artifacts(p: Platform, prefix: str) -> set[str]:
    """What the platform's artifact store itself holds under `prefix` (`<experiment id>/<run id>`, or
    `<experiment id>/models/<model id>`), relative to it: the team stack's bucket listed with S3's API,
    or the local stack's FTP folder. Clients reach both only through the tracking server's proxy."""
    if p.settings.stack == "team":
        from windpipe.stack import s3

        pages = s3.client(p.settings).get_paginator("list_objects_v2").paginate(
            Bucket=p.settings.team.s3_bucket, Prefix=f"artifacts/{prefix}/")
        return {o["Key"].removeprefix(f"artifacts/{prefix}/") for page in pages for o in page.get("Contents", [])}
    root = p.settings.paths.ftp_root / "artifacts" / prefix
    return {f.relative_to(root).as_posix() for f in root.rglob("*") if f.is_file()}


@pytest.fixture(scope="session")
def raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small generated raw data (one year)."""
    from windpipe.data.synth import write_raw

    out = tmp_path_factory.mktemp("raw")
    write_raw(out, seed=7, start_year=2013, years=1)
    return out


def mlflow_run(platform: Platform, project: str, *args: str, env_manager: str = "local",
               timeout: float = 900) -> subprocess.CompletedProcess:
    """`mlflow run projects/<project> ...` as a user types it, against `platform`."""
    env = {**platform.env, "MLFLOW_EXPERIMENT_NAME": platform.settings.experiment}
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO / "projects" / project), *args]
    if env_manager:
        cmd += ["--env-manager", env_manager]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def trainers(projects: Path | None = None) -> list[str]:
    """The steps that write a model (the training pipeline runs them side by side), sorted: from the
    interfaces, so a new family's step counts without editing a test."""
    from windpipe.pipeline.interfaces import load_interfaces

    return sorted(s.name for s in load_interfaces(projects) if any(p.entity == "model" for p in s.outputs))


def latest_run(platform: Platform, step: str, entry_point: str | None = None):
    """The newest run of a step (by the windpipe.step tag)."""
    import mlflow

    mlflow.set_tracking_uri(platform.tracking_uri)
    filt = f"tags.`windpipe.step` = '{step}'"
    if entry_point:
        filt += f" and tags.`windpipe.entry_point` = '{entry_point}'"
    runs = mlflow.search_runs(experiment_names=[platform.settings.experiment], filter_string=filt,
                              order_by=["start_time DESC"], output_format="list")
    return runs[0]

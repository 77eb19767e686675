"""The one settings object, read from the environment and `.env`, and every path convention.

Nothing here touches the disk at import time; `get_settings()` builds the object on demand.
Where a file lives (pid files, logs, caches, generated secrets, databases) is decided here
and nowhere else.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def repo_root() -> Path:
    """The repository holding this package (editable install), else the working directory."""
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists() and (here / "windpipe").is_dir():
        return here
    return Path.cwd()


def package_dir() -> Path:
    """The `windpipe` package folder (code version hashes, vendoring on export)."""
    return Path(__file__).resolve().parent


def projects_dir() -> Path:
    """The `projects/` folder of this checkout: one MLflow project per step."""
    return repo_root() / "projects"


def default_report_path() -> Path:
    return repo_root() / "report" / "output" / "weekly_report.html"


def _env_file() -> Path:
    return Path(os.environ.get("WINDPIPE_ENV_FILE", repo_root() / ".env"))


class Settings(BaseSettings):
    """Every knob windpipe has. Environment variables are `WINDPIPE_<NAME>` unless noted."""

    model_config = SettingsConfigDict(env_prefix="WINDPIPE_", extra="ignore", populate_by_name=True)

    home: Path = Field(default_factory=lambda: repo_root() / ".windpipe")
    host: str = "127.0.0.1"
    ftp_port: int = 2121
    ftp_passive_ports: str = "30000-30009"
    mlflow_port: int = 5000
    mlflow_workers: int = 1
    # "fast": MLflow's app under uvicorn in one process; "cli": the plain `mlflow server` command
    mlflow_launcher: Literal["fast", "cli"] = "fast"
    ftp_user: str = "windpipe"
    ftp_password: SecretStr | None = None
    experiment: str = "predicting_wind_solar"
    model_name: str = "wind_solar"
    tracking_uri: str | None = Field(
        default=None, validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "WINDPIPE_TRACKING_URI")
    )
    marts_url: str | None = None
    # batches of at least this many rows go into the marts through a helper process (overlapping the
    # model's loading and scoring; windpipe.marts.helper); 0: never
    marts_helper_rows: int = Field(default=100_000, ge=0)
    log_dashboard_predictions: bool = True
    dashboard_port: int = 8050
    serve_port: int = 8003
    # `windpipe serve` resolves its alias this often and swaps in a newly promoted version
    serve_poll_seconds: float = Field(default=3.0, gt=0)
    lab_port: int = 8888
    startup_timeout: float = 60.0
    # show diagnostics on the console (`windpipe --verbose`): library logs, TensorFlow's C++ lines, warnings
    verbose: bool = False

    # ------------------------------------------------------------------ the team stack (docs/team.md)
    # "local": MLflow on SQLite, artifacts on FTP; "team": MLflow on PostgreSQL, artifacts on S3
    stack: Literal["local", "team"] = "local"
    pg_port: int = 5433
    # an existing PostgreSQL database for MLflow (then `up` starts none), e.g.
    # postgresql+psycopg://mlflow@db.example.org/mlflow (password in the URL or in ~/.pgpass)
    pg_url: SecretStr | None = None
    # the PostgreSQL server binaries (initdb, pg_ctl); default: the Debian package's /usr/lib/postgresql/<n>/bin
    pg_bin: Path | None = None
    # PostgreSQL refuses to run as root: when windpipe runs as root the server runs as this user
    pg_os_user: str = "postgres"
    s3_port: int = 9000
    # an existing S3 service (then `up` starts no rclone), e.g. https://s3.eu-central-1.amazonaws.com
    s3_endpoint_url: str | None = None
    s3_bucket: str = "mlflow"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    # "basic": the team tracking server runs MLflow's basic-auth app (a generated admin password)
    auth: Literal["none", "basic"] = "none"
    # what windpipe's own requests to a basic-auth tracking server send (MLflow's client reads the same variables)
    tracking_username: str | None = Field(default=None, validation_alias=AliasChoices(
        "MLFLOW_TRACKING_USERNAME", "WINDPIPE_TRACKING_USERNAME"))
    tracking_password: SecretStr | None = Field(default=None, validation_alias=AliasChoices(
        "MLFLOW_TRACKING_PASSWORD", "WINDPIPE_TRACKING_PASSWORD"))

    # ------------------------------------------------------------------ addresses

    @property
    def local_tracking_uri(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def effective_tracking_uri(self) -> str:
        """`MLFLOW_TRACKING_URI` when set, else the local platform's URI."""
        return self.tracking_uri or self.local_tracking_uri

    @property
    def passive_range(self) -> range:
        first, _, last = self.ftp_passive_ports.partition("-")
        return range(int(first), int(last or first) + 1)

    @property
    def effective_marts_url(self) -> str:
        return self.marts_url or f"sqlite:///{self.home / 'marts.db'}"

    # ------------------------------------------------------------------ the state folder

    def pid_file(self, service: str) -> Path:
        """Where a detached service (ftp, mlflow, dashboard, ...) records its pid."""
        return self.home / "run" / f"{service}.pid"

    def log_file(self, service: str) -> Path:
        return self.home / "logs" / f"{service}.log"

    def run_file(self, name: str) -> Path:
        """Small runtime facts beside the pid files (e.g. the dashboard's URL)."""
        return self.home / "run" / name

    def secret_file(self, name: str) -> Path:
        """A generated secret (mode 0600), e.g. the FTP password."""
        return self.home / name

    @property
    def ftp_root(self) -> Path:
        return self.home / "ftp"

    @property
    def backend_store_uri(self) -> str:
        return f"sqlite:///{self.home.resolve() / 'mlflow.db'}"

    @property
    def registry_lock_file(self) -> Path:
        return self.home / "registry.lock"

    @property
    def postgres_dir(self) -> Path:
        """The team stack's PostgreSQL: data/ (PGDATA), run/ (its socket), postgres.log; owned by the server's user."""
        return self.home / "postgres"

    @property
    def s3_root(self) -> Path:
        """The folder `rclone serve s3` serves: one subfolder per bucket."""
        return self.home / "s3"

    @property
    def s3_endpoint(self) -> str:
        return self.s3_endpoint_url or f"http://{self.host}:{self.s3_port}"

    def cache_dir(self, *parts: str) -> Path:
        """Downloads kept between commands (model versions, training entities): <home>/cache/..."""
        return self.home.joinpath("cache", *parts)

    def output_dir(self, *parts: str) -> Path:
        """What commands write for the user inside the state folder (docker contexts, the demo batch)."""
        return self.home.joinpath(*parts)


def get_settings(**overrides: object) -> Settings:
    """Build settings from the environment, `.env` and explicit overrides (overrides win)."""
    return _cached(tuple(sorted(overrides.items())))


@lru_cache(maxsize=8)
def _cached(overrides: tuple[tuple[str, object], ...]) -> Settings:
    env_file = _env_file()
    return Settings(_env_file=env_file if env_file.exists() else None, **dict(overrides))


def clear_settings_cache() -> None:
    """Forget cached settings (tests change the environment between cases)."""
    _cached.cache_clear()

"""The one settings object, read from the environment and `.env`, and every path convention.

Nothing here touches the disk at import time; `get_settings()` builds the object on demand.
Where a file of the state folder lives (pid files, logs, caches, generated secrets, databases) is
decided by `StatePaths` (`settings.paths`) and nowhere else; the team stack's settings are one
nested model (`settings.team`) whose variables keep their flat names (WINDPIPE_PG_PORT, ...).
What every windpipe process sets in its environment before MLflow is imported is decided here too
(`enter_process`), and true/false strings are read by `parse_bool` only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, TypeAdapter, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from windpipe.errors import WindpipeError


def repo_root() -> Path:
    """The repository holding this package (editable install), else the working directory."""
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists() and (here / "windpipe").is_dir():
        return here
    return Path.cwd()


def package_dir() -> Path:
    """The `windpipe` package folder (code version hashes, vendoring on export)."""
    return Path(__file__).resolve().parent


def default_projects_dir() -> Path:
    """`projects/` of this checkout: the step folders a pure module reads unless its caller names others."""
    return repo_root() / "projects"


def projects_dir() -> Path:
    """The folder of step folders (one MLflow project each): WINDPIPE_PROJECTS, else `projects/` of this checkout.
    For the edges (commands, the driver); pure modules take the folder as an argument."""
    return get_settings().projects_dir


def default_report_path() -> Path:
    return repo_root() / "report" / "output" / "weekly_report.html"


def default_raw_dir() -> Path:
    """Where `make demo` generates the raw files, and what the training DAG reads unless told otherwise."""
    return repo_root() / "data" / "raw"


#: set by the pipeline driver for its step processes: each writes its output to <dir>/<step folder>.log
STEP_LOG_DIR_ENV = "WINDPIPE_STEP_LOG_DIR"


def _env_file() -> Path:
    return Path(os.environ.get("WINDPIPE_ENV_FILE", repo_root() / ".env"))


# SQLAlchemy URI prefix of the one PostgreSQL driver the project uses (psycopg 3, pinned in requirements.txt)
PG_DRIVER = "postgresql+psycopg"
# the team stack's PostgreSQL role and database of the data marts (their schema: windpipe.marts.dialects)
MARTS_ROLE = "marts"
# ... and of the registry lock every machine sees (windpipe.stack.locks)
LOCKS_ROLE = "locks"
# MLflow's telemetry thread edits os.environ while other threads read it (a rare KeyError under load) and asks
# the internet for its config at exit: off for every windpipe process and all it starts
TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true"}

@lru_cache(maxsize=1)
def _bool_adapter() -> TypeAdapter:
    return TypeAdapter(bool)


def parse_bool(value: object, default: bool = False) -> bool:
    """A true/false value as every windpipe setting reads it (pydantic's rules, any case): true, 1, yes, on,
    t, y / false, 0, no, off, f, n; empty or None: `default`. Anything else is a ValueError."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        return _bool_adapter().validate_python(value.strip() if isinstance(value, str) else value)
    except ValidationError:
        raise ValueError(f"not true or false: {value!r}") from None


@dataclass(frozen=True)
class StatePaths:
    """Every file and folder of the state folder (WINDPIPE_HOME, default `.windpipe/` of the checkout)."""

    home: Path

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

    def cache_dir(self, *parts: str) -> Path:
        """Downloads kept between commands (model versions, training entities): <home>/cache/..."""
        return self.home.joinpath("cache", *parts)

    def output_dir(self, *parts: str) -> Path:
        """What commands write for the user inside the state folder (docker contexts, the demo batch)."""
        return self.home.joinpath(*parts)

    def pipeline_log_dir(self, pipeline_run_id: str) -> Path:
        """The output of each step of one local pipeline run: <home>/logs/pipeline/<run id>/<step>.log."""
        return self.home / "logs" / "pipeline" / pipeline_run_id

    @property
    def inbox(self) -> Path:
        """The prediction DAG's inbox unless WINDPIPE_INBOX names another (`Settings.inbox_uri`)."""
        return self.home / "inbox"

    @property
    def airflow_home(self) -> Path:
        """AIRFLOW_HOME: airflow.cfg, its SQLite database, task logs."""
        return self.home / "airflow"

    @property
    def ftp_root(self) -> Path:
        return self.home / "ftp"

    @property
    def mlflow_db(self) -> Path:
        """The local stack's tracking store (SQLite)."""
        return self.home / "mlflow.db"

    @property
    def marts_db(self) -> Path:
        """The local stack's data marts (SQLite) unless WINDPIPE_MARTS_URL names others."""
        return self.home / "marts.db"

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
    def marts_passfile(self) -> Path:
        """The team stack's libpq password file for the marts role (its line only; mode 0600)."""
        return self.secret_file("marts_pgpass")

    @property
    def locks_passfile(self) -> Path:
        """The team stack's libpq password file for the locks role (its line only; mode 0600)."""
        return self.secret_file("locks_pgpass")


class TeamStack(BaseModel):
    """The team stack's settings (WINDPIPE_STACK=team, docs/team.md). Each is read from `WINDPIPE_<NAME>`, as
    before they were nested here (WINDPIPE_PG_PORT, WINDPIPE_S3_BUCKET, ...)."""

    pg_port: int = Field(default=5433, ge=1, le=65535)
    # an existing PostgreSQL database for MLflow (then `up` starts none), e.g.
    # postgresql+psycopg://mlflow@db.example.org/mlflow (password in the URL or in ~/.pgpass)
    pg_url: SecretStr | None = None
    # the PostgreSQL server binaries (initdb, pg_ctl); default: the Debian package's /usr/lib/postgresql/<n>/bin
    pg_bin: Path | None = None
    # PostgreSQL refuses to run as root: when windpipe runs as root the server runs as this user
    pg_os_user: str = "postgres"
    s3_port: int = Field(default=9000, ge=1, le=65535)
    # an existing S3 service (then `up` starts no rclone), e.g. https://s3.eu-central-1.amazonaws.com
    s3_endpoint_url: str | None = None
    s3_bucket: str = "mlflow"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_region: str = "us-east-1"
    # the registry lock on the team stack (windpipe.stack.locks): a PostgreSQL database every machine that promotes
    # reaches; default: the team stack's own (database and role `locks`, its password in a 0600 file)
    lock_url: SecretStr | None = None
    # how long a promotion may hold the team's registry lock: a holder past it is ended by the next promotion
    registry_lease: float = Field(default=300.0, gt=0)
    # "basic": the team tracking server runs MLflow's basic-auth app (a generated admin password)
    auth: Literal["none", "basic"] = "none"


class _FlatTeamSource(PydanticBaseSettingsSource):
    """The team stack's fields from their flat variables (WINDPIPE_PG_PORT, not WINDPIPE_TEAM__PG_PORT), read from
    the variables `source` (the environment, or the .env file) has loaded."""

    def __init__(self, source: PydanticBaseSettingsSource) -> None:
        super().__init__(source.settings_cls)
        self.source = source

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # (unused: __call__ reads the variables itself)

    def __call__(self) -> dict[str, Any]:
        found: Mapping[str, str | None] = getattr(self.source, "env_vars", {})
        team = {name: found[key] for name in TeamStack.model_fields
                if (key := f"windpipe_{name}") in found and found[key] is not None}
        return {"team": team} if team else {}


class Settings(BaseSettings):
    """Every knob windpipe has. Environment variables are `WINDPIPE_<NAME>` unless noted."""

    model_config = SettingsConfigDict(env_prefix="WINDPIPE_", extra="ignore", populate_by_name=True)

    home: Path = Field(default_factory=lambda: repo_root() / ".windpipe")
    host: str = "127.0.0.1"
    ftp_port: int = Field(default=2121, ge=1, le=65535)
    ftp_passive_ports: str = "30000-30009"
    mlflow_port: int = Field(default=5000, ge=1, le=65535)
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
    # `windpipe predict` reads, checks, scores and writes its input in parts of this many rows (memory stays
    # flat whatever the file's size; windpipe.scoring.batch)
    predict_batch_rows: int = Field(default=100_000, ge=1)
    log_dashboard_predictions: bool = True
    # seconds a marts write waits for another writer's lock before it gives up
    marts_lock_timeout: float = Field(default=30.0, gt=0)
    # `windpipe monitor`: a batch is degraded when its rmse on recorded power passes this many times the
    # model's holdout rmse at promotion (the dashboard draws the same limit)
    degraded_ratio: float = Field(default=1.5, gt=0)
    # the promotion gate's physics check (windpipe.training.physics): how far (GW) a response curve that must rise
    # may fall, and how far a curve may move over an input its target must ignore (wind: radiation, solar: wind)
    physics_drop_gw: float = Field(default=0.1, ge=0)
    physics_ignore_gw: float = Field(default=0.1, ge=0)
    # the promotion gate refuses a candidate whose 80 % interval (P10..P90) covers a share of the holdout outside
    # [coverage_low, coverage_high]: too narrow claims a certainty it has not, too wide says little
    coverage_low: float = Field(default=0.75, ge=0, le=1)
    coverage_high: float = Field(default=0.85, ge=0, le=1)
    dashboard_port: int = Field(default=8050, ge=1, le=65535)
    serve_port: int = Field(default=8003, ge=1, le=65535)
    # batches the dashboard may have waiting for the marts; more are dropped (and counted), never waited for
    dashboard_queue: int = Field(default=8, ge=1)
    # `up` refuses, `status` reports DOWN, a failed step names the disk, below this many MB free for the state folder
    min_free_mb: float = Field(default=100.0, ge=0)
    # `windpipe serve` resolves its alias this often and swaps in a newly promoted version
    serve_poll_seconds: float = Field(default=3.0, gt=0)
    lab_port: int = Field(default=8888, ge=1, le=65535)
    startup_timeout: float = 60.0
    # show diagnostics on the console (`windpipe --verbose`): library logs, TensorFlow's C++ lines, warnings
    verbose: bool = False
    # orchestration: what the pipeline's steps are and where the environment that runs them lives
    projects: Path | None = None  # the folder of step folders (default: projects/ of this checkout)
    bin_dir: Path | None = None  # bin/ of the environment with windpipe and mlflow (default: .venv/bin)
    # the prediction DAG's inbox: a folder or an S3 prefix (s3://<bucket>/inbox/, through the S3 settings below)
    inbox: str | None = None  # default: <home>/inbox
    # a claim of an inbox file whose DAG run neither settled nor released it can be taken over after this long
    inbox_lease: float = Field(default=6 * 3600.0, gt=0)
    # Apache Airflow 3 (`windpipe airflow up`), in its own environment (`make airflow`)
    airflow_port: int = Field(default=8090, ge=1, le=65535)
    airflow_venv: Path = Field(default_factory=lambda: repo_root() / ".venv-airflow")
    # `windpipe airflow up --executor ...`: local (LocalExecutor, this machine) or edge (remote workers poll the
    # API server, docs/orchestration.md "Past one machine")
    airflow_executor: Literal["local", "edge"] = "local"
    # a remote worker (`windpipe airflow worker`): the central API server, and the workers' shared secret (the
    # central machine keeps it in <home>/airflow_worker_secret); its name (default: this host's name)
    airflow_api_url: str | None = None
    airflow_worker_secret: SecretStr | None = None
    worker: str | None = None  # set by `windpipe airflow worker` for its tasks: they run on a remote worker
    # MLflow's HTTP client, for every windpipe process and the step runs it starts. MLflow's defaults
    # (7 retries, backoff factor 2, 120 s per request) wait about 4 minutes on a server that is gone;
    # these give up within seconds and windpipe says which server is down. MLflow's own variable
    # names are honoured too.
    mlflow_http_max_retries: int = Field(default=2, ge=0, le=10, validation_alias=AliasChoices(
        "WINDPIPE_MLFLOW_HTTP_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"))
    mlflow_http_backoff_factor: float = Field(default=1.0, ge=0, le=120, validation_alias=AliasChoices(
        "WINDPIPE_MLFLOW_HTTP_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"))
    mlflow_http_timeout: float = Field(default=30.0, gt=0, validation_alias=AliasChoices(
        "WINDPIPE_MLFLOW_HTTP_TIMEOUT", "MLFLOW_HTTP_REQUEST_TIMEOUT"))

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        # the environment wins over .env; the nested team fields merge with the same precedence
        return (init_settings, _FlatTeamSource(env_settings), env_settings, _FlatTeamSource(dotenv_settings),
                dotenv_settings, file_secret_settings)

    @field_validator("ftp_passive_ports")
    @classmethod
    def _passive_range_is_a_range(cls, value: str) -> str:
        first, sep, last = value.strip().partition("-")
        try:
            low, high = int(first), int(last if sep else first)
        except ValueError:
            raise ValueError("must be a port or a range FIRST-LAST, e.g. 30000-30009") from None
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"must be FIRST-LAST with 1 <= FIRST <= LAST <= 65535, got {value!r}")
        return value.strip()

    # ------------------------------------------------------------------ the team stack (docs/team.md)
    # "local": MLflow on SQLite, artifacts on FTP; "team": MLflow on PostgreSQL, artifacts on S3
    stack: Literal["local", "team"] = "local"
    team: TeamStack = Field(default_factory=TeamStack)
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
        """`WINDPIPE_MARTS_URL`; else on the team stack its PostgreSQL (schema `marts`, windpipe.marts.dialects):
        WINDPIPE_PG_URL's database and login, or the `marts` database of the server `up` starts, as the role
        `marts` whose password libpq reads from a 0600 file (the URL names the file); else SQLite in the state
        folder."""
        if self.marts_url:
            return self.marts_url
        if self.stack == "team" and self.team.pg_url is not None:
            return self.team.pg_url.get_secret_value()
        if self.stack == "team":
            from urllib.parse import quote

            return (f"{PG_DRIVER}://{MARTS_ROLE}@{self.host}:{self.team.pg_port}/{MARTS_ROLE}"
                    f"?passfile={quote(str(self.paths.marts_passfile), safe='/')}")
        return f"sqlite:///{self.paths.marts_db}"

    @property
    def effective_lock_url(self) -> str | None:
        """Where the registry lock lives (None: the file lock in the state folder, for one machine):
        `WINDPIPE_LOCK_URL`; else on the team stack WINDPIPE_PG_URL's database and login, or the `locks`
        database of the server `up` starts, as the role `locks` (its password in a 0600 file the URL names)."""
        if self.team.lock_url is not None:
            return self.team.lock_url.get_secret_value()
        if self.stack != "team":
            return None
        if self.team.pg_url is not None:
            return self.team.pg_url.get_secret_value()
        from urllib.parse import quote

        return (f"{PG_DRIVER}://{LOCKS_ROLE}@{self.host}:{self.team.pg_port}/{LOCKS_ROLE}"
                f"?passfile={quote(str(self.paths.locks_passfile), safe='/')}")

    def process_environment(self) -> dict[str, str]:
        """What every windpipe process and the step runs it starts carry in their environment: MLflow's
        bounded HTTP retries, and MLflow telemetry off."""
        return {
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(self.mlflow_http_max_retries),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": f"{self.mlflow_http_backoff_factor:g}",
            "MLFLOW_HTTP_REQUEST_TIMEOUT": f"{self.mlflow_http_timeout:g}",
            **TELEMETRY_OFF,
        }

    # ------------------------------------------------------------------ places

    @property
    def paths(self) -> StatePaths:
        """Every file and folder of the state folder."""
        return StatePaths(self.home)

    @property
    def projects_dir(self) -> Path:
        """The folder of step folders: WINDPIPE_PROJECTS, else `projects/` of this checkout."""
        return self.projects or default_projects_dir()

    @property
    def windpipe_bin(self) -> Path:
        """bin/ of the environment whose `windpipe` and `mlflow` an orchestrator's tasks run."""
        return self.bin_dir or repo_root() / ".venv" / "bin"

    @property
    def inbox_uri(self) -> str:
        """Where new feature files land (a folder, or an S3 prefix s3://<bucket>/<prefix>/); scored ones move to
        done/, refused ones to failed/ (windpipe.pipeline.inbox)."""
        return self.inbox or str(self.paths.inbox)

    @property
    def airflow_url(self) -> str:
        return f"http://{self.host}:{self.airflow_port}"

    @property
    def dags_dir(self) -> Path:
        return repo_root() / "orchestration" / "airflow" / "dags"

    @property
    def backend_store_uri(self) -> str:
        return f"sqlite:///{self.paths.mlflow_db.resolve()}"

    @property
    def s3_endpoint(self) -> str:
        return self.team.s3_endpoint_url or f"http://{self.host}:{self.team.s3_port}"


def get_settings(**overrides: object) -> Settings:
    """Build settings from the environment, `.env` and explicit overrides (overrides win).

    A value that does not fit its setting (a port of 99999, `abc` for a number, a reversed passive
    range) is a WindpipeError naming the variable.
    """
    return _cached(tuple(sorted(overrides.items())))


@lru_cache(maxsize=8)
def _cached(overrides: tuple[tuple[str, object], ...]) -> Settings:
    env_file = _env_file()
    try:
        return Settings(_env_file=env_file if env_file.exists() else None, **dict(overrides))
    except ValidationError as exc:
        raise settings_error(exc, env_file) from None


def settings_error(exc: ValidationError, env_file: Path | None = None) -> WindpipeError:
    """A WindpipeError naming each setting whose value is refused (the environment variable and the value)."""
    problems = []
    for err in exc.errors():
        loc = [str(part) for part in err["loc"]]
        var = _variable(loc[1] if loc[:1] == ["team"] and len(loc) > 1 else loc[0] if loc else "?")
        message = str(err["msg"]).removeprefix("Value error, ")
        problems.append(f"{var}={err.get('input')!r}: {message}")
    where = f" (environment or {env_file})" if env_file is not None else ""
    return WindpipeError(f"Invalid setting{'s' if len(problems) > 1 else ''}{where}: " + "; ".join(problems) + ".",
                         "correct or unset the variable (`.env.example` lists every setting and its default)")


def _variable(loc: str) -> str:
    """The environment variable behind a settings field (or one of its aliases): the one that is set."""
    names = [f"WINDPIPE_{loc.upper()}"]
    for field, info in Settings.model_fields.items():
        choices = [str(c) for c in getattr(info.validation_alias, "choices", [])]
        if loc == field or loc in choices:
            names = choices or [f"WINDPIPE_{field.upper()}"]
    present = {k.upper() for k in os.environ}
    return next((n for n in names if n.upper() in present), names[0])


def apply_process_environment(settings: Settings | None = None) -> Settings:
    """Put `settings.process_environment()` into os.environ (before MLflow is imported: telemetry starts then).

    A login kept in the .env file (not the shell) goes there too: MLflow's client reads only
    MLFLOW_TRACKING_USERNAME / _PASSWORD from the environment, and the steps inherit it.
    """
    settings = settings or get_settings()
    os.environ.update(settings.process_environment())
    if settings.tracking_username and settings.tracking_password is not None:
        os.environ.setdefault("MLFLOW_TRACKING_USERNAME", settings.tracking_username)
        os.environ.setdefault("MLFLOW_TRACKING_PASSWORD", settings.tracking_password.get_secret_value())
    return settings


def enter_process() -> Settings | None:
    """What a windpipe process does first (the `windpipe` command, a step script, the dashboard's server), before
    MLflow is imported: telemetry off, `apply_process_environment`, and a tracking URI in the environment.

    Without a tracking URI MLflow 3 writes to ./mlflow.db in the working directory: a client made without one
    (or a library call that uses the default) must reach the configured server instead. Returns the settings,
    or None when a setting is invalid (the command that reads it says so; `--help` still works).
    """
    os.environ.update(TELEMETRY_OFF)
    try:
        settings = apply_process_environment()
    except WindpipeError:
        return None
    os.environ.setdefault("MLFLOW_TRACKING_URI", settings.effective_tracking_uri)
    return settings


def clear_settings_cache() -> None:
    """Forget cached settings (tests change the environment between cases)."""
    _cached.cache_clear()

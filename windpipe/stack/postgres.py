"""The team stack's PostgreSQL: the Debian package's server binaries, a data folder in the state folder.

`start` runs initdb on first use (scram passwords, a generated superuser password), starts the
server on 127.0.0.1:WINDPIPE_PG_PORT and makes the `mlflow` role and its databases. Every client
(the tracking server, our checks) connects without a password in its URI: libpq reads it from the
0600 password file (`PGPASSFILE`). PostgreSQL refuses to run as root, so as root the server runs as
WINDPIPE_PG_OS_USER (Debian's `postgres`) and the state folder lets only that user's group pass
(mode 0710), not list.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from windpipe.errors import WindpipeError
from windpipe.fileio import atomic_write_text, kept_secret
from windpipe.identity import pid_alive
from windpipe.marts.dialects import SCHEMA as MARTS_SCHEMA
from windpipe.settings import LOCKS_ROLE, MARTS_ROLE, PG_DRIVER
from windpipe.stack.procs import Say, Service, quiet

if TYPE_CHECKING:
    import psycopg

    from windpipe.settings import Settings

APP_ROLE = "mlflow"
SUPERUSER = "postgres"
# the tracking store, the basic-auth app's users, the data marts, the registry lock (each of the last two
# reached by its own role only: the marts' clients and the promotions hold no other password)
MARTS_DATABASE = MARTS_ROLE
LOCKS_DATABASE = LOCKS_ROLE
# Airflow's own database (`windpipe airflow up --executor edge`: the scheduler and the API server share it)
AIRFLOW_DATABASE = "airflow"
DATABASES = ("mlflow", "mlflow_auth", MARTS_DATABASE, LOCKS_DATABASE, AIRFLOW_DATABASE)
SUPERUSER_PASSWORD = "pg_superuser_password"
APP_PASSWORD = "pg_app_password"
PASSFILE = "pgpass"
DRIVER = PG_DRIVER
MARTS_PASSWORD = "pg_marts_password"
LOCKS_PASSWORD = "pg_locks_password"


def bin_dir(settings: Settings) -> Path:
    """Where initdb/pg_ctl live: WINDPIPE_PG_BIN, else the newest Debian /usr/lib/postgresql/<n>/bin, else PATH."""
    if settings.team.pg_bin is not None:
        candidates = [settings.team.pg_bin]
    else:
        debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
        on_path = shutil.which("pg_ctl")
        candidates = [*debian, *([Path(on_path).resolve().parent] if on_path else [])]
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    raise WindpipeError("The PostgreSQL server binaries (initdb, pg_ctl) were not found.",
                        "install them (`apt-get install postgresql`), or set WINDPIPE_PG_BIN to their folder, "
                        "or point WINDPIPE_PG_URL at a running PostgreSQL")


def _as_root() -> bool:
    return os.geteuid() == 0


def _server_cmd(settings: Settings, argv: list[str]) -> list[str]:
    # runuser switches user without PAM prompts; only root may, and only root needs to
    return ["runuser", "-u", settings.team.pg_os_user, "--", *argv] if _as_root() else argv


def _run(settings: Settings, argv: list[str]) -> subprocess.CompletedProcess:
    # cwd "/": the server's user may not enter the caller's working folder
    return subprocess.run(_server_cmd(settings, argv), capture_output=True, text=True, cwd="/")


def data_dir(settings: Settings) -> Path:
    return settings.paths.postgres_dir / "data"


def socket_dir(settings: Settings) -> Path:
    return settings.paths.postgres_dir / "run"


def log_path(settings: Settings) -> Path:
    return settings.paths.postgres_dir / "postgres.log"


def passfile(settings: Settings) -> Path:
    return settings.paths.secret_file(PASSFILE)


def prepare(settings: Settings) -> None:
    """Make the server's folders; as root, hand them to the server's user and close the state folder."""
    pg = settings.paths.postgres_dir
    for folder in (pg, socket_dir(settings)):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
    if not _as_root():
        return
    import grp
    import pwd

    try:
        user = pwd.getpwnam(settings.team.pg_os_user)
    except KeyError:
        raise WindpipeError(f"The user {settings.team.pg_os_user!r} that should run PostgreSQL does not exist.",
                            "install the `postgresql` package (it makes `postgres`), "
                            "or set WINDPIPE_PG_OS_USER") from None
    for folder in (pg, socket_dir(settings)):
        os.chown(folder, user.pw_uid, user.pw_gid)
    # the server's user may pass through the state folder (to its own folder), not list or read it
    os.chown(settings.home, 0, grp.getgrgid(user.pw_gid).gr_gid)
    settings.home.chmod(0o710)
    if _run(settings, ["test", "-w", str(pg)]).returncode != 0:
        raise WindpipeError(
            f"The user {settings.team.pg_os_user!r} cannot reach {pg}: a parent folder of {settings.home} "
            "does not let other users pass (mode o+x).",
            "point WINDPIPE_HOME at a folder below world-passable parents (e.g. under /srv or /tmp)")


def _initdb(settings: Settings) -> None:
    su_password = kept_secret(settings.paths.secret_file(SUPERUSER_PASSWORD))
    # initdb runs as the server's user, which cannot read root's secret: a short-lived 0600 copy it owns
    pwfile = settings.paths.postgres_dir / ".initdb_pwfile"
    atomic_write_text(pwfile, su_password + "\n", mode=0o600)
    try:
        if _as_root():
            st = settings.paths.postgres_dir.stat()
            os.chown(pwfile, st.st_uid, st.st_gid)
        proc = _run(settings, [str(bin_dir(settings) / "initdb"), "-D", str(data_dir(settings)), "-U", SUPERUSER,
                               f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
                               "--no-instructions"])
    finally:
        pwfile.unlink(missing_ok=True)
    if proc.returncode != 0:
        shutil.rmtree(data_dir(settings), ignore_errors=True)  # a half-made cluster would block the next try
        raise WindpipeError(f"initdb failed: {proc.stderr.strip()[-600:]}", f"see {settings.paths.postgres_dir}")


def _allow_clients(settings: Settings) -> None:
    """initdb lets clients in from 127.0.0.1 only. Bound to another address (WINDPIPE_HOST, e.g. for remote Airflow
    workers), the server also takes its own addresses (`samehost`: this machine's clients connect from the bound
    address) and its subnet's (`samenet`: the other machines), each with its password (scram-sha-256)."""
    import ipaddress

    try:
        loopback = ipaddress.ip_address(settings.host).is_loopback
    except ValueError:  # a host name
        loopback = settings.host == "localhost"
    if loopback:
        return
    hba = data_dir(settings) / "pg_hba.conf"
    text = hba.read_text()
    lines = [f"host all all {where} scram-sha-256" for where in ("samehost", "samenet")]
    missing = [line for line in lines if line not in text.splitlines()]
    if missing:
        with open(hba, "a") as out:  # (appending keeps the file's owner, the server's user)
            out.write("# windpipe: clients of the bound address's machine and subnet\n" + "\n".join(missing) + "\n")


def _ready(settings: Settings) -> int:
    """pg_isready: 0 accepting, 1 starting or recovering, 2 no answer."""
    return subprocess.run([str(bin_dir(settings) / "pg_isready"), "-q", "-h", settings.host,
                           "-p", str(settings.team.pg_port), "-t", "2"]).returncode


def running_pid(settings: Settings) -> int | None:
    """The postmaster's pid from its lock file, when that process lives."""
    try:
        pid = int((data_dir(settings) / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def start(settings: Settings, timeout: float) -> bool:
    """Start the server unless it answers already; True when this call started it."""
    if not (data_dir(settings) / "PG_VERSION").exists():
        _initdb(settings)
    _allow_clients(settings)
    state = _ready(settings)
    if state in (0, 1) and running_pid(settings) is not None:
        deadline = time.monotonic() + timeout
        while state == 1 and time.monotonic() < deadline:  # ours, still recovering
            time.sleep(0.3)
            state = _ready(settings)
        return False
    if state == 0:
        raise WindpipeError(
            f"Port {settings.team.pg_port} on {settings.host} is taken by another program, so PostgreSQL cannot start.",
            "stop that program, or choose another port with WINDPIPE_PG_PORT=<port>")
    options = (f"-c listen_addresses={settings.host} -c port={settings.team.pg_port} "
               f"-c unix_socket_directories={socket_dir(settings)} "
               # crash recovery first syncs every file (seconds); syncfs is one call per filesystem
               "-c recovery_init_sync_method=syncfs")
    argv = [str(bin_dir(settings) / "pg_ctl"), "start", "-w", "-t", str(int(timeout)), "-D", str(data_dir(settings)),
            "-l", str(log_path(settings)), "-o", options]
    deadline = time.monotonic() + min(timeout, 30)
    while True:
        proc = _run(settings, argv)
        if proc.returncode == 0:
            return True
        tail = log_path(settings).read_text(errors="replace")[-2000:] if log_path(settings).exists() else ""
        # right after a kill -9 the old postmaster is not reaped yet: retry until it is gone
        transient = "already exists" in tail or "still in use" in tail
        if not transient or time.monotonic() > deadline:
            taken = "Address already in use" in tail
            raise WindpipeError(
                f"PostgreSQL did not start: {(proc.stderr or proc.stdout).strip()[-300:]}\n{tail[-600:]}",
                "choose another port with WINDPIPE_PG_PORT=<port>" if taken else f"see {log_path(settings)}")
        time.sleep(0.5)


def bootstrap(settings: Settings) -> None:
    """Make (or refresh) the app role and its databases, the marts and locks roles with their database and schema,
    and the password files."""
    from psycopg import sql

    app_password = kept_secret(settings.paths.secret_file(APP_PASSWORD))
    su_password = kept_secret(settings.paths.secret_file(SUPERUSER_PASSWORD))
    marts_password = kept_secret(settings.paths.secret_file(MARTS_PASSWORD))
    locks_password = kept_secret(settings.paths.secret_file(LOCKS_PASSWORD))
    # the password files first: the superuser connects through one too (no password in a parameter list);
    # the marts' clients (predict, dashboard, monitor) get a file with the marts role's line only, and the
    # promotions one with the locks role's line only
    atomic_write_text(passfile(settings),
                      f"{settings.host}:{settings.team.pg_port}:*:{APP_ROLE}:{app_password}\n"
                      f"{settings.host}:{settings.team.pg_port}:*:{SUPERUSER}:{su_password}\n", mode=0o600)
    pg = f"{settings.host}:{settings.team.pg_port}"
    atomic_write_text(settings.paths.marts_passfile, f"{pg}:{MARTS_ROLE}:{MARTS_ROLE}:{marts_password}\n", mode=0o600)
    atomic_write_text(settings.paths.locks_passfile, f"{pg}:{LOCKS_ROLE}:{LOCKS_ROLE}:{locks_password}\n", mode=0o600)
    own = {MARTS_DATABASE: MARTS_ROLE, LOCKS_DATABASE: LOCKS_ROLE}  # database -> the role whose schema it holds
    with _connect(settings, SUPERUSER, "postgres", autocommit=True) as conn:
        for role, password in ((APP_ROLE, app_password), (MARTS_ROLE, marts_password), (LOCKS_ROLE, locks_password)):
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            # the statement holds the password; log_statement is 'none', so it reaches no log
            conn.execute(sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                sql.SQL("ALTER" if exists else "CREATE"), sql.Identifier(role), sql.Literal(password)))
        for db in DATABASES:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone():
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db),
                                                                              sql.Identifier(APP_ROLE)))
            # each role reaches its own databases only (PostgreSQL lets every role connect to any by default)
            conn.execute(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db)))
        for db, role in own.items():
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(db), sql.Identifier(role)))
    # the marts' tables live in a schema the marts role owns (it makes them on first use); the lock's table in
    # one named after the locks role (first on its search path)
    for db, schema in ((MARTS_DATABASE, MARTS_SCHEMA), (LOCKS_DATABASE, LOCKS_ROLE)):
        with _connect(settings, SUPERUSER, db, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
                sql.Identifier(schema), sql.Identifier(own[db])))


def _connect(settings: Settings, user: str, dbname: str, autocommit: bool = False) -> psycopg.Connection:
    import psycopg

    return psycopg.connect(host=settings.host, port=settings.team.pg_port, user=user, dbname=dbname,
                           passfile=str(passfile(settings)), connect_timeout=3, autocommit=autocommit)


def uri(settings: Settings, db: str = "mlflow") -> str:
    """The SQLAlchemy URI of a database: WINDPIPE_PG_URL's, else ours, without a password (PGPASSFILE has it)."""
    if settings.team.pg_url is not None:
        from sqlalchemy.engine import make_url

        external = settings.team.pg_url.get_secret_value()
        return external if db == "mlflow" else make_url(external).set(database=db).render_as_string(False)
    return f"{DRIVER}://{APP_ROLE}@{settings.host}:{settings.team.pg_port}/{db}"


def display_uri(settings: Settings) -> str:
    """The URI without any password, for messages and `status`."""
    from sqlalchemy.engine import make_url

    return make_url(uri(settings)).render_as_string(hide_password=True)


def client_env(settings: Settings) -> dict[str, str]:
    """What a process that connects (the tracking server) needs in its environment."""
    return {} if settings.team.pg_url is not None else {"PGPASSFILE": str(passfile(settings))}


def check(settings: Settings) -> str:
    """A real query as the app role; raise WindpipeError naming PostgreSQL."""
    import psycopg

    try:
        if settings.team.pg_url is not None:
            from sqlalchemy.engine import make_url

            url = make_url(settings.team.pg_url.get_secret_value()).set(drivername="postgresql")
            conn = psycopg.connect(url.render_as_string(hide_password=False), connect_timeout=3)
        else:
            conn = _connect(settings, APP_ROLE, "mlflow")
        with conn:
            conn.execute("SELECT 1").fetchone()
    except psycopg.Error as exc:
        fix = ("check WINDPIPE_PG_URL (host, user, password, database)" if settings.team.pg_url is not None
               else "run `windpipe up`")
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        raise WindpipeError(f"PostgreSQL at {display_uri(settings)} does not answer a query ({reason}).",
                            fix) from None
    return "query ok"


def stop(settings: Settings) -> int | None:
    """Stop the server (fast shutdown); the pid it had, or None when it was not running."""
    pid = running_pid(settings)
    if pid is None:
        return None
    _run(settings, [str(bin_dir(settings) / "pg_ctl"), "stop", "-D", str(data_dir(settings)), "-m", "fast", "-w"])
    return pid


@dataclass
class PostgresService(Service):
    """PostgreSQL as a `Service`: pg_ctl starts it (and waits for it) and stops it; its pid is the postmaster's
    (postmaster.pid). After a start the roles, databases and password files are made or refreshed."""

    settings: Settings | None = None

    @property
    def _settings(self) -> Settings:
        assert self.settings is not None
        return self.settings

    def pid(self, say: Say | None = None) -> int | None:
        return None if self.external else running_pid(self._settings)

    def begin(self, say: Say = quiet, timeout: float | None = None) -> int | None:
        if self.external:
            return super().begin(say, timeout)
        settings = self._settings
        prepare(settings)
        started = start(settings, timeout or self.timeout)
        pid = running_pid(settings)
        say(f"{self.name}: {'started' if started else 'already running'} (pid {pid})")
        bootstrap(settings)
        self.check()
        return pid if started else None

    def wait(self, alive: Callable[[], bool], timeout: float | None = None) -> str:
        return self.check()  # (pg_ctl start -w waited already)

    def stop(self, say: Say = quiet) -> int | None:
        if self.external or not data_dir(self._settings).exists():
            return None
        pid = stop(self._settings)
        say(f"{self.name}: stopped (pid {pid})" if pid else f"{self.name}: not running")
        return pid


def service(settings: Settings) -> PostgresService:
    """The team stack's PostgreSQL (started by pg_ctl), or the existing one WINDPIPE_PG_URL names (only checked)."""
    return PostgresService("postgres", display_uri(settings), lambda: check(settings), home=settings.home,
                           host=settings.host, port=settings.team.pg_port, title="PostgreSQL",
                           port_fix="choose another port with WINDPIPE_PG_PORT=<port>",
                           external=settings.team.pg_url is not None, settings=settings)

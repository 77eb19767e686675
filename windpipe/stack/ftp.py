"""The FTP artifact server (pyftpdlib): one named user, no anonymous login, loopback by default.

Run on its own with `python -m windpipe.stack.ftp` (what `windpipe up` starts) or
`python server/ftpserver.py` as in the workshop.
"""

from __future__ import annotations

import ftplib
import logging
import os
from typing import TYPE_CHECKING

from windpipe.errors import WindpipeError
from windpipe.fileio import kept_secret
from windpipe.settings import Settings, get_settings

if TYPE_CHECKING:
    from pyftpdlib.servers import FTPServer

PASSWORD_FILE = "ftp_password"
# exactly what MLflow's FTP artifact repository needs (pyftpdlib's letters): e change folder, l list (and SIZE),
# r read, m create folders, w write, f rename. Not a (append), d (delete), M (SITE CHMOD), T (set times).
PERMISSIONS = "elrmwf"


def ftp_password(settings: Settings, create: bool = False) -> str:
    """The FTP password: from settings, else the generated one kept (mode 0600) in the state folder."""
    if settings.ftp_password is not None and settings.ftp_password.get_secret_value():
        return settings.ftp_password.get_secret_value()
    stored = settings.paths.secret_file(PASSWORD_FILE)
    if not create and not stored.exists():
        raise WindpipeError(
            f"No FTP password is set and none was generated yet in {settings.home}.",
            "run `windpipe up` (it generates one) or set WINDPIPE_FTP_PASSWORD",
        )
    return kept_secret(stored)


def artifact_destination(settings: Settings, password: str) -> str:
    """The `ftp://` URI the tracking server proxies artifacts to (holds the password: never log it)."""
    from urllib.parse import quote

    return (f"ftp://{quote(settings.ftp_user, safe='')}:{quote(password, safe='')}"
            f"@{settings.host}:{settings.ftp_port}/artifacts")


def build_server(settings: Settings, password: str) -> FTPServer:
    """A ready-to-serve pyftpdlib server for the artifact root."""
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer

    root = settings.paths.ftp_root
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    authorizer = DummyAuthorizer()  # holds no anonymous user: only this one may log in
    authorizer.add_user(settings.ftp_user, password, str(root), perm=PERMISSIONS)

    handler = type("WindpipeFTPHandler", (FTPHandler,), {})
    handler.authorizer = authorizer
    handler.passive_ports = list(settings.passive_range)
    handler.banner = "windpipe artifact store"
    handler.auth_failed_timeout = 1  # still slows guessing, but a wrong password is reported quickly
    return FTPServer((settings.host, settings.ftp_port), handler)


def serve(settings: Settings | None = None) -> None:
    """Serve until interrupted."""
    settings = settings or get_settings()
    password = ftp_password(settings, create=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s ftp %(message)s")
    server = build_server(settings, password)
    logging.info("serving %s on ftp://%s:%s (user %s)", settings.paths.ftp_root, settings.host,
                 settings.ftp_port, settings.ftp_user)
    server.serve_forever()


def check_login(settings: Settings, password: str, timeout: float = 5.0) -> None:
    """Log in and out; raise WindpipeError naming the problem."""
    try:
        with ftplib.FTP(timeout=timeout) as ftp:
            ftp.connect(settings.host, settings.ftp_port)
            ftp.login(settings.ftp_user, password)
            ftp.voidcmd("NOOP")
    except ftplib.error_perm as exc:
        raise WindpipeError(
            f"FTP server on {settings.host}:{settings.ftp_port} refused the login of user "
            f"{settings.ftp_user!r} ({str(exc)[:3]}): the password differs from the one it runs with.",
            "set WINDPIPE_FTP_PASSWORD to the server's password, or `windpipe down` then `windpipe up`",
        ) from None
    except (OSError, EOFError, ftplib.Error) as exc:
        raise WindpipeError(
            f"FTP server on {settings.host}:{settings.ftp_port} does not answer ({exc.__class__.__name__}: {exc}).",
            "run `windpipe up`",
        ) from None


if __name__ == "__main__":
    os.umask(0o077)
    serve()

"""Serving the dashboard: in the foreground (gunicorn, else Dash's server), or detached with a pid file.

gunicorn (one gthread worker, 4 threads) is the production-grade server: one worker keeps a
single model cache, so each version is loaded once; threads serve concurrent callbacks. Where
gunicorn is not installed (Windows), Dash's own server runs with debug off.

`python -m windpipe.views.dashboard.serve --host H --port P` is what `start_detached` runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable

from windpipe.errors import WindpipeError
from windpipe.identity import pid_alive
from windpipe.settings import Settings, enter_process, get_settings
from windpipe.stack.procs import owned_pid, port_is_free, start_detached, stop_pid, wait_until

MARKER = "windpipe.views.dashboard.serve"  # the module the detached process runs
SERVICE = "dashboard"


def url(host: str, port: int) -> str:
    return f"http://{host}:{port}/"


def _check_port(host: str, port: int) -> None:
    if not port_is_free(host, port):
        raise WindpipeError(f"Port {port} on {host} is in use.",
                            "stop what holds it (`windpipe dashboard --stop`), or pass --port <other>")


def serve(settings: Settings, host: str, port: int, server: str = "auto") -> None:
    """Serve in the foreground until interrupted. server: auto | gunicorn | dash."""
    _check_port(host, port)
    from windpipe.views.dashboard.app import create_app

    use_gunicorn = server == "gunicorn" or (server == "auto" and _has_gunicorn())
    if not use_gunicorn:
        app = create_app(settings)
        app.run(host=host, port=port, debug=False)
        return
    from gunicorn.app.base import BaseApplication

    class _App(BaseApplication):
        def load_config(self) -> None:
            for key, value in {"bind": f"{host}:{port}", "workers": 1, "threads": 4, "worker_class": "gthread",
                               "timeout": 300, "graceful_timeout": 5, "accesslog": None,
                               "errorlog": "-", "loglevel": "warning"}.items():
                self.cfg.set(key, value)

        def load(self) -> object:
            return create_app(settings).server

    print(f"dashboard: serving {url(host, port)} (gunicorn, 1 worker x 4 threads)", flush=True)
    _App().run()


def _has_gunicorn() -> bool:
    if sys.platform.startswith("win"):
        return False
    try:
        import gunicorn  # noqa: F401
    except ImportError:
        return False
    return True


def check_ready(base: str) -> None:
    """Raise WindpipeError unless the dashboard answers its layout endpoint."""
    try:
        with urllib.request.urlopen(f"{base.rstrip('/')}/_dash-layout", timeout=2) as resp:
            if resp.status == 200:
                return
            raise WindpipeError(f"The dashboard at {base} answered HTTP {resp.status}.")
    except (urllib.error.URLError, OSError) as exc:
        raise WindpipeError(f"The dashboard at {base} does not answer ({getattr(exc, 'reason', exc)}).") from None


def start(settings: Settings, host: str | None = None, port: int | None = None) -> tuple[int, str]:
    """Start the dashboard detached (idempotent); return (pid, url). Pid and log live in settings.home."""
    host = host or settings.host
    port = port or settings.dashboard_port
    pid_file, log_file = settings.paths.pid_file(SERVICE), settings.paths.log_file(SERVICE)
    pid = owned_pid(pid_file, settings.home, say=lambda _m: None)
    if pid is not None:
        return pid, _recorded_url(settings) or url(host, port)
    _check_port(host, port)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **settings.process_environment()}
    pid = start_detached([sys.executable, "-m", MARKER, "--host", host, "--port", str(port)], env, log_file,
                         pid_file, settings.home, port=port)
    settings.paths.run_file("dashboard.url").write_text(url(host, port))
    try:
        wait_until(lambda: check_ready(url(host, port)), settings.startup_timeout, "The dashboard",
                   alive=lambda: pid_alive(pid), fix=f"see {log_file}")
    except WindpipeError as exc:
        stop_pid(pid)
        raise WindpipeError(exc.problem, f"see {log_file}") from None
    return pid, url(host, port)


def _recorded_url(settings: Settings) -> str | None:
    try:
        return settings.paths.run_file("dashboard.url").read_text().strip() or None
    except OSError:
        return None


def stop(settings: Settings, say: Callable[[str], None] = print) -> int | None:
    """Stop the detached dashboard; return its pid, or None when none was running (a stale or foreign pid
    file is removed and reported, never acted on)."""
    pid_file = settings.paths.pid_file(SERVICE)
    pid = owned_pid(pid_file, settings.home, say=say)
    if pid is not None:
        stop_pid(pid)
        pid_file.unlink(missing_ok=True)
    return pid


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=MARKER, description="Serve the windpipe dashboard in the foreground.")
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--server", choices=("auto", "gunicorn", "dash"), default="auto")
    args = parser.parse_args(argv)
    try:
        enter_process()  # telemetry off, bounded MLflow retries, a tracking URI
        settings = get_settings()
        serve(settings, args.host or settings.host, args.port or settings.dashboard_port, args.server)
    except WindpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

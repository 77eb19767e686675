"""Serving the dashboard: in the foreground (gunicorn, else Dash's server), or detached with a pid file.

gunicorn (one gthread worker, 4 threads) is the production-grade server: one worker keeps a
single model cache, so each version is loaded once; threads serve concurrent callbacks. Where
gunicorn is not installed (Windows), Dash's own server runs with debug off.

`python -m windpipe.views.dashboard.serve --host H --port P` is what the detached service (`service`) runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable

from windpipe.errors import WindpipeError
from windpipe.settings import Settings, enter_process, get_settings
from windpipe.stack.procs import Service, recorded_address

MARKER = "windpipe.views.dashboard.serve"  # the module the detached process runs
SERVICE = "dashboard"


def url(host: str, port: int) -> str:
    return f"http://{host}:{port}/"


def serve(settings: Settings, host: str, port: int, server: str = "auto") -> None:
    """Serve in the foreground until interrupted. server: auto | gunicorn | dash."""
    service(settings, host, port).require_port()
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


def service(settings: Settings, host: str | None = None, port: int | None = None) -> Service:
    """The detached dashboard: `python -m windpipe.views.dashboard.serve` on host:port (default: where it runs,
    else settings), checked by its layout endpoint."""
    running_host, running_port = recorded_address(settings.paths.pid_file(SERVICE))
    host = host or running_host or settings.host
    port = port or running_port or settings.dashboard_port
    return Service(SERVICE, url(host, port), lambda: _ready(url(host, port)), home=settings.home, host=host,
                   port=port, command=lambda: [sys.executable, "-m", MARKER, "--host", host, "--port", str(port)],
                   env=lambda: {**os.environ, "PYTHONUNBUFFERED": "1", **settings.process_environment()},
                   title="the dashboard", port_fix="pass --port <other> (a dashboard started with --detach "
                   "stops with `windpipe dashboard --stop`)", timeout=settings.startup_timeout)


def _ready(base: str) -> str:
    check_ready(base)
    return "layout ok"


def start(settings: Settings, host: str | None = None, port: int | None = None) -> tuple[int, str]:
    """Start the dashboard detached (idempotent); return (pid, url). Pid and log live in settings.home."""
    svc = service(settings, host, port)
    pid = svc.start()
    return pid, svc.running_url()


def stop(settings: Settings, say: Callable[[str], None] = print) -> int | None:
    """Stop the detached dashboard, saying so; return its pid, or None when none was running (a stale or foreign
    pid file is removed and reported, never acted on)."""
    return service(settings).stop(say)


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

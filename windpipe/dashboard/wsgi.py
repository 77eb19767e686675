"""WSGI entry: `gunicorn windpipe.dashboard.wsgi:server`. Builds the layout only; data loads lazily."""

from __future__ import annotations

from windpipe.dashboard.app import create_app
from windpipe.settings import get_settings

app = create_app(get_settings())
server = app.server

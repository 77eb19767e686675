"""WSGI entry: `gunicorn windpipe.views.dashboard.wsgi:server`. Builds the layout only; data loads lazily."""

from __future__ import annotations

from windpipe.settings import get_settings
from windpipe.views.dashboard.app import create_app

app = create_app(get_settings())
server = app.server

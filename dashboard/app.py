"""The dashboard that serves the production model. All logic lives in `windpipe.views.dashboard`.

Run it with `windpipe dashboard` (gunicorn, 127.0.0.1:8050), `python dashboard/app.py`
(Dash's own server) or `gunicorn dashboard.app:server`.
"""

from windpipe.settings import get_settings
from windpipe.views.dashboard.app import create_app

app = create_app(get_settings())
server = app.server

if __name__ == "__main__":
    settings = get_settings()
    app.run(host=settings.host, port=settings.dashboard_port, debug=False)

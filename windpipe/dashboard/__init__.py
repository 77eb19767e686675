"""The Dash dashboard that serves the production model (`create_app`), and its data and figures.

`windpipe.dashboard.data` and `.figures` import no Dash, so the report can use them alone.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:  # noqa: ANN401 - lazy re-export keeps `import windpipe.dashboard.data` light
    if name == "create_app":
        from windpipe.dashboard.app import create_app

        return create_app
    raise AttributeError(name)

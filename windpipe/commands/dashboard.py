"""`windpipe` commands for dashboard (registered by windpipe.cli)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `windpipe` app."""

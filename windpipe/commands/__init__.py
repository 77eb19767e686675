"""CLI command groups. Each module defines `register(app)`; keep heavy imports inside commands."""

MODULES = ("training", "pipeline", "registry", "serving", "dashboard", "predict", "steps")

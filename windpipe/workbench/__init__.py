"""The notebook workbench: running the workshop notebooks headless."""

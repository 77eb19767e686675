"""`python -m windpipe ...` is the `windpipe` command."""

from windpipe.cli import run

run()

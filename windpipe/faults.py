"""Fault injection for tests: a command stops at a named point so a test can kill a server or the command itself
at exactly that moment (tests/processes.py `Paused`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

PAUSE_VAR = "WINDPIPE_TEST_PAUSE_AT"


def fault_point(name: str) -> None:
    """Fault-injection tests only: stop here while WINDPIPE_TEST_PAUSE_AT is `<name>@<release file>`.

    Touches `<release file>.paused` and waits (at most 2 minutes) until the test creates the release
    file, so a test can kill a server or this process at exactly this point. Does nothing otherwise.
    """
    point, _, release = os.environ.get(PAUSE_VAR, "").partition("@")
    if point != name or not release:
        return
    Path(release + ".paused").touch()
    deadline = time.monotonic() + 120
    while not Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.05)

"""Shared benchmark helpers: a real platform in a temp folder, timing, markdown tables."""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GERMANY = Path(os.environ.get("WINDPIPE_GERMANY_CSV", REPO.parent / "shared" / "data" / "germany.csv"))


def median_time(fn: Callable[[], object], repeat: int = 5) -> tuple[float, list[float]]:
    """Median wall time of `repeat` calls, and all of them."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def table(headers: list[str], rows: list[list[object]]) -> str:
    """A markdown table."""
    def fmt(v: object) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def platform_env(home: Path) -> dict[str, str]:
    """Environment for a platform on free ports in `home` (as the tests do)."""
    import sys

    sys.path.insert(0, str(REPO))
    from tests.conftest import platform_env as _env

    return _env(home)


@contextlib.contextmanager
def running_platform() -> Iterator[tuple[object, dict[str, str]]]:
    """A real local platform in a temp folder, stopped afterwards; yields (settings, env)."""
    import signal
    import sys

    from tests.conftest import settings_from
    from windpipe.stack import services as platform
    from windpipe.stack.procs import environment

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a killed benchmark still stops its platform
    with tempfile.TemporaryDirectory(prefix="windpipe-bench-") as tmp:
        env = platform_env(Path(tmp))
        settings = settings_from(env)
        platform.up(settings, say=lambda _m: None)
        try:
            with environment(env):
                yield settings, env
        finally:
            platform.down(settings, say=lambda _m: None)

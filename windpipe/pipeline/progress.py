"""What a pipeline run shows while its steps run side by side: a live table on a terminal, plain lines in a log.

    with Progress(["process", "lr", ...], labels, console, logs) as progress:
        progress.started("lr"); progress.running("lr", run_id); progress.finished("lr", result)
    console.print(progress.summary("pipeline run ..."))

On a terminal (rich.live) every step has a row: state, elapsed seconds, run id, and the last line
of its output (each step writes its output to its own log file). Elsewhere each change of state is
one line (`[2/6] lr (lr:main): ran run 0a1b... in 12.3 s`), so logs and CI stay readable.
Callbacks may come from worker threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

WAITING, STARTED, RUNNING, RAN, REUSED, FAILED, SKIPPED = (
    "waiting", "checking cache", "running", "ran", "reused", "failed", "skipped")
STYLES = {WAITING: "dim", STARTED: "cyan", RUNNING: "bold cyan", RAN: "bold green", REUSED: "green",
          FAILED: "bold red", SKIPPED: "yellow"}


class Outcome(Protocol):
    """What a finished step reports (windpipe.pipeline.cache.StepResult)."""

    run_id: str
    reused: bool
    seconds: float
    key_metric: str | None

    @property
    def metric_value(self) -> float | None: ...


@dataclass
class Row:
    name: str
    label: str
    state: str = WAITING
    run_id: str = ""
    started: float | None = None
    seconds: float | None = None
    note: str = ""
    metric: str = ""

    def elapsed(self) -> float | None:
        if self.seconds is not None:
            return self.seconds
        return time.monotonic() - self.started if self.started is not None else None


def last_line(log: Path | None, size: int = 2048) -> str:
    """The last non-empty line of a (growing) log file, '' when there is none."""
    if log is None:
        return ""
    try:
        with open(log, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(fh.tell() - size, 0))
            lines = [x for x in fh.read().decode(errors="replace").replace("\r", "\n").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def tail(log: Path | None, n: int = 12) -> list[str]:
    """The last `n` lines of a log file."""
    if log is None or not log.exists():
        return []
    return log.read_text(errors="replace").splitlines()[-n:]


class Progress:
    """One row per step; a live table when `live`, else one printed line per change of state."""

    def __init__(self, labels: Mapping[str, str], console: Any, logs: Mapping[str, Path] | None = None,
                 live: bool | None = None) -> None:
        self.rows = {name: Row(name, label) for name, label in labels.items()}
        self.console = console
        self.logs = dict(logs or {})
        self.live = console.is_terminal if live is None else live
        self._lock = threading.Lock()
        self._live: Any = None

    def __enter__(self) -> Progress:
        if self.live:
            from rich.live import Live

            self._live = Live(self, console=self.console, refresh_per_second=4, transient=True,
                              redirect_stdout=False, redirect_stderr=False)
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    # ------------------------------------------------------------------ state changes

    def _set(self, name: str, state: str, **fields: Any) -> Row:
        with self._lock:
            row = self.rows[name]
            row.state = state
            for k, v in fields.items():
                setattr(row, k, v)
            return row

    def _say(self, row: Row, text: str) -> None:
        if not self.live:
            i = list(self.rows).index(row.name) + 1
            self.console.print(f"[{i}/{len(self.rows)}] {row.label}: {text}", highlight=False, markup=False)

    def started(self, name: str) -> None:
        self._set(name, STARTED, started=time.monotonic())

    def running(self, name: str, run_id: str) -> None:
        row = self._set(name, RUNNING, run_id=run_id)
        log = self.logs.get(name)
        self._say(row, f"running run {run_id}" + (f" (output: {log})" if log else ""))

    def finished(self, name: str, result: Outcome) -> None:
        value = result.metric_value
        metric = f"{result.key_metric}={value:.4g}" if value is not None else ""
        state = REUSED if result.reused else RAN
        row = self._set(name, state, run_id=result.run_id, seconds=result.seconds, metric=metric)
        self._say(row, f"reused run {result.run_id} ({result.seconds:.1f} s)" if result.reused
                  else f"ran run {result.run_id} in {result.seconds:.1f} s")

    def failed(self, name: str, message: str, run_id: str | None = None) -> None:
        with self._lock:
            started = self.rows[name].started
        seconds = time.monotonic() - started if started is not None else None
        row = self._set(name, FAILED, run_id=run_id or self.rows[name].run_id, seconds=seconds,
                        note=message.splitlines()[0])
        self._say(row, f"failed: {message}")

    def skipped(self, name: str, why: str) -> None:
        self._say(self._set(name, SKIPPED, note=why), f"skipped ({why})")

    # ------------------------------------------------------------------ tables

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(title="pipeline", title_justify="left", expand=False)
        for col in ("step", "state", "elapsed", "run id", "output"):
            table.add_column(col, justify="right" if col == "elapsed" else "left", no_wrap=col != "output",
                             overflow="ellipsis", max_width=70 if col == "output" else None)
        with self._lock:
            rows = [Row(**vars(r)) for r in self.rows.values()]
        for r in rows:
            elapsed = r.elapsed()
            out = r.note or r.metric or (last_line(self.logs.get(r.name)) if r.state == RUNNING else "")
            table.add_row(r.name, f"[{STYLES[r.state]}]{r.state}[/]", f"{elapsed:.1f} s" if elapsed else "",
                          r.run_id, out)
        return table

    def summary(self, title: str) -> Any:
        """The closing table: step, run id, status, seconds, key metric (or why it failed)."""
        from rich.table import Table

        table = Table(title=title)
        for col in ("step", "run id", "status", "seconds", "key metric"):
            table.add_column(col, justify="right" if col == "seconds" else "left")
        for r in self.rows.values():
            table.add_row(r.name, r.run_id, r.state, f"{r.seconds:.1f}" if r.seconds is not None else "",
                          r.metric or r.note[:80])
        return table

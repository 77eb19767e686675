"""The prediction pipeline's inbox: new feature files in; scored ones to done/, refused ones to failed/.

    <inbox>/*.parquet                         new files (write elsewhere, then rename into the inbox)
    <inbox>/done/<name>                       scored, with its predictions beside it
    <inbox>/done/<stem>.<hash>.predictions.parquet
    <inbox>/failed/<name>, <name>.reason.txt  refused, with the reason beside it

Output names carry the content hash of the input, so scoring the same file again asks for the same
output and finds the finished run in the cache (nothing is scored twice). Pure file handling: the
Airflow DAG lists the inbox with it inside Airflow's own environment.
"""

from __future__ import annotations

import os
from pathlib import Path

from windpipe.fileio import atomic_write_text
from windpipe.pipeline.cache import content_hash

DONE, FAILED = "done", "failed"
REASON_SUFFIX = ".reason.txt"


def pending(inbox: Path | str) -> list[Path]:
    """The parquet files waiting in `inbox` (hidden and partly written `.name` files left out), by name."""
    inbox = Path(inbox)
    if not inbox.is_dir():
        return []
    return sorted(p for p in inbox.glob("*.parquet") if p.is_file() and not p.name.startswith("."))


def output_path(inbox: Path | str, file: Path | str, entity: str) -> Path:
    """Where the prediction pipeline writes `entity` for `file`: done/<stem>.<content hash>.<entity>.parquet."""
    file = Path(file)
    return Path(inbox) / DONE / f"{file.stem}.{content_hash(file)[:8]}.{entity}.parquet"


def settle(inbox: Path | str, file: Path | str, reason: str | None = None) -> Path:
    """Move `file` to done/ (reason None) or to failed/ with `reason` written beside it; return the new path.

    The reason is written first, so a file in failed/ always has one. A name taken by another file
    gets the content hash added; the same content under the same name is replaced.
    """
    inbox, file = Path(inbox), Path(file)
    folder = inbox / (DONE if reason is None else FAILED)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / file.name
    if target.exists() and content_hash(target) != content_hash(file):
        target = folder / f"{file.stem}.{content_hash(file)[:8]}{file.suffix}"
    if reason is not None:
        atomic_write_text(target.with_name(target.name + REASON_SUFFIX), reason.rstrip() + "\n")
    os.replace(file, target)
    return target

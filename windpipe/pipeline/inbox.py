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

from windpipe.errors import WindpipeError
from windpipe.fileio import atomic_write_text
from windpipe.pipeline.cache import content_hash

DONE, FAILED = "done", "failed"
REASON_SUFFIX = ".reason.txt"


def pending(inbox: Path | str, worker: str | None = None) -> list[Path]:
    """The parquet files waiting in `inbox` (hidden and partly written `.name` files left out), by name.

    A folder that is not there holds nothing, except on a remote Airflow worker (`worker`: its name): there a
    folder it cannot list is a folder of another machine or user, and WindpipeError says so.
    """
    inbox = Path(inbox)
    try:
        there: bool | None = inbox.is_dir()
    except OSError:  # a parent folder this user may not pass: it may be there
        there = None
    if there and os.access(inbox, os.R_OK | os.X_OK):
        return sorted(p for p in inbox.glob("*.parquet") if p.is_file() and not p.name.startswith("."))
    if there is False and not worker:
        return []
    if worker:
        raise WindpipeError(
            f"The prediction inbox {inbox} is not a folder the Airflow worker {worker} ({_user()}) can read: "
            "with remote workers, an inbox on one machine's disk is out of the other machines' reach.",
            "give the DAG run an inbox every worker reads (`inbox` in its conf or WINDPIPE_INBOX on the workers: "
            "a shared volume mounted at the same path), or run the prediction DAG on the central machine "
            "(`windpipe airflow up` with the LocalExecutor)")
    raise WindpipeError(f"The prediction inbox {inbox} is not readable by {_user()}.",
                        "give that user read access to the folder, or point WINDPIPE_INBOX at one it can read")



def _user() -> str:
    import getpass

    try:
        return f"user {getpass.getuser()}"
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


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

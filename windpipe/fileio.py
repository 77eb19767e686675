"""Atomic writes: a reader sees the old file (or folder) or the new one, never half of one."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: Path | str, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds.

    The file gets `mode` when given, else what the user's umask allows (as `open()` would give it).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, mode if mode is not None else 0o666 & ~_umask())  # mkstemp made it 0600
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(target: Path | str, text: str, mode: int | None = None) -> Path:
    """Write `text` to `target` atomically (optionally with file mode `mode`)."""
    with atomic_path(target, mode) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


@contextlib.contextmanager
def atomic_folder(target: Path | str, replace: bool = False) -> Iterator[Path]:
    """Yield a new temporary folder beside `target`; rename it to `target` when the block succeeds.

    `replace=False`: `target` must not exist (or be an empty folder) when the block ends.
    `replace=True`: an existing `target` is swapped out and removed. On any error the temporary
    folder goes and `target` is as it was. The folder gets the user's umask (mkdtemp makes it 0700).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    old: Path | None = None
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        if target.exists() or target.is_symlink():
            if replace:
                old = target.with_name(f".{target.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                target.rename(old)
            elif target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
                target.rmdir()
        try:
            os.rename(tmp, target)
        except OSError:
            if old is not None:  # put the previous folder back
                old.rename(target)
                old = None
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def kept_secret(path: Path | str) -> str:
    """The secret kept in `path`; generated (and written with mode 0600, atomically) when there is none yet."""
    import secrets

    path = Path(path)
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    secret = secrets.token_urlsafe(24)
    atomic_write_text(path, secret, mode=0o600)  # no newline: Jupyter reads its token file as it is
    return secret

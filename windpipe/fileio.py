"""Atomic writes: a reader sees the old file (or folder) or the new one, never half of one; and the free
space of the disk a path is on (`low_space`)."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from windpipe.errors import WindpipeError, first_line
from windpipe.identity import pid_alive


@dataclass
class Staged:
    """A temporary file beside `target`; `publish()` renames it onto `target` (atomically)."""

    tmp: Path
    target: Path
    published: bool = False

    def publish(self) -> Path:
        try:
            os.replace(self.tmp, self.target)
        except OSError as exc:
            raise write_error(self.target, exc) from None
        self.published = True
        return self.target


@contextlib.contextmanager
def staged_path(target: Path | str, mode: int | None = None) -> Iterator[Staged]:
    """A temporary file beside `target` that the caller publishes when it decides (atomic_path: at the end).

    The file gets `mode` when given, else what the user's umask allows (as `open()` would give it). Its
    name carries this process's pid (`.<name>.<pid>.<random>.tmp`): temporary files that killed processes
    left in the folder are removed by the next stage there. If the block ends before publish(), the
    temporary file goes. A target that is a folder, or a folder that is read-only or full, is a
    WindpipeError naming the path.
    """
    target = Path(target)
    if target.is_dir():
        raise WindpipeError(f"{target} is a folder, not a file.", "pass a file path (e.g. <folder>/<name>)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphans(target.parent)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise write_error(target, exc) from None
    staged = Staged(Path(tmp_name), target)
    try:
        os.chmod(staged.tmp, mode if mode is not None else 0o666 & ~_umask())  # mkstemp made it 0600
        yield staged
    except OSError as exc:  # writing the temporary file failed (a full disk, a size limit)
        raise write_error(target, exc) from None
    finally:
        if not staged.published:
            staged.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(target: Path | str, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds.

    The file gets `mode` when given, else what the user's umask allows (as `open()` would give it).
    """
    with staged_path(target, mode) as staged:
        yield staged.tmp
        staged.publish()


def write_error(target: Path, exc: OSError) -> WindpipeError:
    """A failed write of `target` as a message: the path, the reason, what to do."""
    reason = exc.strerror or first_line(exc)
    if exc.errno == errno.ENOSPC or "No space left" in str(exc):
        fix = f"free space on the disk holding {target.parent}, or write somewhere else"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = f"make {target.parent} writable, or write somewhere else"
    else:
        fix = f"check {target.parent} (space, permissions), or write somewhere else"
    return WindpipeError(f"Cannot write {target} ({reason}); nothing was written there.", fix)


_STAGED = re.compile(r"^\..+\.(\d+)\.[a-z0-9_]{8}\.tmp$")  # .<name>.<pid>.<mkstemp's 8 characters>.tmp


def _remove_orphans(folder: Path) -> None:
    """Temporary files staged in `folder` by processes that have ended (killed before they could tidy up)."""
    for tmp in folder.glob(".*.tmp"):
        match = _STAGED.match(tmp.name)
        if match and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
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


def mount_point(path: Path | str) -> Path:
    """The mount point of the filesystem `path` (or its nearest existing parent) is on."""
    here = Path(path).resolve()
    while not here.exists():
        here = here.parent
    while not os.path.ismount(here):
        here = here.parent
    return here


def low_space(path: Path | str, need_mb: float, what: str) -> WindpipeError | None:
    """A WindpipeError naming the disk when the filesystem `path` is on has less than `need_mb` MB free
    (None when it has enough, or cannot be asked). `what` names the folder in the message ("the state folder")."""
    try:
        mount = mount_point(path)
        free = shutil.disk_usage(mount).free / 1e6
    except OSError:
        return None
    if free >= need_mb:
        return None
    return WindpipeError(f"The disk of {what} {path} (the filesystem mounted at {mount}{_device(mount)}) has "
                         f"{free:.0f} MB free; windpipe wants at least {need_mb:g} MB there.",
                         "free space on that disk, or point WINDPIPE_HOME at a disk with room "
                         "(WINDPIPE_MIN_FREE_MB sets the limit)")


def _device(mount: Path) -> str:
    """", device /dev/..." for a mount point in /proc/mounts ("" elsewhere)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 1 and parts[1] == str(mount):
                return f", device {parts[0]}"
    return ""

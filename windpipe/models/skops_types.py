"""skops without its import-time walk: the lists of types skops trusts by default, cached per environment.

`import skops.io` builds those lists in `skops.io._trusted_types`: it imports every scikit-learn module
(`sklearn.utils.all_estimators`) and looks up each scipy and numpy ufunc in every loaded module. That is 0.5-0.7 s
of each process that saves or loads a model with skops (a training step, predict, serving), more than the
step's own fit on a small file. The lists depend only on the installed scikit-learn, scipy, numpy and skops, so
`import_skops()` computes them once per set of versions, keeps them beside the installed packages
(`sys.prefix`: no easier to alter than skops itself, and never widened by a user's cache folder), and later
imports give skops that module from the file. Anything unexpected (no file, a file of another shape, a folder
that is not writable, a skops whose module names other lists) takes skops's own import.

tests/test_startup.py checks that the cached lists equal a fresh import's in this environment.
"""

from __future__ import annotations

import hashlib
import json
import sys
import types
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from windpipe.errors import WindpipeError
from windpipe.fileio import atomic_write_text

MODULE = "skops.io._trusted_types"
_VERSIONED = ("skops", "scikit-learn", "scipy", "numpy")
_FORMAT = 1  # bump when what is cached changes


def cache_file() -> Path:
    """The cache for this environment's versions (one file per combination: an upgrade starts a new one)."""
    try:
        versions = [f"{name}=={version(name)}" for name in _VERSIONED]
    except PackageNotFoundError:
        versions = []
    key = hashlib.sha256(json.dumps([_FORMAT, sys.version, *versions]).encode()).hexdigest()[:16]
    return Path(sys.prefix) / "var" / "windpipe" / f"skops-trusted-types-{key}.json"


def import_skops() -> None:
    """Import skops.io, from the cached type lists when this environment has them; otherwise import it as
    skops does and cache its lists for the next process."""
    if "skops.io" in sys.modules:
        return
    path = cache_file()
    lists = _read(path)
    if lists is not None:
        module = types.ModuleType(MODULE, "skops's default trusted types, from windpipe's cache of them")
        module.__dict__.update(lists)
        sys.modules[MODULE] = module
        try:
            import skops.io
        except ImportError:  # a skops that wants a name the cache lacks: its own import, after a clean slate
            for name in [n for n in sys.modules if n == "skops" or n.startswith("skops.")]:
                del sys.modules[name]
        else:
            skops.io._trusted_types = module
            return
    import skops.io._trusted_types as trusted

    _write(path, trusted_lists(trusted))


def trusted_lists(module: types.ModuleType) -> dict[str, list[str]]:
    """The module's public lists of type names (what the rest of skops imports from it)."""
    return {name: list(value) for name, value in vars(module).items() if name.isupper() and _names(value)}


def _names(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _read(path: Path) -> dict[str, list[str]] | None:
    try:
        lists = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return lists if isinstance(lists, dict) and lists and all(map(_names, lists.values())) else None


def _write(path: Path, lists: dict[str, list[str]]) -> None:
    """Atomically (a process killed while writing leaves no half file), and silently where it cannot."""
    try:
        atomic_write_text(path, json.dumps(lists), mode=0o600)
    except WindpipeError:
        pass  # a read-only installation: each process imports skops as skops does

"""When a step is reused: the cache key of a run, and the lookup of a finished run that has it.

A step is reused when a FINISHED run in the experiment carries the cache key made from: the
step's project and entry point, its parameters, its code version (git commit + hash of the
library and the step folder, so uncommitted edits count), the cache keys of the steps it read
from (the entity URIs wired from them, which hold their run ids, are left out), and the content
hash of any external input (the same folder can hold new raw files). The key thus names the work,
not the runs that did it: rerunning the same work (`--force`) gives every step the key it had,
and the promotion uses that to know a model it already registered (windpipe.models.registry).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from windpipe import names
from windpipe.errors import WindpipeError


def content_hash(path: Path | str) -> str:
    """Content hash of a file, or of the CSV/parquet files of a folder (raw files change under one path); of an S3
    object, its name and ETag (the store's checksum of its bytes: no download)."""
    if str(path).startswith("s3://"):
        return _object_hash(str(path))
    path = Path(path)
    files = (sorted(p for p in path.iterdir() if p.suffix in (".csv", ".parquet")) if path.is_dir()
             else [path] if path.is_file() else [])
    if not files:
        raise WindpipeError(f"No data files in {path}.",
                            f"generate raw files with `windpipe data synth --out {path}` (or download the OPSD files)")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _object_hash(uri: str) -> str:
    from windpipe.settings import get_settings
    from windpipe.stack import objects

    entry = objects.head(uri, get_settings())
    if entry is None:
        raise WindpipeError(f"There is no object {uri}.", "check the URI (s3://<bucket>/<key>)")
    return hashlib.sha256(f"{entry.name}\0{entry.etag}".encode()).hexdigest()[:16]


def cache_key(project: str, entry_point: str, params: dict[str, str], code: str, upstream: dict[str, str],
              extra: dict[str, str]) -> str:
    """The hash that decides whether a finished run of a step can be reused."""
    material = {"project": project, "entry_point": entry_point, "params": params, "code_version": code,
                "upstream": upstream, "extra": extra}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def find_cached(client: Any, experiment_id: str, key: str) -> Any:
    """The newest FINISHED run with this cache key, or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{names.CACHE_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None

"""Files by URI: a local path, or an object `s3://<bucket>/<key>` in the team stack's S3 store.

The few calls the inbox (windpipe.pipeline.inbox) and `windpipe predict` need, the same for both. S3 is
reached with the artifacts' endpoint and keys (WINDPIPE_S3_ENDPOINT_URL, WINDPIPE_S3_ACCESS_KEY_ID, ...,
or the keys the team stack generated in the state folder). A store that does not answer is a
WindpipeError naming it; a missing object is FileNotFoundError (None from `head`).

No call here relies on a conditional request: `rclone serve s3` (1.75) ignores If-None-Match and
If-Match on PUT, x-amz-copy-source-if-match on COPY and If-Match on DELETE, and applies the request as if
unconditional. So an S3 copy or delete is no claim; the inbox keeps its claims in a database.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from windpipe.errors import WindpipeError

if TYPE_CHECKING:
    from windpipe.settings import Settings

SCHEME = "s3://"


def is_s3(uri: str | Path) -> bool:
    return str(uri).startswith(SCHEME)


def split(uri: str) -> tuple[str, str]:
    """(bucket, key) of an s3:// URI; UsageError-like WindpipeError when it names no bucket."""
    bucket, _, key = uri[len(SCHEME):].partition("/")
    if not bucket:
        raise WindpipeError(f"{uri!r} names no bucket.", "write s3://<bucket>/<key>, e.g. s3://mlflow/inbox/")
    return bucket, key


def join(base: str, *parts: str) -> str:
    """`base` and `parts`, for either kind of URI (an S3 prefix ends in '/')."""
    if is_s3(base):
        return "/".join([base.rstrip("/"), *parts])
    return str(Path(base, *parts))


def name_of(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1] if is_s3(uri) else Path(uri).name


def absolute(uri: str) -> str:
    """What a record keeps: the URI as given, a local path resolved."""
    return uri if is_s3(uri) else str(Path(uri).resolve())


@dataclass(frozen=True)
class Entry:
    """One object: its name below the listed prefix, size, ETag (an S3 object's content checksum) and when it was
    last written (seconds since the epoch)."""

    name: str
    size: int
    etag: str
    modified: float = 0.0


_clients: dict[tuple[str, str, str], Any] = {}


def _client(settings: Settings) -> Any:
    """One S3 client per store and key (making one costs tens of milliseconds; they are thread-safe)."""
    from windpipe.stack import s3

    key = (settings.s3_endpoint, settings.team.s3_region, "\0".join(s3.keys(settings)))
    if key not in _clients:
        _clients[key] = s3.client(settings)
    return _clients[key]


@contextlib.contextmanager
def s3_errors(settings: Settings, doing: str) -> Iterator[None]:
    """Translate botocore's errors: a missing object to FileNotFoundError, the rest to a WindpipeError naming the
    store and what was being done."""
    from botocore.exceptions import BotoCoreError, ClientError

    where = f"The S3 store at {settings.s3_endpoint}"
    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("NoSuchKey", "404", "NotFound"):
            raise FileNotFoundError(doing) from None
        if code == "NoSuchBucket":
            raise WindpipeError(f"{where} has no bucket for {doing}.",
                                "create it, or name a bucket that exists") from None
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            raise WindpipeError(f"{where} refused the keys ({code}) while {doing}.",
                                "set WINDPIPE_S3_ACCESS_KEY_ID and WINDPIPE_S3_SECRET_ACCESS_KEY to keys it accepts"
                                ) from None
        raise WindpipeError(f"{where} answered {code or exc} while {doing}.", "see `windpipe status`") from None
    except (BotoCoreError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise WindpipeError(f"{where} does not answer ({exc.__class__.__name__}) while {doing}; nothing was "
                            "changed by this step.",
                            "run `windpipe up` (or check WINDPIPE_S3_ENDPOINT_URL), then run it again") from None


def listing(prefix: str, settings: Settings, deep: bool = False) -> list[Entry]:
    """The objects directly below an S3 prefix (`deep`: in its sub-prefixes too, names with their '/'), by name."""
    bucket, key = split(prefix)
    key = key.rstrip("/") + "/" if key else ""
    out = []
    with s3_errors(settings, f"listing {prefix}"):
        pages = _client(settings).get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=key, **({} if deep else {"Delimiter": "/"}))
        for page in pages:
            for obj in page.get("Contents", []):
                name = obj["Key"][len(key):]
                if name:
                    modified = obj.get("LastModified")
                    out.append(Entry(name, int(obj.get("Size", 0)), str(obj.get("ETag", "")).strip('"'),
                                     modified.timestamp() if modified is not None else 0.0))
    return sorted(out, key=lambda e: e.name)


def head(uri: str, settings: Settings) -> Entry | None:
    """The object's size and ETag (a local file: its size, no ETag), or None when there is none."""
    if not is_s3(uri):
        path = Path(uri)
        return Entry(path.name, path.stat().st_size, "") if path.is_file() else None
    bucket, key = split(uri)
    try:
        with s3_errors(settings, f"reading {uri}"):
            meta = _client(settings).head_object(Bucket=bucket, Key=key)
    except FileNotFoundError:
        return None
    return Entry(name_of(uri), int(meta.get("ContentLength", 0)), str(meta.get("ETag", "")).strip('"'))


def exists(uri: str, settings: Settings) -> bool:
    return Path(uri).exists() if not is_s3(uri) else head(uri, settings) is not None


def fetch(uri: str, dest: Path, settings: Settings) -> Path:
    """Copy the object to the local file `dest`; FileNotFoundError when there is none."""
    if not is_s3(uri):
        shutil.copyfile(uri, dest)
        return dest
    bucket, key = split(uri)
    with s3_errors(settings, f"reading {uri}"):
        _client(settings).download_file(bucket, key, str(dest))
    return dest


@contextlib.contextmanager
def local_copy(uri: str, settings: Settings) -> Iterator[Path | None]:
    """A local file with the object's bytes while the block runs (the path itself for a local file; a downloaded
    copy of an S3 object); None when there is none."""
    if not is_s3(uri):
        yield Path(uri) if uri else None
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="windpipe-object-") as tmp:
        try:
            path: Path | None = fetch(uri, Path(tmp) / (name_of(uri) or "object"), settings)
        except FileNotFoundError:
            path = None
        yield path


def publish(src: Path, uri: str, settings: Settings) -> None:
    """Upload the local file `src` as `uri` (an S3 PUT replaces an object whole: readers never see half)."""
    bucket, key = split(uri)
    with s3_errors(settings, f"writing {uri}"):
        _client(settings).upload_file(str(src), bucket, key)


def put_text(uri: str, text: str, settings: Settings) -> None:
    bucket, key = split(uri)
    with s3_errors(settings, f"writing {uri}"):
        _client(settings).put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"),
                                     ContentType="text/plain; charset=utf-8")


def copy(src: str, dst: str, settings: Settings) -> str:
    """Copy one S3 object to another key (inside the store); return the copy's ETag."""
    (bucket, key), (to_bucket, to_key) = split(src), split(dst)
    with s3_errors(settings, f"copying {src} to {dst}"):
        out = _client(settings).copy_object(Bucket=to_bucket, Key=to_key, CopySource={"Bucket": bucket, "Key": key})
    return str(out.get("CopyObjectResult", {}).get("ETag", "")).strip('"')


def delete(uri: str, settings: Settings) -> None:
    """Remove the object (no error when there is none: S3's delete is idempotent)."""
    bucket, key = split(uri)
    with s3_errors(settings, f"removing {uri}"):
        _client(settings).delete_object(Bucket=bucket, Key=key)


def sha256(uri: str, settings: Settings) -> str:
    """The sha256 of the bytes (hex): the content's identity. FileNotFoundError when there is none."""
    digest = hashlib.sha256()
    if not is_s3(uri):
        with open(uri, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()
    bucket, key = split(uri)
    with s3_errors(settings, f"reading {uri}"):
        body = _client(settings).get_object(Bucket=bucket, Key=key)["Body"]
        for chunk in body.iter_chunks(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()

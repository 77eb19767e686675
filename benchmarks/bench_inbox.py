"""The prediction inbox as a queue: what claiming and settling cost per file, against listing alone.

`python benchmarks/bench_inbox.py [files] [repeat]` (default 50 files, 5 rounds): small parquet files (48 rows)
in a folder inbox (claims in SQLite marts) and in an S3 prefix of a team stack started for the run (rclone S3,
claims in its PostgreSQL). Each round, alternately: the listing alone (what the inbox task did before claims:
a folder listing, an S3 listing) and the whole protocol (the inbox task's claim of every file: take it (a
rename, an S3 copy), sha256, the claim's row, the original dropped; then close's settle of every file: the
outcome's row, the move to done/). Prints the medians and the cost per file. The predict step's own run (an
`mlflow run`, seconds) is what a file costs besides.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from common import REPO, table

sys.path.insert(0, str(REPO))


def batch(i: int) -> bytes:
    import pandas as pd

    cols = ["windspeed", "temperature", "rad_horizontal", "rad_diffuse"]
    return pd.DataFrame({c: [float(i + k) for k in range(48)] for c in cols}).to_parquet(index=False)


def rounds(put: Callable[[str, bytes], None], uri_of: Callable[[int], str], inbox_of: Callable[[int], object],
           files: int, repeat: int) -> dict[str, list[float]]:
    """`repeat` rounds over fresh inboxes: listing alone, then claim + settle (files written before each, untimed)."""
    times: dict[str, list[float]] = {"list": [], "claim": [], "settle": []}
    for r in range(repeat):
        box = inbox_of(r)
        for i in range(files):
            put(uri_of(r) + f"f{i:03d}.parquet", batch(r * files + i))
        start = time.perf_counter()
        listed = box.new()
        times["list"].append(time.perf_counter() - start)
        assert len(listed) == files
        start = time.perf_counter()
        claimed = box.claim(f"run{r}")
        times["claim"].append(time.perf_counter() - start)
        start = time.perf_counter()
        for uri in claimed:
            box.settle(uri, f"run{r}", None)
        times["settle"].append(time.perf_counter() - start)
        assert len(claimed) == files and box.new() == []
    return times


def rows(where: str, times: dict[str, list[float]], files: int) -> list[list[object]]:
    listing = statistics.median(times["list"])
    out = []
    for what in ("list", "claim", "settle"):
        med = statistics.median(times[what])
        out.append([where, what if what != "list" else "list only (the inbox task before claims)", med,
                    f"{1000 * med / files:.2f}", f"{med / listing:.1f}x" if what != "list" else "1x"])
    return out


def main(files: int = 50, repeat: int = 5) -> None:
    from tests.conftest import settings_from, team_env
    from windpipe.pipeline.inbox import Inbox
    from windpipe.settings import Settings
    from windpipe.stack import objects, s3, services

    result = []
    with tempfile.TemporaryDirectory(prefix="windpipe-bench-inbox-") as tmp:
        local = Settings(home=Path(tmp) / "home")

        def put_file(uri: str, data: bytes) -> None:
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            Path(uri).write_bytes(data)

        times = rounds(put_file, lambda r: f"{tmp}/inbox{r}/", lambda r: Inbox(f"{tmp}/inbox{r}", local),
                       files, repeat)
        result += rows("folder, claims in SQLite", times, files)

    home = Path(tempfile.mkdtemp(prefix="windpipe-bench-inbox-team-"))  # under /tmp: PostgreSQL's user passes
    settings = settings_from({**team_env(home), "WINDPIPE_AUTH": "none"})
    try:
        services.up(settings, say=lambda _m: None)
        client = s3.client(settings)
        prefix = f"s3://{settings.team.s3_bucket}/bench-{uuid.uuid4().hex[:8]}-"

        def put_object(uri: str, data: bytes) -> None:
            bucket, key = objects.split(uri)
            client.put_object(Bucket=bucket, Key=key, Body=data)

        times = rounds(put_object, lambda r: f"{prefix}{r}/", lambda r: Inbox(f"{prefix}{r}/", settings),
                       files, repeat)
        result += rows("S3 (rclone), claims in PostgreSQL", times, files)
    finally:
        services.down(settings, say=lambda _m: None)
        shutil.rmtree(home, ignore_errors=True)
    print(f"{files} files of 48 rows, median of {repeat} rounds\n")
    print(table(["inbox", "step", "seconds", "ms per file", "vs list only"], result))


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))

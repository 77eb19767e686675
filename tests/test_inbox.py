"""The prediction inbox as a queue with claims (windpipe.pipeline.inbox): a folder on this machine, an S3 prefix
on the team stack.

Fast tests drive the queue directly (claims in a SQLite marts database, no servers); the defects a hostile
test found in the folder inbox are each shown through the commands the Airflow tasks run
(`windpipe pipeline open | inbox | step | close`) against a real platform; the S3 inbox runs against the
team stack's rclone S3 and PostgreSQL, with the store stopped while it is listed and while a file is moved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from windpipe.errors import WindpipeError
from windpipe.pipeline.inbox import Inbox, output_name
from windpipe.settings import Settings

from .conftest import REPO

FEATURES = ["windspeed", "temperature", "rad_horizontal", "rad_diffuse"]


def frame(rows: int, value: float = 1.0) -> pd.DataFrame:
    return pd.DataFrame({c: [value + i for i in range(rows)] for c in FEATURES})


def tree(root: Path) -> list[str]:
    """Every file below `root`, relative, sorted (names that are not UTF-8 escaped)."""
    return sorted(os.fsencode(p.relative_to(root)).decode("utf-8", "backslashreplace")
                  for p in root.rglob("*") if not p.is_dir())


@pytest.fixture
def box(tmp_path) -> tuple[Inbox, Path]:
    """A folder inbox whose claims live in a SQLite marts database of its own."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    return Inbox(str(folder), Settings(home=tmp_path / "home")), folder


# ---------------------------------------------------------------------------------------------- fast


def test_a_claimed_file_is_scored_from_its_claim_and_settled_beside_its_reason(box):
    inbox, folder = box
    frame(3).to_parquet(folder / "a.parquet")
    frame(3, 5.0).to_parquet(folder / "b.parquet")
    frame(1).to_parquet(folder / ".partial.parquet")  # still being written
    (folder / "notes.txt").write_text("not a batch")
    files = inbox.claim("run1")
    assert [Path(f).relative_to(folder).as_posix() for f in files] == ["claimed/run1/a.parquet",
                                                                       "claimed/run1/b.parquet"]
    assert inbox.new() == [] and inbox.claim("run2") == []  # claimed: no other run gets them
    claim = inbox.claim_of(files[0])
    assert claim.name == "a.parquet" and len(claim.sha256) == 64
    assert inbox.output_uri(claim.name, claim.sha256, "predictions") == str(
        folder / "done" / output_name("a.parquet", claim.sha256, "predictions"))
    assert inbox.settle(files[0], "run1", None) == str(folder / "done" / "a.parquet")
    failed = inbox.settle(files[1], "run1", "predict failed: lacks column windspeed")
    assert failed == str(folder / "failed" / "b.parquet")
    assert (folder / "failed" / "b.parquet.reason.txt").read_text() == "predict failed: lacks column windspeed\n"
    assert inbox.settle(files[1], "run1", "again") == str(folder / "failed" / "b.parquet")  # a retried close
    assert tree(folder) == [".partial.parquet", "done/a.parquet", "failed/b.parquet", "failed/b.parquet.reason.txt",
                            "notes.txt"]


def test_a_file_replaced_while_it_is_scored_is_settled_as_claimed_and_the_new_one_waits(box):
    """The hostile test: a 500-row file renamed over a 300-row one being scored went to done/ unscored."""
    inbox, folder = box
    frame(300).to_parquet(folder / "x.parquet")
    (claimed,) = inbox.claim("run1")
    frame(500).to_parquet(folder / ".x.tmp")
    os.replace(folder / ".x.tmp", folder / "x.parquet")  # the writer's rename, while x is scored
    inbox.settle(claimed, "run1", None)
    assert len(pd.read_parquet(folder / "done" / "x.parquet")) == 300
    assert [n.name for n in inbox.new()] == ["x.parquet"] and len(pd.read_parquet(folder / "x.parquet")) == 500
    (again,) = inbox.claim("run2")  # the new content, for the next run: scored under its own name
    inbox.settle(again, "run2", None)
    done = sorted(p.name for p in (folder / "done").iterdir())
    assert len(done) == 2 and "x.parquet" in done, done  # the second under a name with its content hash
    assert sorted(len(pd.read_parquet(folder / "done" / n)) for n in done) == [300, 500]


def test_each_name_works_or_fails_alone_links_and_names_that_are_not_utf8_are_refused(box, tmp_path):
    inbox, folder = box
    outside = tmp_path / "secret.parquet"
    frame(2).to_parquet(outside)
    os.symlink(outside, folder / "link.parquet")
    bad = folder / os.fsdecode(b"caf\xe9.parquet")  # latin-1, not UTF-8
    frame(2, 3.0).to_parquet(tmp_path / "cafe.parquet")
    os.rename(tmp_path / "cafe.parquet", bad)
    frame(2, 7.0).to_parquet(folder / "x{{7*7}}.parquet")
    said: list[str] = []
    files = inbox.claim("run1", said.append)
    assert [Path(f).name for f in files] == ["x{{7*7}}.parquet"]
    json.dumps(files, ensure_ascii=False).encode("utf-8")  # what the task hands on as XCom (stored as UTF-8)
    assert outside.exists() and (folder / "failed" / "link.parquet").is_symlink()
    assert "symbolic link" in (folder / "failed" / "link.parquet.reason.txt").read_text()
    assert (folder / "failed" / bad.name).exists()
    assert "not UTF-8" in (folder / "failed" / (bad.name + ".reason.txt")).read_text()
    assert inbox.new() == []
    assert any("caf\\xe9.parquet: refused" in line for line in said), said


def test_the_content_is_the_identity_the_same_bytes_under_another_name_are_not_scored_again(box):
    inbox, folder = box
    frame(4).to_parquet(folder / "a.parquet")
    (claimed,) = inbox.claim("run1")
    (folder / "copy.parquet").write_bytes(Path(claimed).read_bytes())
    assert inbox.claim("run2") == []  # being scored by run1: the copy waits in the inbox
    assert [n.name for n in inbox.new()] == ["copy.parquet"]
    inbox.settle(claimed, "run1", None)
    assert inbox.claim("run3") == []  # scored before: filed beside it, not scored
    note = (folder / "done" / "copy.parquet.note.txt").read_text()
    assert "not scored again" in note and "a.parquet" in note
    # bytes that failed before fail again, without scoring
    frame(4, 9.0).to_parquet(folder / "bad.parquet")
    (claimed,) = inbox.claim("run4")
    inbox.settle(claimed, "run4", "predict failed: lacks column windspeed")
    (folder / "bad-again.parquet").write_bytes((folder / "failed" / "bad.parquet").read_bytes())
    assert inbox.claim("run5") == []
    assert "lacks column windspeed" in (folder / "failed" / "bad-again.parquet.reason.txt").read_text()


def test_released_and_stale_claims_are_taken_over_and_a_killed_claimers_files_come_back(box, tmp_path):
    inbox, folder = box
    for name in ("a.parquet", "b.parquet"):
        frame(2, float(ord(name[0]))).to_parquet(folder / name)
    first = inbox.claim("run1")
    inbox.release("run1", keep=first[:1])  # the run ended having scored a only
    assert inbox.claim("run2") == first[1:]  # released: taken at once
    assert not inbox.settle(first[1], "run1", None)  # no longer run1's
    lease = Inbox(str(folder), Settings(home=tmp_path / "home", inbox_lease=0.5))
    import time

    time.sleep(1)
    assert sorted(lease.claim("run3")) == first  # run1 and run2 died holding them: the lease is over
    # a file taken by a task killed before it recorded its claim goes back into the inbox after the lease
    orphan = folder / "claimed" / "run9" / "c.parquet"
    orphan.parent.mkdir(parents=True)
    frame(2, 99.0).to_parquet(orphan)
    time.sleep(1)
    assert [Path(f).name for f in lease.claim("run4")][-1] == "c.parquet"
    assert not orphan.exists()


def test_two_claimers_at_once_take_each_file_once(box, tmp_path):
    """Two processes (two DAG runs) claim the same inbox at the same moment: each file is claimed once."""
    inbox, folder = box
    for i in range(40):
        frame(2, float(i)).to_parquet(folder / f"f{i:02d}.parquet")
    code = ("import json, sys\nfrom pathlib import Path\nfrom windpipe.settings import Settings\n"
            "from windpipe.pipeline.inbox import Inbox\n"
            f"box = Inbox({str(folder)!r}, Settings(home=Path({str(tmp_path / 'home')!r})))\n"
            "print(json.dumps(box.claim(sys.argv[1])))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, f"run{i}"], stdout=subprocess.PIPE, text=True, cwd=REPO)
             for i in (1, 2)]
    got = [json.loads(p.communicate(timeout=120)[0].splitlines()[-1]) for p in procs]
    names = sorted(Path(f).name for files in got for f in files)
    assert names == [f"f{i:02d}.parquet" for i in range(40)]  # all claimed, none twice


def test_a_claimed_file_that_disappears_fails_alone_with_its_reason(box):
    inbox, folder = box
    frame(2).to_parquet(folder / "gone.parquet")
    frame(2, 5.0).to_parquet(folder / "kept.parquet")
    gone, kept = inbox.claim("run1")
    os.unlink(gone)
    failed = inbox.settle(gone, "run1", "predict failed: the inbox file is gone")
    assert failed == str(folder / "failed" / "gone.parquet")
    assert "is gone" in (folder / "failed" / "gone.parquet.reason.txt").read_text()
    assert inbox.settle(kept, "run1", None) == str(folder / "done" / "kept.parquet")


def test_an_inbox_uri_names_a_bucket():
    with pytest.raises(WindpipeError, match="names no bucket"):
        Inbox("s3:///inbox/", Settings())


# ---------------------------------------------------------------------------------------------- through the tasks


def task(p, kind: str, data: dict, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """`windpipe pipeline KIND ... --stdin` as the prediction DAG's task runs it: the values as JSON on stdin."""
    proc = subprocess.run([sys.executable, "-m", "windpipe", "pipeline", kind, *args, "--pipeline", "prediction",
                           "--stdin"], input=json.dumps(data), env=p.env, capture_output=True, text=True, timeout=600,
                          cwd=REPO)
    assert (proc.returncode == 0) is ok and "Traceback" not in proc.stderr, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def dag_run(p, conf: dict, dag_run: str, between=None) -> tuple[list[str], subprocess.CompletedProcess]:
    """One prediction DAG run through its tasks' commands: open, inbox, predict per claimed file, close.
    `between(files)` acts after the inbox task (a file vanishes); returns the claimed files and close's result."""
    run = task(p, "open", {"conf": conf, "dag_run": dag_run}).stdout.splitlines()[-1]
    files = json.loads(task(p, "inbox", {"conf": conf, "pipeline_run": run}).stdout.splitlines()[-1])
    if between is not None:
        between(files)
    for i, file in enumerate(files):
        gone = not Path(file).exists()
        task(p, "step", {"conf": conf, "pipeline_run": run, "upstream": {}, "file": file, "index": i}, "predict",
             ok=not gone)
    close = subprocess.run([sys.executable, "-m", "windpipe", "pipeline", "close", "--pipeline", "prediction",
                            "--stdin"], input=json.dumps({"conf": conf, "pipeline_run": run, "files": files}),
                           env=p.env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert "Traceback" not in close.stderr, close.stderr
    return files, close


@pytest.fixture
def own_model(use_platform, tmp_path, monkeypatch, request):
    """The shared platform, with an experiment and registered model of this test's own (its production model)."""
    from tests.conftest import Platform
    from tests.models import log_registered_model

    name = request.node.name.removeprefix("test_")[:30]
    own = {"WINDPIPE_EXPERIMENT": name, "WINDPIPE_MODEL_NAME": f"wind_solar_{name}"}
    for key, value in own.items():
        monkeypatch.setenv(key, value)
    settings = use_platform.settings.model_copy(update={"experiment": name, "model_name": own["WINDPIPE_MODEL_NAME"]})
    p = Platform(settings, {**use_platform.env, **own})
    log_registered_model(p, tmp_dir=tmp_path)
    return p


@pytest.mark.slow
def test_the_hostile_tests_inbox_through_the_dags_task_commands(own_model, tmp_path):
    """The folder inbox's defects, through the commands the prediction DAG's tasks run: a file replaced while it is
    scored is settled as scored (the new one waits for the next run), a name that is not UTF-8 and a link each fail
    alone, the same bytes under another name are not scored again, a name with {{ }} is scored as named, and a
    claimed file that disappears fails with its reason while the others go on."""
    from tests.models import tiny_processed
    from windpipe.marts import queries, tables
    from windpipe.names import FEATURES as COLUMNS
    from windpipe.names import TIMESTAMP

    p = own_model
    box = tmp_path / "inbox"
    box.mkdir()
    data = tiny_processed(800)[[TIMESTAMP, *COLUMNS]]
    templated = "x{{7*7}}.parquet"
    data.head(300).to_parquet(box / templated, index=False)
    (box / "y-copy.parquet").write_bytes((box / templated).read_bytes())  # the same bytes, another name
    data.tail(24).to_parquet(box / "vanish.parquet", index=False)
    data.iloc[300:310].to_parquet(tmp_path / "outside.parquet", index=False)
    os.symlink(tmp_path / "outside.parquet", box / "link.parquet")
    data.head(5).to_parquet(tmp_path / "latin.parquet", index=False)
    os.rename(tmp_path / "latin.parquet", box / os.fsdecode(b"caf\xe9.parquet"))
    conf = {"inbox": str(box)}

    def meanwhile(files: list[str]) -> None:
        os.unlink(next(f for f in files if f.endswith("vanish.parquet")))  # gone after it was claimed
        data.head(500).to_parquet(tmp_path / "new.parquet", index=False)  # the writer renames a new version in
        os.replace(tmp_path / "new.parquet", box / templated)

    files, close = dag_run(p, conf, "hostile/1", meanwhile)
    assert sorted(Path(f).name for f in files) == ["vanish.parquet", templated]
    assert close.returncode == 1 and "vanish.parquet: predict failed" in close.stderr, close.stdout + close.stderr
    assert len(pd.read_parquet(box / "done" / templated)) == 300  # what was scored, not the file renamed over it
    assert "is gone" in (box / "failed" / "vanish.parquet.reason.txt").read_text()
    assert "symbolic link" in (box / "failed" / "link.parquet.reason.txt").read_text()
    assert "not UTF-8" in (box / "failed" / os.fsdecode(b"caf\xe9.parquet.reason.txt")).read_text()
    assert sorted(n.name for n in Inbox(str(box)).new()) == [templated, "y-copy.parquet"]  # for the next run

    files, close = dag_run(p, conf, "hostile/2")  # the new version is scored; the copy is not scored again
    assert [Path(f).name for f in files] == [templated] and close.returncode == 0, close.stdout + close.stderr
    assert "not scored again" in (box / "done" / "y-copy.parquet.note.txt").read_text()

    engine = tables.get_engine(p.settings.effective_marts_url)
    mine = queries.latest_batches(engine, limit=1000).query("model_name == @p.settings.model_name")
    assert sorted(mine.row_count) == [300, 500], mine  # one batch per content, each scored once
    predictions = sorted((box / "done").glob("x{{7*7}}.*.predictions.parquet"))
    assert sorted(len(pd.read_parquet(f)) for f in predictions) == [300, 500]  # named as written, by content
    assert Inbox(str(box)).new() == [] and not any((box / "claimed").rglob("*.parquet"))


# ---------------------------------------------------------------------------------------------- an S3 prefix


@pytest.fixture
def s3_box(team_platform, monkeypatch):
    """An inbox prefix of its own in the team stack's bucket; this process is a client of the team platform."""
    import uuid

    from tests.conftest import point_at

    p = point_at(team_platform, monkeypatch)
    return p, f"s3://{p.settings.team.s3_bucket}/inbox-{uuid.uuid4().hex[:8]}/"


def put(p, uri: str, df: pd.DataFrame | bytes) -> None:
    from windpipe.stack import objects, s3

    bucket, key = objects.split(uri)
    body = df if isinstance(df, bytes) else df.to_parquet(index=False)
    s3.client(p.settings).put_object(Bucket=bucket, Key=key, Body=body)


def keys(p, prefix: str) -> list[str]:
    """Every object below the prefix, relative to it (the store's own listing)."""
    from windpipe.stack import objects

    return [e.name for e in objects.listing(prefix, p.settings, deep=True)]


@pytest.mark.slow
def test_the_s3_inbox_claims_each_object_once_and_survives_the_store_going_away(s3_box, tmp_path):
    """The S3 inbox (rclone serve s3 honours no conditional request, so the claims live in PostgreSQL): two
    claimers at once take each object once; an object replaced while it is scored is settled as scored and the new
    one waits; the store stopped while the inbox is listed, and while a file is moved, is a clear message, and
    after `windpipe up` the next run moves it, nothing scored twice or lost."""
    from windpipe.stack import objects, s3, services
    from windpipe.stack.procs import stop_pid

    p, prefix = s3_box
    for i in range(12):
        put(p, prefix + f"f{i:02d}.parquet", frame(2, float(i)))
    code = ("import json, sys\nfrom windpipe.pipeline.inbox import Inbox\n"
            "print(json.dumps(Inbox(sys.argv[1]).claim(sys.argv[2])))\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, prefix, f"run{i}"], stdout=subprocess.PIPE, text=True,
                              env=p.env, cwd=REPO) for i in (1, 2)]
    got = [json.loads(proc.communicate(timeout=300)[0].splitlines()[-1]) for proc in procs]
    names = sorted(objects.name_of(f) for files in got for f in files)
    assert names == [f"f{i:02d}.parquet" for i in range(12)], got  # every object once
    assert [k for k in keys(p, prefix) if not k.startswith("claimed/")] == []  # (and out of the inbox)
    box = Inbox(prefix)
    for holder, files in zip(("run1", "run2"), got, strict=True):
        for f in files:
            box.settle(f, holder, None)
    assert sorted(keys(p, prefix)) == [f"done/f{i:02d}.parquet" for i in range(12)]
    # `windpipe predict` takes s3:// URIs too: a missing input is a clear error, and nothing is written
    proc = subprocess.run([sys.executable, "-m", "windpipe", "predict", "--input", prefix + "missing.parquet",
                           "--output", prefix + "out.parquet"], env=p.env, capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert f"Input {prefix}missing.parquet does not exist" in proc.stderr and "out.parquet" not in keys(p, prefix)

    # replaced while it is scored: the claimed bytes are settled; the new object waits for the next run
    put(p, prefix + "x.parquet", frame(300))
    (claimed,) = box.claim("run3")
    put(p, prefix + "x.parquet", frame(500))
    box.settle(claimed, "run3", None)
    with objects.local_copy(prefix + "done/x.parquet", p.settings) as done:
        assert len(pd.read_parquet(done)) == 300
    assert [n.name for n in box.new()] == ["x.parquet"]

    # the store goes away while the inbox is listed: a clear message, exit 1, nothing claimed
    conf = json.dumps({"conf": {"inbox": prefix}, "pipeline_run": "a" * 32})
    try:
        stop_pid(s3.running_pid(p.settings))
        proc = subprocess.run([sys.executable, "-m", "windpipe", "pipeline", "inbox", "--stdin"], input=conf,
                              env=p.env, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
        assert f"The S3 store at {p.settings.s3_endpoint} does not answer" in proc.stderr, proc.stderr
        assert "run `windpipe up`" in proc.stderr
    finally:
        services.up(p.settings, say=lambda _m: None)
    (claimed,) = box.claim("run4")  # after `windpipe up`: the new x, once

    # ... and while the scored file is moved: its outcome is recorded, the next run moves it (and scores nothing)
    try:
        stop_pid(s3.running_pid(p.settings))
        with pytest.raises(WindpipeError, match="does not answer"):
            box.settle(claimed, "run4", None)
    finally:
        services.up(p.settings, say=lambda _m: None)
    assert box.claim_of(claimed).state == "done" and box.claim("run5") == []
    left = keys(p, prefix)
    assert len([k for k in left if k.startswith("done/x.")]) == 2 and not [k for k in left if "done/" not in k], left

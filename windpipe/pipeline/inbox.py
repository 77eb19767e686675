"""The prediction pipeline's inbox: a queue of new feature files in a folder or an S3 prefix, each scored once.

    <inbox>/<name>.parquet                      new files (write elsewhere, then rename or upload into the inbox)
    <inbox>/claimed/<pipeline run>/<name>       claimed by one DAG run and scored from here; nobody else touches it
    <inbox>/done/<name>                         scored; its predictions beside it, named by its content:
    <inbox>/done/<stem>.<sha256[:8]>.predictions.parquet
    <inbox>/done/<name>.note.txt                not scored: the same bytes were scored before (any name)
    <inbox>/failed/<name>, <name>.reason.txt    refused, with the reason beside it

The claim protocol (docs/orchestration.md has it for users):
1. The `inbox` task of a DAG run (`windpipe pipeline inbox`) takes each new object out of the inbox before
   reading it: a folder's file is renamed into claimed/<run>/ (a rename is atomic: of two runs, one gets
   it); an S3 object is copied there (S3 has no rename, and neither a copy nor a delete is a claim).
2. It hashes the bytes it holds and claims their content in the data marts' database
   (windpipe.marts.claims: one row per inbox and sha256, whose insert one run wins). The content is the
   identity: the same bytes under another name, or again later, are not scored again (done/ with a note
   naming the first, or failed/ when the first failed). Bytes another run is scoring now are put back.
3. Only then is an S3 object removed from the inbox, and only while its ETag is still that of the copy (a
   file replaced meanwhile stays for the next run; S3 offers no conditional delete, so a replacement in
   the instant between that check and the delete is lost: write new files under new names).
4. The steps score the claimed object: a file replaced in the inbox meanwhile is another, later file.
5. `close` records each claim's outcome first, then moves its object to done/ or failed/; claims the run
   holds but did not score are released.
6. Every `inbox` task first finishes what earlier runs left: it files settled claims whose objects did not
   move (the store was down), takes over released claims and claims held longer than WINDPIPE_INBOX_LEASE
   (their DAG run died), and puts back objects a killed task took without claiming them.

Names are handled one by one: a link, or a name that is not UTF-8, goes to failed/ with its reason and
the others go on.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from windpipe.errors import WindpipeError
from windpipe.fileio import atomic_write_text
from windpipe.marts import claims
from windpipe.marts.claims import CLAIMED, DONE, RELEASED, Claim
from windpipe.settings import Settings, get_settings
from windpipe.stack import objects

if TYPE_CHECKING:
    from sqlalchemy import Engine

CLAIMED_DIR, FAILED = "claimed", "failed"
REASON_SUFFIX = ".reason.txt"
NOTE_SUFFIX = ".note.txt"
SUFFIX = ".parquet"
Say = Callable[[str], None]


def shown(name: str) -> str:
    """A file name as a message can show it (bytes that are not UTF-8 escaped as \\xNN)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def wanted(name: str) -> bool:
    """A new file the inbox scores: `*.parquet`, not hidden (a `.name` is still being written)."""
    return name.endswith(SUFFIX) and not name.startswith(".") and "/" not in name


def _stem(name: str) -> str:
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name


def output_name(name: str, sha256: str, entity: str) -> str:
    """`<stem>.<sha256[:8]>.<entity>.parquet`: what the prediction steps write for a file, named by its content."""
    return f"{_stem(name)}.{sha256[:8]}.{entity}.parquet"


@dataclass(frozen=True)
class New:
    """An object waiting in the inbox, and why it is refused (None: it can be scored)."""

    name: str
    refused: str | None = None


class Inbox:
    """The inbox at `uri`: a folder, or an S3 prefix `s3://<bucket>/<prefix>/` (the S3 settings' store)."""

    def __init__(self, uri: str | Path, settings: Settings | None = None) -> None:
        self.settings = settings or get_settings()
        text = str(uri)
        self.s3 = objects.is_s3(text)
        if self.s3:
            objects.split(text)
            self.uri = text.rstrip("/") + "/"
        else:
            self.uri = str(Path(text))
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from windpipe.marts.tables import get_engine

            self._engine = get_engine(settings=self.settings)
        return self._engine

    def at(self, *parts: str) -> str:
        return objects.join(self.uri, *parts)

    def output_uri(self, name: str, sha256: str, entity: str) -> str:
        """Where the prediction steps write `entity` for the file `name` with that content."""
        return self.at(DONE, output_name(name, sha256, entity))

    # ------------------------------------------------------------------------------------------ what waits

    def new(self) -> list[New]:
        """The objects waiting in the inbox itself (not in its sub-folders), by name."""
        if self.s3:
            return [New(e.name) for e in objects.listing(self.uri, self.settings) if wanted(e.name)]
        root = Path(self.uri)
        if self.settings.worker:
            _reachable(root, self.settings.worker)
        if not root.is_dir():
            return []
        found = []
        with os.scandir(root) as entries:
            for entry in entries:
                if not wanted(entry.name):
                    continue
                try:
                    entry.name.encode("utf-8")
                except UnicodeEncodeError:
                    found.append(New(entry.name, f"its name is not UTF-8 ({shown(entry.name)!r}), so no task can be "
                                                 "given it; rename it (UTF-8) to have it scored"))
                    continue
                if entry.is_symlink():
                    found.append(New(entry.name, _link_refusal(entry.path)))
                elif entry.is_file(follow_symlinks=False):
                    found.append(New(entry.name))
        return sorted(found, key=lambda n: n.name)

    def has_work(self) -> bool:
        """Anything for a DAG run to do: new objects, or claims an earlier run left."""
        return bool(self.new()) or bool(claims.unfinished(self.engine, self.uri))

    def claim_of(self, uri: str) -> Claim | None:
        return claims.by_uri(self.engine, self.uri, uri)

    # ------------------------------------------------------------------------------------------ claiming

    def claim(self, holder: str, say: Say = lambda _m: None) -> list[str]:
        """Finish what earlier runs left, then claim every new object for `holder` (a pipeline run id); return the
        URIs of the claimed objects the run scores, in order (its own earlier claims first)."""
        files = self._recover(holder, say)
        for item in self.new():
            if item.refused is not None:
                self._refuse(item, say)
                continue
            uri = self._claim_one(item.name, holder, say, avoid=set(files))
            if uri is not None:
                files.append(uri)
        return files

    def _claim_one(self, name: str, holder: str, say: Say, avoid: set[str]) -> str | None:
        taken = self._take(name, holder, avoid)
        if taken is None:
            say(f"{shown(name)}: gone before it could be claimed (another run took it, or it was removed)")
            return None
        uri, etag = taken
        if not self.s3 and (Path(uri).is_symlink() or not Path(uri).is_file()):  # swapped for a link meanwhile
            self._refuse(New(name, _link_refusal(uri)), say, uri)
            return None
        try:
            sha = objects.sha256(uri, self.settings)
            won, existing = claims.insert(self.engine, Claim(self.uri, sha, name, uri, holder, claims.now()))
        except (WindpipeError, OSError):
            self._put_back(uri, name, "")  # the object stays in the inbox for the next run
            raise
        if won:
            if self.s3:
                self._drop_original(name, etag, say)
            say(f"{name}: claimed (sha256 {sha[:16]}) -> {uri}")
            return uri
        if existing.state == CLAIMED:
            self._put_back(uri, name, sha)
            say(f"{name}: the same content ({existing.name}) is being scored by pipeline run {existing.holder or '-'}: "
                "left in the inbox")
            return None
        self._duplicate(name, uri, etag, existing, say)
        return None

    def _take(self, name: str, holder: str, avoid: set[str]) -> tuple[str, str] | None:
        """Move the object out of the inbox into claimed/<holder>/ (S3: copy it there); (uri, etag), or None when
        it is gone. A place in `avoid` (this run's earlier claims: a retried task) is not taken twice, nor a
        folder's file a killed task left (an S3 copy left so is garbage: its original is still in the inbox)."""
        dst = self.at(CLAIMED_DIR, holder, name)
        if dst in avoid or not self.s3 and os.path.lexists(dst):
            dst = self.at(CLAIMED_DIR, holder, uuid.uuid4().hex[:8], name)
        if self.s3:
            try:
                return dst, objects.copy(self.at(name), dst, self.settings)
            except FileNotFoundError:
                return None
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(self.at(name), dst)
        except FileNotFoundError:
            return None
        return dst, ""

    def _put_back(self, uri: str, name: str, sha: str) -> None:
        """Return a taken object to the inbox: a folder's file under its name (another name when a new file took
        it meanwhile); an S3 copy is dropped (its original never left)."""
        if self.s3:
            objects.delete(uri, self.settings)
            return
        back = Path(self.at(name))
        try:
            os.link(uri, back)
        except FileExistsError:
            back = back.with_name(f"{_stem(name)}.{(sha or uuid.uuid4().hex)[:8]}{SUFFIX}")
            os.link(uri, back)
        os.unlink(uri)
        _tidy(Path(uri).parent, Path(self.at(CLAIMED_DIR)))

    def _drop_original(self, name: str, etag: str, say: Say) -> None:
        """(S3) Remove the claimed object from the inbox unless it was replaced since it was copied."""
        now = objects.head(self.at(name), self.settings)
        if now is not None and now.etag == etag:
            objects.delete(self.at(name), self.settings)
        elif now is not None:
            say(f"{name}: replaced while it was being claimed; the new one stays for the next run")

    def _duplicate(self, name: str, uri: str, etag: str, first: Claim, say: Say) -> None:
        """Bytes scored (or refused) before: filed beside the others without scoring them again."""
        when = f"{first.settled_at:%Y-%m-%d %H:%M} UTC" if first.settled_at else "before"
        what = f"the same content (sha256 {first.sha256[:16]}) as {first.name}, settled {when} by pipeline run " \
               f"{first.holder or '-'}"
        if first.state == DONE:
            target = self._move(uri, DONE, name, first.sha256,
                                note=f"not scored again: {what}; its predictions are the ones of {first.name}")
        else:
            target = self._move(uri, FAILED, name, first.sha256, reason=f"{what}, which failed: {first.reason}")
        if self.s3:
            self._drop_original(name, etag, say)
        say(f"{name}: not scored again, {what} -> {target}")

    def _refuse(self, item: New, say: Say, uri: str | None = None) -> None:
        """A name the inbox cannot score (a link, a name that is not UTF-8): to failed/ with the reason."""
        target = self._move(uri or self.at(item.name), FAILED, item.name, None, reason=item.refused or "refused")
        say(f"{shown(item.name)}: refused ({item.refused}) -> {shown(target)}")

    # ------------------------------------------------------------------------------------------ what runs left

    def _recover(self, holder: str, say: Say) -> list[str]:
        files: list[str] = []
        lease = self.settings.inbox_lease
        pending = claims.unfinished(self.engine, self.uri)
        for c in pending:
            if c.state != CLAIMED:
                self._file(c, say)
            elif c.holder == holder:
                files.append(c.uri)
            elif c.holder == RELEASED or (claims.now() - c.claimed_at).total_seconds() > lease:
                if claims.take_over(self.engine, c, holder):
                    why = "released by" if c.holder == RELEASED else f"held past the lease ({lease:g} s) by"
                    say(f"{c.name}: taken over ({why} pipeline run {c.holder or 'its last run'})")
                    files.append(c.uri)
        self._orphans({c.uri for c in pending}, lease, say)
        return files

    def _orphans(self, known: set[str], lease: float, say: Say) -> None:
        """Objects in claimed/ without a claim, older than the lease: taken by a task killed before it claimed
        them. A folder's file goes back into the inbox; an S3 copy is dropped (the original stayed there)."""
        if self.s3:
            found = [(self.at(CLAIMED_DIR, e.name), e.modified)
                     for e in objects.listing(self.at(CLAIMED_DIR), self.settings, deep=True)]
        else:
            root = Path(self.at(CLAIMED_DIR))
            found = [(str(f), f.lstat().st_ctime) for f in root.rglob("*") if not f.is_dir()] if root.is_dir() else []
        for uri, modified in found:
            if uri in known or time.time() - modified <= lease or claims.by_uri(self.engine, self.uri, uri):
                continue
            name = objects.name_of(uri)
            self._put_back(uri, name, "")
            say(f"{shown(name)}: taken by a task that ended before claiming it: "
                + ("dropped the copy (the original is in the inbox)" if self.s3 else "back in the inbox"))

    # ------------------------------------------------------------------------------------------ settling

    def settle(self, uri: str, holder: str, reason: str | None, say: Say = lambda _m: None) -> str | None:
        """Record how scoring the claimed object at `uri` ended (reason None: done), then move it to done/ or to
        failed/ with the reason beside it; return where it went. None when `holder` no longer holds it (another
        run took it over and settles it)."""
        c = claims.by_uri(self.engine, self.uri, uri)
        if c is None:
            say(f"{uri}: no claim of this inbox is there: left alone")
            return None
        if c.state == CLAIMED:
            if not claims.settle(self.engine, c, holder, reason):
                now = claims.get(self.engine, c.inbox, c.sha256)
                say(f"{c.name}: pipeline run {now.holder if now else '?'} holds it now and settles it")
                return None
            c = claims.get(self.engine, c.inbox, c.sha256) or c
        elif c.holder != holder:
            return None
        return c.filed_as or self._file(c, say)

    def release(self, holder: str, keep: list[str], say: Say = lambda _m: None) -> None:
        """Let go of what `holder` claimed but did not score (not in `keep`): the next run takes it at once."""
        for c in claims.release(self.engine, self.uri, holder, keep):
            say(f"{c.name}: released, not scored by this run")

    def _file(self, c: Claim, say: Say) -> str:
        """Move a settled claim's object to done/ or failed/ (the reason beside it) and record where it went."""
        if c.state == DONE:
            target = self._move(c.uri, DONE, c.name, c.sha256)
        else:
            target = self._move(c.uri, FAILED, c.name, c.sha256, reason=c.reason or "failed")
        claims.filed(self.engine, c, target)
        say(f"{c.name}: {c.state} -> {target}")
        return target

    def _move(self, uri: str, folder: str, name: str, sha: str | None, reason: str | None = None,
              note: str | None = None) -> str:
        """Move the object at `uri` to `<folder>/<name>` (`<stem>.<sha[:8]>.parquet` when another content holds
        that name), writing the reason (failed/) or note beside it first. An object that is gone already (moved by
        an earlier try, or removed) leaves the reason alone."""
        target = self.at(folder, name)
        if sha is not None and objects.exists(target, self.settings) and \
                objects.sha256(target, self.settings) != sha:
            target = self.at(folder, f"{_stem(name)}.{sha[:8]}{SUFFIX}")
        beside = (target + REASON_SUFFIX, reason) if reason is not None else (target + NOTE_SUFFIX, note)
        if beside[1] is not None:
            text = beside[1].rstrip() + "\n"
            if self.s3:
                objects.put_text(beside[0], text, self.settings)
            else:
                atomic_write_text(beside[0], text)
        if self.s3:
            try:
                objects.copy(uri, target, self.settings)
            except FileNotFoundError:
                return target
            objects.delete(uri, self.settings)
            return target
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(uri, target)
        except FileNotFoundError:
            return target
        _tidy(Path(uri).parent, Path(self.at(CLAIMED_DIR)))
        return target


def _reachable(root: Path, worker: str) -> None:
    """On a remote Airflow worker a folder inbox it cannot list is a folder of another machine or user (its own
    state folder's inbox is not where anyone drops files): WindpipeError, not an inbox that looks empty."""
    try:
        ok = root.is_dir() and os.access(root, os.R_OK | os.W_OK | os.X_OK)
    except OSError:  # a parent folder this user may not pass
        ok = False
    if not ok:
        import getpass

        raise WindpipeError(
            f"The prediction inbox {root} is not a folder the Airflow worker {worker} (user {getpass.getuser()}) can "
            "read: with remote workers, an inbox on one machine's disk is out of the other machines' reach.",
            "give the DAG run an inbox every worker reads: an S3 prefix (`inbox` in its conf or WINDPIPE_INBOX, "
            "s3://<bucket>/inbox/, with the S3 settings on the workers), or a shared volume mounted at the same path")


def _link_refusal(path: str) -> str:
    try:
        to = shown(os.readlink(path))
    except OSError:
        to = "?"
    return (f"a symbolic link (to {to}): the inbox scores the files in it, never what a link points at; "
            "copy the file into the inbox instead")


def _tidy(folder: Path, root: Path) -> None:
    """Remove the empty folders from `folder` up to (not including) `root`."""
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent

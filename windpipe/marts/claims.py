"""The prediction inbox's claims, kept in the data marts' database: one row per content of an inbox.

The row's primary key (inbox, sha256 of the bytes) makes the claim: of two DAG runs that insert it at
the same moment, one wins. The marts' database is where every machine that scores already writes (the
team stack's PostgreSQL; SQLite on one machine), and both take one writer per row. Every later change
is one statement that names the state it expects (compare and set): a run settles only a claim it still
holds, and takes over a stale one only from the holder it saw. The protocol around it (where the bytes
go, what counts as stale) is windpipe.pipeline.inbox's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import and_, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from windpipe.errors import WindpipeError, first_line
from windpipe.marts.tables import display_url, inbox_claims

if TYPE_CHECKING:
    from sqlalchemy import Engine

CLAIMED, DONE, FAILED = "claimed", "done", "failed"
RELEASED = ""  # the holder of a claim its run let go of: the next run takes it at once


@dataclass(frozen=True)
class Claim:
    """One content of an inbox: who scores it (or did), where its bytes are, how it ended."""

    inbox: str
    sha256: str
    name: str
    uri: str
    holder: str
    claimed_at: datetime
    state: str = CLAIMED
    reason: str | None = None
    settled_at: datetime | None = None
    filed_as: str | None = None


def now() -> datetime:
    """UTC, naive (as the marts keep times)."""
    return datetime.now(UTC).replace(tzinfo=None)


@contextlib.contextmanager
def _errors(engine: Engine) -> Iterator[None]:
    try:
        yield
    except IntegrityError:
        raise
    except SQLAlchemyError as exc:
        raise WindpipeError(f"The data marts database ({display_url(engine.url)}), which keeps the inbox's claims, "
                            f"failed ({first_line(getattr(exc, 'orig', None) or exc, 200)}); nothing was claimed or "
                            "settled by this step.",
                            "check that it runs (`windpipe status`; `windpipe up`), then run it again") from None


def _key(inbox: str, sha256: str) -> object:
    return and_(inbox_claims.c.inbox == inbox, inbox_claims.c.sha256 == sha256)


def _rows(engine: Engine, where: object) -> list[Claim]:
    with _errors(engine), engine.connect() as conn:
        return [Claim(**row._mapping) for row in conn.execute(select(inbox_claims).where(where))]


def get(engine: Engine, inbox: str, sha256: str) -> Claim | None:
    found = _rows(engine, _key(inbox, sha256))
    return found[0] if found else None


def by_uri(engine: Engine, inbox: str, uri: str) -> Claim | None:
    """The claim whose bytes are at `uri` (each claimed object has a place of its own)."""
    found = _rows(engine, and_(inbox_claims.c.inbox == inbox, inbox_claims.c.uri == uri))
    return found[0] if found else None


def unfinished(engine: Engine, inbox: str) -> list[Claim]:
    """Claims still being scored, and settled ones whose object has not reached done/ or failed/ yet."""
    return _rows(engine, and_(inbox_claims.c.inbox == inbox,
                              (inbox_claims.c.state == CLAIMED) | inbox_claims.c.filed_as.is_(None)))


def insert(engine: Engine, claim: Claim) -> tuple[bool, Claim]:
    """Claim this content: (True, the claim), or (False, the claim someone made of the same content before)."""
    try:
        with _errors(engine), engine.begin() as conn:
            conn.execute(inbox_claims.insert().values(
                inbox=claim.inbox, sha256=claim.sha256, name=claim.name, uri=claim.uri, holder=claim.holder,
                claimed_at=claim.claimed_at, state=CLAIMED))
        return True, claim
    except IntegrityError:
        existing = get(engine, claim.inbox, claim.sha256)
        if existing is None:  # (rows are never removed)
            raise
        return False, existing


def _update(engine: Engine, where: object, **values: object) -> int:
    with _errors(engine), engine.begin() as conn:
        return conn.execute(inbox_claims.update().where(where).values(**values)).rowcount


def take_over(engine: Engine, claim: Claim, holder: str) -> bool:
    """Hold `claim` instead of the holder it had when read; False when it changed since (someone else won)."""
    return _update(engine, and_(_key(claim.inbox, claim.sha256), inbox_claims.c.holder == claim.holder,
                                inbox_claims.c.state == CLAIMED), holder=holder, claimed_at=now()) == 1


def settle(engine: Engine, claim: Claim, holder: str, reason: str | None) -> bool:
    """Record how scoring ended (reason None: done, else failed); False unless `holder` still held it."""
    return _update(engine, and_(_key(claim.inbox, claim.sha256), inbox_claims.c.holder == holder,
                                inbox_claims.c.state == CLAIMED),
                   state=DONE if reason is None else FAILED, reason=reason, settled_at=now()) == 1


def filed(engine: Engine, claim: Claim, where: str) -> None:
    """The settled claim's object is in done/ or failed/ now (at `where`)."""
    _update(engine, _key(claim.inbox, claim.sha256), filed_as=where)


def release(engine: Engine, inbox: str, holder: str, keep: Iterable[str]) -> list[Claim]:
    """Let go of the claims `holder` still holds, except those at the URIs in `keep` (a run that ends without
    having scored them: the next run takes them at once); return them."""
    keep = set(keep)
    held = [c for c in _rows(engine, and_(inbox_claims.c.inbox == inbox, inbox_claims.c.holder == holder,
                                          inbox_claims.c.state == CLAIMED)) if c.uri not in keep]
    return [c for c in held if take_over(engine, c, RELEASED)]

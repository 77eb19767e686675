"""The alias history: every move of `production` and `challenger` windpipe makes, kept in the tracking store.

MLflow keeps no alias history (its issue #2169), so each move is one run of the experiment
`names.ALIAS_HISTORY_EXPERIMENT`, tagged with the model, alias, from and to version, the action
(first, promote, force, rollback, outside), who (user and host), why (the gate's figures or the
command) and the pipeline run that made it. Being runs, the records live wherever the tracking
store lives (SQLite on the laptop, PostgreSQL on a team's server) and need no extra service.

A move is written in three steps, all under the registry lock: the record is opened (RUNNING),
the alias is set, the record is closed FINISHED, or FAILED when setting the alias failed. A
process killed between the steps leaves a RUNNING record; it is settled from what followed it
(the next record's `from`, or the alias as it is now), so the history never shows a move that did
not happen and never misses one that did. A move made outside windpipe (the MLflow UI) shows as
an `outside` record: written durably when windpipe next moves that alias, shown as noticed when
only read.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from windpipe import names
from windpipe.models.loading import version_by_alias
from windpipe.settings import Settings, get_settings
from windpipe.tracking.client import client as tracking_client

ALIASES = (names.PRODUCTION, names.CHALLENGER)
OUTSIDE = "outside"
ROLLBACK = "rollback"
COLUMNS = ["at", "alias", "from_version", "to_version", "action", "user", "host", "reason", "pipeline_run",
           "recorded"]
_TAG_LIMIT = 4000  # MLflow's tag values are bounded (5000 on older stores)


@dataclass(frozen=True)
class Move:
    """One move of `alias` from `from_version` to `to_version` (None: the alias pointed nowhere)."""

    at: datetime | None
    alias: str
    from_version: int | None
    to_version: int | None
    action: str
    user: str = ""
    host: str = ""
    reason: str = ""
    pipeline_run: str = ""
    status: str = "FINISHED"  # of the record: FINISHED, FAILED, or RUNNING/KILLED while unsettled
    recorded: bool = True  # False: noticed on reading, not (yet) written


def _version(text: str | None) -> int | None:
    return int(text) if text not in (None, "") else None


# ------------------------------------------------------------------------------- pure logic


def settle(alias: str, moves: list[Move], current: int | None) -> list[Move]:
    """The moves of `alias` that happened, oldest first, with outside changes made visible.

    `moves` are the records oldest first; `current` is the version the alias points at now.
    A FAILED record is dropped; an unsettled one (its process was killed) happened exactly when
    the state after it (the next record's `from`, or `current` for the last) is its `to`. Where
    one move's `to` is not the next one's `from`, someone moved the alias outside windpipe.
    """
    happened: list[Move] = []
    for i, move in enumerate(moves):
        if move.status == "FAILED":
            continue
        if move.status != "FINISHED":
            later = next((m for m in moves[i + 1:] if m.status != "FAILED"), None)
            after = later.from_version if later is not None else current
            if after != move.to_version:
                continue
        happened.append(move)
    out: list[Move] = []
    state: int | None = None
    for move in happened:
        if move.from_version != state and move.action != OUTSIDE:
            out.append(Move(at=move.at, alias=move.alias, from_version=state, to_version=move.from_version,
                            action=OUTSIDE, reason="changed outside windpipe", recorded=False))
        out.append(move)
        state = move.to_version
    if current != state:
        out.append(Move(at=None, alias=alias, from_version=state, to_version=current, action=OUTSIDE,
                        reason="changed outside windpipe", recorded=False))
    return out


def rollback_source(moves: list[Move], current: int) -> Move | None:
    """The move a rollback undoes now: the newest move that no rollback has undone yet.

    The moves are an undo stack: each move pushes, each rollback pops the move it undid. Rolling
    back again therefore walks further back through what happened (v1 -> v3 -> v2, rollback: v3,
    again: v1), and two versions forced back and forth (A, B, A, B) roll back to A, B, A and then stop
    at the first move instead of swapping forever. A rollback that undid no recorded move (a store
    older than the history) counts as a move. None when the record does not say how `current`
    became production (the newest move to it, rollbacks skipped, when the stack ends elsewhere).
    """
    undo: list[Move] = []
    for move in moves:
        top = undo[-1] if undo else None
        if (move.action == ROLLBACK and top is not None and top.to_version == move.from_version
                and top.from_version == move.to_version):
            undo.pop()
        else:
            undo.append(move)
    if undo and undo[-1].to_version == current:
        return undo[-1]
    return next((m for m in reversed(moves) if m.to_version == current and m.action != ROLLBACK), None)


def frame(moves: list[Move]) -> pd.DataFrame:
    """The moves as a table (COLUMNS), oldest first; versions as nullable integers."""
    rows = [{k: v for k, v in asdict(m).items() if k in COLUMNS} for m in moves]
    df = pd.DataFrame(rows, columns=COLUMNS)
    df["at"] = pd.to_datetime(df["at"], utc=True)
    for col in ("from_version", "to_version"):
        df[col] = df[col].astype("Int64")
    return df


# ------------------------------------------------------------------------------- the store


def _experiment_id(client: Any, create: bool) -> str | None:
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(names.ALIAS_HISTORY_EXPERIMENT)
    if exp is not None:
        return exp.experiment_id
    if not create:
        return None
    try:
        return client.create_experiment(names.ALIAS_HISTORY_EXPERIMENT)
    except MlflowException:  # created by a concurrent writer in between
        return client.get_experiment_by_name(names.ALIAS_HISTORY_EXPERIMENT).experiment_id


def _from_run(run: Any) -> Move:
    tags = run.data.tags
    return Move(at=datetime.fromtimestamp(run.info.start_time / 1000, UTC), alias=tags.get(names.MOVE_ALIAS_TAG, ""),
                from_version=_version(tags.get(names.MOVE_FROM_TAG)), to_version=_version(tags.get(names.MOVE_TO_TAG)),
                action=tags.get(names.MOVE_ACTION_TAG, ""), user=tags.get(names.MOVE_USER_TAG, ""),
                host=tags.get(names.MOVE_HOST_TAG, ""), reason=tags.get(names.MOVE_REASON_TAG, ""),
                pipeline_run=tags.get(names.MOVE_PIPELINE_TAG, ""), status=run.info.status)


def records(client: Any, model: str, alias: str) -> list[tuple[str, Move]]:
    """(run id, move) of every record of `model@alias`, oldest first."""
    exp = _experiment_id(client, create=False)
    if exp is None:
        return []
    found, token = [], None
    query = f"tags.`{names.MOVE_MODEL_TAG}` = '{model}' and tags.`{names.MOVE_ALIAS_TAG}` = '{alias}'"
    while True:
        page = client.search_runs([exp], query, max_results=1000, order_by=["attributes.start_time ASC"],
                                  page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            break
    return [(run.info.run_id, _from_run(run)) for run in found]


def moves(settings: Settings | None = None, client: Any = None, aliases: tuple[str, ...] = ALIASES) -> list[Move]:
    """Every move of the model's aliases that happened, oldest first (read only)."""
    settings = settings or get_settings()
    client = client or tracking_client(settings)
    out: list[Move] = []
    for alias in aliases:
        current = version_by_alias(client, settings.model_name, alias)
        out += settle(alias, [m for _, m in records(client, settings.model_name, alias)],
                      int(current.version) if current is not None else None)
    return sorted(out, key=lambda m: (m.at is None, m.at or datetime.max.replace(tzinfo=UTC)))


def history(settings: Settings | None = None, client: Any = None) -> pd.DataFrame:
    """The alias history as a table (COLUMNS), oldest first."""
    return frame(moves(settings, client))


def _who() -> tuple[str, str]:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a uid without a passwd entry (containers)
        user = f"uid {os.getuid()}"
    return user, socket.gethostname()


def pipeline_run_id(client: Any) -> str:
    """The pipeline run this process works for: the active run's parent, else the active run."""
    import mlflow

    active = mlflow.active_run()
    if active is None:
        return ""
    try:
        tags = client.get_run(active.info.run_id).data.tags
    except Exception:
        return active.info.run_id
    return tags.get(names.MLFLOW_PARENT_RUN_TAG) or active.info.run_id


def _open(client: Any, exp: str, model: str, move: Move) -> str:
    tags = {names.MOVE_MODEL_TAG: model, names.MOVE_ALIAS_TAG: move.alias,
            names.MOVE_FROM_TAG: "" if move.from_version is None else str(move.from_version),
            names.MOVE_TO_TAG: "" if move.to_version is None else str(move.to_version),
            names.MOVE_ACTION_TAG: move.action, names.MOVE_USER_TAG: move.user, names.MOVE_HOST_TAG: move.host,
            names.MOVE_REASON_TAG: move.reason[:_TAG_LIMIT], names.MOVE_PIPELINE_TAG: move.pipeline_run}
    def v(version: int | None) -> str:
        return "-" if version is None else f"v{version}"

    name = f"{model}@{move.alias}: {v(move.from_version)} -> {v(move.to_version)}"
    return client.create_run(exp, tags=tags, run_name=name).info.run_id


def _settle_records(client: Any, exp: str, model: str, alias: str, current: int | None, user: str,
                    host: str, noticed_by: str) -> None:
    """Close the records a killed process left open and write down an outside change, durably."""
    found = records(client, model, alias)
    happened = settle(alias, [m for _, m in found], current)
    kept = {id(m) for m in happened}
    for run_id, move in found:
        if move.status not in ("FINISHED", "FAILED"):
            client.set_terminated(run_id, "FINISHED" if id(move) in kept else "FAILED")
    if happened and not happened[-1].recorded:
        outside = replace(happened[-1], user=user, host=host, reason=f"changed outside windpipe (noticed by "
                          f"{noticed_by})", at=None, recorded=True)
        client.set_terminated(_open(client, exp, model, outside), "FINISHED")


@contextlib.contextmanager
def recorded_move(client: Any, settings: Settings, alias: str, to_version: int, action: str, reason: str,
                  pipeline_run: str = "") -> Iterator[Move | None]:
    """Record the move of `model@alias` to `to_version` that the block makes (call under the registry lock).

    Yields the move (None when the alias already points there: nothing to record). The record
    is closed FINISHED when the block returns; when it raises, FINISHED or FAILED by where the
    alias points; left open when even that cannot be read (the next move or reader settles it).
    """
    model = settings.model_name
    current_mv = version_by_alias(client, model, alias)
    current = int(current_mv.version) if current_mv is not None else None
    if current == to_version:
        yield None
        return
    user, host = _who()
    exp = _experiment_id(client, create=True)
    _settle_records(client, exp, model, alias, current, user, host, noticed_by=action)
    move = Move(at=datetime.now(UTC), alias=alias, from_version=current, to_version=to_version, action=action,
                user=user, host=host, reason=reason, pipeline_run=pipeline_run, status="RUNNING")
    run_id = _open(client, exp, model, move)
    try:
        yield move
    except BaseException:
        # the block may have moved the alias before it was interrupted: the alias decides
        with contextlib.suppress(Exception):
            now = version_by_alias(client, model, alias)
            moved = now is not None and int(now.version) == to_version
            client.set_terminated(run_id, "FINISHED" if moved else "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")

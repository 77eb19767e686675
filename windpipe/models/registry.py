"""The model registry: aliases, the promotion lock, registering, rolling back, listing versions.

Aliases, not stages (stages are deprecated since MLflow 2.9). Every change of an alias goes
through `registry_lock` (a file lock in the state folder on one machine; on the team stack a
PostgreSQL advisory lock with a lease that every machine sees), so two promotions or rollbacks at
once leave one consistent state, and the alias history's moves chain. The promotion gate that decides whether
`production` moves lives in `windpipe.models.promotion`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from windpipe import names
from windpipe.errors import WindpipeError, first_line
from windpipe.models.history import ROLLBACK, moves, pipeline_run_id, recorded_move, rollback_source
from windpipe.models.loading import is_not_found, version_by_alias
from windpipe.settings import Settings, get_settings
from windpipe.tracking.client import client as tracking_client


@dataclass
class RollbackResult:
    """What `rollback()` did: production moved from `from_version` back to `version`."""

    version: int
    from_version: int
    instance_name: str


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def instance_name(version: Any) -> str:
    """`<name>_v<version>_<data date>`, e.g. wind_solar_v3_20161231 (the tag when set)."""
    tags = version.tags or {}
    return tags.get(names.INSTANCE_TAG) or names.instance_name_for(version.name, version.version,
                                                               tags.get(names.DATA_DATE_TAG))


def get_run(client: Any, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if is_not_found(exc) or "not found" in str(exc).lower():
            raise WindpipeError(f"There is no run {run_id!r} on this tracking server.",
                                "pass a run id from `windpipe compare`") from None
        raise


class _FileHeld:
    """The file lock (one machine): held until the block ends, so there is nothing to check."""

    def check(self) -> None:
        pass


@contextlib.contextmanager
def registry_lock(settings: Settings, timeout: float | None = None,
                  say: Callable[[str], None] = lambda _m: None) -> Iterator[Any]:
    """Exclusive lock around a registry change; yields a handle whose `check()` a change calls first.

    On the team stack (or with WINDPIPE_LOCK_URL) a PostgreSQL advisory lock every machine sees, per
    registered model, with a lease of WINDPIPE_REGISTRY_LEASE seconds (windpipe.stack.locks); it waits
    up to the lease and a minute. Else a file lock (fcntl.flock on settings.home/registry.lock) for the
    promotions of one machine, waiting up to 300 s.
    """
    url = settings.effective_lock_url
    if url is not None:
        from windpipe.stack.locks import advisory_lock

        lease = settings.team.registry_lease
        wait = timeout if timeout is not None else lease + 60
        with advisory_lock(url, f"registry:{settings.model_name}", lease, wait, say) as held:
            yield held
        return
    import fcntl

    timeout = 300.0 if timeout is None else timeout
    path = settings.paths.registry_lock_file
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(path, "a+") as fh:
        told = False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    say(f"waiting for the registry lock ({path}): another promotion holds it")
                    told = True
                if time.monotonic() > deadline:
                    raise WindpipeError(f"Another promotion has held {path} for over {timeout:.0f} s.",
                                        "wait for it to finish; if none runs, retry (the lock is freed "
                                        "when its process ends)") from None
                time.sleep(0.2)
        try:
            yield _FileHeld()
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def existing_version(client: Any, name: str, run: Any, production: int | None = None) -> Any:
    """A READY version that already holds this run's model, or None.

    Registered from this run (promote twice = one version), or else from a FINISHED run with the same
    cache key: the pipeline's key names the work (same step, code, params and inputs), so a rerun of it
    (`windpipe pipeline run --force`) makes the model a version already holds. Of those, `production`
    first, then the newest. A run without a key (a step run by hand) matches only its own versions.
    """
    from mlflow.exceptions import MlflowException

    model_uri = run.data.tags[names.MODEL_URI_TAG]
    model_id = model_uri.removeprefix("models:/").split("/")[0]
    try:
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run.info.run_id}'")
    except MlflowException:
        return None
    for v in sorted(found, key=lambda v: int(v.version)):
        if v.status == "READY" and (v.source == model_uri or getattr(v, "model_id", None) == model_id):
            return client.get_model_version(name, v.version)
    key = run.data.tags.get(names.CACHE_KEY_TAG)
    if not key:
        return None
    twins = client.search_runs([run.info.experiment_id], f"tags.`{names.CACHE_KEY_TAG}` = '{key}' and "
                               "attributes.status = 'FINISHED'", max_results=1000)
    ids = ", ".join(f"'{r.info.run_id}'" for r in twins if r.info.run_id != run.info.run_id)
    if not ids:
        return None
    held = [v for v in client.search_model_versions(f"name = '{name}' and run_id IN ({ids})") if v.status == "READY"]
    if not held:
        return None
    best = max(held, key=lambda v: (int(v.version) == production, int(v.version)))
    return client.get_model_version(name, best.version)


def set_tags(client: Any, mv: Any, tags: dict[str, str]) -> None:
    """Set the version tags whose value differs (one request each: skip the unchanged ones)."""
    for key, value in tags.items():
        if (mv.tags or {}).get(key) != value:
            client.set_model_version_tag(mv.name, str(mv.version), key, value)


def register(client: Any, name: str, run: Any, tags: dict[str, str]) -> Any:
    import mlflow

    try:
        mv = mlflow.register_model(run.data.tags[names.MODEL_URI_TAG], name, await_registration_for=120, tags=tags)
    except Exception as exc:  # MlflowException or HTTP errors
        raise WindpipeError(f"Registering {run.data.tags[names.MODEL_URI_TAG]} as {name} failed "
                            f"({first_line(exc)}).", "check `windpipe status` and retry") from None
    return client.get_model_version(name, mv.version)


def check_promotable(client: Any, name: str, version: str | int) -> Any:
    """The version, after checking it is READY and its run FINISHED (never alias a broken version)."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException as exc:
        if is_not_found(exc):
            raise WindpipeError(f"{name} version {version} does not exist.",
                                "pick one from `windpipe models`") from None
        raise
    if mv.status != "READY":
        raise WindpipeError(f"{name} version {version} is {mv.status}, not READY.",
                            "register the model again (`windpipe promote --run-id ...`)")
    run = get_run(client, mv.run_id) if mv.run_id else None
    if run is None or run.info.status != "FINISHED" or run.info.lifecycle_stage != "active":
        state = "missing" if run is None else f"{run.info.status.lower()}/{run.info.lifecycle_stage}"
        raise WindpipeError(f"The run behind {name} version {version} is {state}.",
                            "promote a version whose run finished")
    return mv


def rollback(settings: Settings | None = None, say: Callable[[str], None] = lambda _m: None) -> RollbackResult:
    """Point `production` back at the version it replaced (the `windpipe.previous_production` tag).

    Rolling back again walks further back. No production, or none before it: WindpipeError,
    nothing changed.
    """
    settings = settings or get_settings()
    name = settings.model_name
    client = tracking_client(settings)
    with registry_lock(settings, say=say) as lock:
        current = version_by_alias(client, name)
        if current is None:
            raise WindpipeError(f"{name} has no production version, so there is nothing to roll back.",
                                "promote a model first: `windpipe promote`")
        # the record says which move made `current` production; the version tag serves stores
        # written before the alias history existed
        source = rollback_source(moves(settings, client, aliases=(names.PRODUCTION,)), int(current.version))
        if source is not None:
            previous = "" if source.from_version is None else str(source.from_version)
        else:
            previous = (current.tags or {}).get(names.PREVIOUS_TAG, "")
        if not previous:
            raise WindpipeError(f"{name} v{current.version} is the first production version; there is no "
                                "previous one to roll back to.",
                                "promote another version instead: `windpipe promote --run-id <id> --force`")
        mv = check_promotable(client, name, previous)
        lock.check()
        client.set_model_version_tag(name, str(mv.version), names.REASON_TAG, f"rollback from v{current.version}")
        client.set_model_version_tag(name, str(mv.version), names.PROMOTED_AT_TAG, now_iso())
        client.set_model_version_tag(name, str(current.version), names.ROLLED_BACK_AT_TAG, now_iso())
        when = f" of {source.at:%Y-%m-%d %H:%M} UTC" if source is not None and source.at else ""
        with recorded_move(client, settings, names.PRODUCTION, int(mv.version), ROLLBACK,
                           f"windpipe rollback: undoes the move{when} v{previous} -> v{current.version}",
                           pipeline_run_id(client)):
            client.set_registered_model_alias(name, names.PRODUCTION, str(mv.version))
        mv = client.get_model_version(name, str(mv.version))
    return RollbackResult(version=int(mv.version), from_version=int(current.version), instance_name=instance_name(mv))


VERSION_COLUMNS = ["version", "instance_name", "aliases", "status", "run_id", "family", "data_date",
                   "holdout_rmse", "holdout_mae", "holdout_r2", "previous_production", "promoted_at", "gate",
                   "created"]


def list_versions(settings: Settings | None = None, client: Any = None, name: str | None = None) -> pd.DataFrame:
    """Every version of the registered model, newest first (empty frame when none)."""
    settings = settings or get_settings()
    client = client or tracking_client(settings)
    name = name or settings.model_name
    found, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{name}'", max_results=1000, page_token=token)
        found.extend(page)
        token = page.token
        if not token:
            break
    aliases: dict[str, list[str]] = {}
    if found:
        try:
            for alias, ver in (client.get_registered_model(name).aliases or {}).items():
                aliases.setdefault(str(ver), []).append(alias)
        except Exception:
            pass
    rows = []
    for v in found:
        tags = v.tags or {}

        def num(key: str, tags: dict = tags) -> float:
            try:
                return float(tags[key])
            except (KeyError, ValueError):
                return float("nan")

        rows.append({
            "version": int(v.version), "instance_name": instance_name(v),
            "aliases": ",".join(sorted(aliases.get(str(v.version), v.aliases or []))),
            "status": v.status, "run_id": v.run_id or "", "family": tags.get(names.FAMILY_TAG, ""),
            "data_date": tags.get(names.DATA_DATE_TAG, ""),
            **{names.HOLDOUT_PREFIX + m: num(names.HOLDOUT_PREFIX + m) for m in ("rmse", "mae", "r2")},
            "previous_production": tags.get(names.PREVIOUS_TAG, ""), "promoted_at": tags.get(names.PROMOTED_AT_TAG, ""),
            "gate": tags.get(names.GATE_TAG, ""),
            "created": pd.Timestamp(v.creation_timestamp, unit="ms", tz="UTC"),
        })
    return (pd.DataFrame(rows, columns=VERSION_COLUMNS).sort_values("version", ascending=False)
            .reset_index(drop=True))

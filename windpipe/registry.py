"""The model registry: promote a run through a quality gate, roll back, list versions.

`promote()` registers the best run (or the one given) as a new version of `settings.model_name`
with the alias `challenger`, scores challenger and current `production` on the SAME holdout
(the challenger run's processed entity, split with the run's own split params) and moves
`production` only when the challenger is better by the margin, when forced, or when there is
no production yet. Aliases, not stages (stages are deprecated since MLflow 2.9).

Reads:  runs of `settings.experiment` (tags windpipe.model_uri, windpipe.entity.processed,
        params split_seed, test_size, split_by), the processed entity they trained on.
Writes: registered model versions with tags (below) and the aliases `challenger`, `production`.

The gate (documented in docs/registry.md): the margin is RELATIVE. With production score P and
challenger score C on the same holdout, the improvement is (P - C) / |P| for lower-is-better
metrics (rmse, mae) and (C - P) / |P| for higher-is-better ones (r2). The challenger is promoted
when the improvement is > 0 and >= margin (margin 0.02 = "at least 2 % better").

Concurrency: the read-compare-move section runs under an exclusive file lock in
`settings.home` and re-reads `production` after taking it, so two promotions at once leave one
consistent winner (the lock serialises promotions started on this machine).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from windpipe.compare import ENTITY_TAG, FAMILY_TAG, MODEL_URI_TAG, compare_runs, higher_is_better
from windpipe.entities import FEATURES, PROCESSED, TARGETS
from windpipe.errors import WindpipeError
from windpipe.settings import Settings, get_settings

PRODUCTION = "production"
CHALLENGER = "challenger"
DATA_DATE_TAG = "windpipe.data_date"
INSTANCE_TAG = "windpipe.instance_name"
RUN_ID_TAG = "windpipe.run_id"
PREVIOUS_TAG = "windpipe.previous_production"
REASON_TAG = "windpipe.promotion_reason"
PROMOTED_AT_TAG = "windpipe.promoted_at"
GATE_TAG = "windpipe.gate"
FAMILY_VERSION_TAG = "windpipe.model_family"
HOLDOUT_PREFIX = "holdout_"
HOLDOUT_METRICS = ("rmse", "mae", "r2", *(f"{m}_{t}" for m in ("rmse", "mae", "r2") for t in TARGETS))
LOCK_FILE = "registry.lock"


@dataclass
class Holdout:
    """The rows both models are scored on, and where they came from."""

    df: pd.DataFrame
    entity_uri: str
    split_by: str
    split_seed: int
    test_size: float

    def describe(self) -> str:
        return (f"{len(self.df)} rows of {self.entity_uri} ({self.split_by} split, test_size {self.test_size:g}"
                + (f", seed {self.split_seed}" if self.split_by == "random" else "") + ")")


@dataclass
class PromotionResult:
    """What `promote()` did. `version` is the challenger's version; `previous` the production before."""

    promoted: bool
    version: int
    previous: int | None
    reason: str
    metric: str
    run_id: str
    instance_name: str
    challenger_metrics: dict[str, float] = field(default_factory=dict)
    production_metrics: dict[str, float] | None = None
    production: int | None = None  # production version after the call
    holdout: str = ""


@dataclass
class RollbackResult:
    """What `rollback()` did: production moved from `from_version` back to `version`."""

    version: int
    from_version: int
    instance_name: str


# ------------------------------------------------------------------------------------ small helpers


def _client(settings: Settings):  # noqa: ANN202 - an MlflowClient
    from mlflow import MlflowClient

    from windpipe.tracking import connect

    connect(settings, experiment=False)
    return MlflowClient()


def is_not_found(exc: Exception) -> bool:
    """True for the MLflow errors that mean "no such model, version or alias"."""
    return getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND")


def production_version(client: Any, name: str, alias: str = PRODUCTION) -> Any:  # noqa: ANN401
    """The ModelVersion `name@alias` points at, or None (no such model or alias)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if is_not_found(exc):
            return None
        raise


def instance_name(version: Any) -> str:  # noqa: ANN401 - a ModelVersion
    """`<name>_v<version>_<data date>`, e.g. wind_solar_v3_20161231 (the tag when set)."""
    tags = version.tags or {}
    if tags.get(INSTANCE_TAG):
        return tags[INSTANCE_TAG]
    return f"{version.name}_v{version.version}_{tags.get(DATA_DATE_TAG) or 'nodate'}"


def _get_run(client: Any, run_id: str) -> Any:  # noqa: ANN401
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as exc:
        if is_not_found(exc) or "not found" in str(exc).lower():
            raise WindpipeError(f"There is no run {run_id!r} on this tracking server.",
                                "pass a run id from `windpipe compare`") from None
        raise


@contextlib.contextmanager
def registry_lock(settings: Settings, timeout: float = 300.0) -> Iterator[None]:
    """Exclusive lock (fcntl.flock on settings.home/registry.lock) around a registry change."""
    import fcntl

    path = Path(settings.home) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(path, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise WindpipeError(f"Another promotion has held {path} for over {timeout:.0f} s.",
                                        "wait for it to finish; if none runs, retry (the lock is freed "
                                        "when its process ends)") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# ------------------------------------------------------------------------------ holdout & scoring


def holdout_split(df: pd.DataFrame, test_size: float = 0.2, split_seed: int = 42,
                  split_by: str = "random") -> pd.DataFrame:
    """The holdout rows exactly as the training steps cut them (windpipe.training.split)."""
    from windpipe.training.split import split

    return split(df, test_size=test_size, seed=split_seed, split_by=split_by)[1]


def load_holdout(run: Any, dst: Path | None = None) -> Holdout:  # noqa: ANN401 - an mlflow Run
    """The challenger run's processed entity, split with the run's split params."""
    import tempfile

    from windpipe.entities import read_entity, resolve_uri

    uri = run.data.tags.get(ENTITY_TAG)
    if not uri:
        raise WindpipeError(f"Run {run.info.run_id} has no {ENTITY_TAG} tag, so there is no holdout to score on.",
                            "promote a run of the lr, rf or keras steps (they tag the entity they trained on)")
    params = run.data.params
    try:
        test_size = float(params.get("test_size", 0.2))
        split_seed = int(float(params.get("split_seed", 42)))
    except ValueError as exc:
        raise WindpipeError(f"Run {run.info.run_id} has unreadable split params ({exc}).",
                            "retrain it with numeric split_seed and test_size") from None
    split_by = params.get("split_by", "random")
    with tempfile.TemporaryDirectory() as tmp:
        path = resolve_uri(uri, Path(dst or tmp))
        df = read_entity(PROCESSED, path)
    return Holdout(holdout_split(df, test_size, split_seed, split_by).reset_index(drop=True), uri, split_by,
                   split_seed, test_size)


def load_model(model_uri: str) -> Any:  # noqa: ANN401 - a PyFuncModel
    """mlflow.pyfunc.load_model with a clear error."""
    import mlflow

    try:
        return mlflow.pyfunc.load_model(model_uri)
    except Exception as exc:  # MlflowException, OSError, import errors of a flavour
        raise WindpipeError(f"Cannot load the model {model_uri} ({str(exc).splitlines()[0][:200]}).",
                            "check that the run logged its model and the artifact server runs "
                            "(`windpipe status`)") from None


def score(model: Any, holdout: pd.DataFrame) -> dict[str, float]:  # noqa: ANN401
    """rmse, mae, r2 (uniform average over the targets) and per target, on `holdout` (as training logs them)."""
    from windpipe.training.metrics import regression_metrics

    try:
        pred = np.asarray(model.predict(holdout[FEATURES].astype("float64")), dtype="float64")
        return regression_metrics(holdout[TARGETS].to_numpy(dtype="float64"), pred)
    except WindpipeError:
        raise
    except Exception as exc:  # a model that cannot predict this input, or the wrong shape
        raise WindpipeError(f"The model cannot be scored on the holdout ({str(exc).splitlines()[0][:200]}).",
                            f"log a model that takes {', '.join(FEATURES)} and predicts {', '.join(TARGETS)}") from None


def improvement(challenger: float, production: float, metric: str) -> float:
    """Relative improvement of the challenger over production (> 0: better), direction-aware."""
    gain = challenger - production if higher_is_better(metric) else production - challenger
    if production == 0:
        return math.inf if gain > 0 else (0.0 if gain == 0 else -math.inf)
    return gain / abs(production)


def gate(challenger: float, production: float, metric: str, margin: float) -> tuple[bool, str]:
    """The quality gate: (passes, why) for relative `margin`."""
    imp = improvement(challenger, production, metric)
    passes = imp > 0 and imp >= margin
    verdict = "better" if imp > 0 else "not better"
    why = (f"challenger {metric} {challenger:.4g} vs production {production:.4g}: {verdict} by {imp:+.2%} "
           f"(margin {margin:.2%})")
    return passes, why


# ---------------------------------------------------------------------------------- the candidate


def candidate_run(client: Any, settings: Settings, metric: str = "rmse", run_id: str | None = None) -> Any:  # noqa: ANN401
    """The run to promote: `run_id` (validated) or the best finished run with a model and an entity."""
    if run_id:
        run = _get_run(client, run_id)
        if run.info.status != "FINISHED" or run.info.lifecycle_stage != "active":
            raise WindpipeError(f"Run {run_id} is {run.info.status.lower()}"
                                f"{' (deleted)' if run.info.lifecycle_stage != 'active' else ''}; "
                                "only finished runs can be promoted.", "pick a FINISHED run from `windpipe compare`")
        if not run.data.tags.get(MODEL_URI_TAG):
            raise WindpipeError(f"Run {run_id} has no model (no {MODEL_URI_TAG} tag).",
                                "pick a run of the lr, rf or keras steps from `windpipe compare`")
        if not run.data.tags.get(ENTITY_TAG):
            raise WindpipeError(f"Run {run_id} has no {ENTITY_TAG} tag, so there is no holdout to score it on.",
                                "pick a run of the lr, rf or keras steps from `windpipe compare`")
        return run
    try:
        ranked = compare_runs(settings, metric=metric, client=client)
    except WindpipeError as exc:
        raise WindpipeError(f"Nothing to promote: {exc.problem}",
                            "train a model first (e.g. `mlflow run projects/lr`), then `windpipe promote`") from None
    ranked = ranked[ranked["entity_uri"].astype(str) != ""]
    if ranked.empty:
        raise WindpipeError(f"Nothing to promote: no finished run in {settings.experiment!r} has a model, "
                            f"the metric {metric!r} and a processed entity.",
                            "train a model first (e.g. `mlflow run projects/lr`), then `windpipe promote`")
    return client.get_run(str(ranked.iloc[0]["run_id"]))


def _existing_version(client: Any, name: str, run: Any) -> Any:  # noqa: ANN401
    """A READY version already registered from this run's model (promote twice = one version)."""
    from mlflow.exceptions import MlflowException

    model_uri = run.data.tags[MODEL_URI_TAG]
    model_id = model_uri.removeprefix("models:/").split("/")[0]
    try:
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run.info.run_id}'")
    except MlflowException:
        return None
    for v in sorted(found, key=lambda v: int(v.version)):
        if v.status == "READY" and (v.source == model_uri or getattr(v, "model_id", None) == model_id):
            return client.get_model_version(name, v.version)
    return None


def _set_tags(client: Any, mv: Any, tags: dict[str, str]) -> None:  # noqa: ANN401
    """Set the version tags whose value differs (one request each: skip the unchanged ones)."""
    for key, value in tags.items():
        if (mv.tags or {}).get(key) != value:
            client.set_model_version_tag(mv.name, str(mv.version), key, value)


def _register(client: Any, name: str, run: Any, tags: dict[str, str]) -> Any:  # noqa: ANN401
    import mlflow

    try:
        mv = mlflow.register_model(run.data.tags[MODEL_URI_TAG], name, await_registration_for=120, tags=tags)
    except Exception as exc:  # MlflowException or HTTP errors
        raise WindpipeError(f"Registering {run.data.tags[MODEL_URI_TAG]} as {name} failed "
                            f"({str(exc).splitlines()[0][:200]}).", "check `windpipe status` and retry") from None
    return client.get_model_version(name, mv.version)


def check_promotable(client: Any, name: str, version: str | int) -> Any:  # noqa: ANN401
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
    run = _get_run(client, mv.run_id) if mv.run_id else None
    if run is None or run.info.status != "FINISHED" or run.info.lifecycle_stage != "active":
        state = "missing" if run is None else f"{run.info.status.lower()}/{run.info.lifecycle_stage}"
        raise WindpipeError(f"The run behind {name} version {version} is {state}.",
                            "promote a version whose run finished")
    return mv


# -------------------------------------------------------------------------------------- promote


def promote(settings: Settings | None = None, metric: str = "rmse", run_id: str | None = None,
            margin: float = 0.0, force: bool = False, say: Any = None) -> PromotionResult:  # noqa: ANN401
    """Register the best run (or `run_id`) as `challenger`; move `production` if it passes the gate.

    Everything a user can get wrong (no runs, a run without a model, an unknown run id, an
    unknown metric, a negative margin) is checked before the registry is touched.
    """
    settings = settings or get_settings()
    say = say or (lambda _msg: None)
    name = settings.model_name
    if metric not in HOLDOUT_METRICS:
        raise WindpipeError(f"The gate cannot score {metric!r} on a holdout; it can score "
                            f"{', '.join(HOLDOUT_METRICS)}.", "pass --metric rmse (or mae, r2)")
    if not (margin >= 0 and math.isfinite(margin)):
        raise WindpipeError(f"The margin must be a finite number >= 0, got {margin}.",
                            "pass e.g. --margin 0.02 (challenger at least 2 % better)")
    client = _client(settings)
    run = candidate_run(client, settings, metric, run_id)
    run_id = run.info.run_id
    say(f"challenger run {run_id} ({run.data.tags.get(FAMILY_TAG, '?')}, {run.data.tags[MODEL_URI_TAG]})")
    holdout = load_holdout(run)
    challenger_metrics = score(load_model(run.data.tags[MODEL_URI_TAG]), holdout.df)
    say(f"holdout: {holdout.describe()}")

    with registry_lock(settings):
        current = production_version(client, name)  # re-read under the lock
        previous = int(current.version) if current is not None else None
        existing = _existing_version(client, name, run)
        production_metrics, promoted, reason = None, None, ""
        if current is None:
            promoted, reason = True, "no production version yet"
        elif existing is not None and int(existing.version) == previous:
            promoted, reason = False, f"v{previous} (this run) is already production"
        else:
            # score production BEFORE registering anything: a failure here changes nothing
            try:
                production_metrics = score(load_model(f"models:/{name}/{previous}"), holdout.df)
            except WindpipeError as exc:
                if not force:
                    raise WindpipeError(f"The production version v{previous} cannot be scored on the holdout: "
                                        f"{exc.problem}", "check `windpipe status` and retry; pass --force to "
                                        "replace production without comparing") from None
                promoted, reason = True, f"forced: production v{previous} cannot be scored ({exc.problem})"
            else:
                passes, why = gate(challenger_metrics[metric], production_metrics[metric], metric, margin)
                promoted, reason = (True, why) if passes else (force, f"forced: {why}" if force else why)
        data_date = run.data.tags.get(DATA_DATE_TAG) or "nodate"
        tags = {DATA_DATE_TAG: data_date, RUN_ID_TAG: run_id, FAMILY_VERSION_TAG: run.data.tags.get(FAMILY_TAG, ""),
                "windpipe.holdout": holdout.describe(), GATE_TAG: reason,
                **{f"{HOLDOUT_PREFIX}{k}": f"{v:.6g}" for k, v in challenger_metrics.items()}}
        mv = existing or _register(client, name, run, tags)
        version = int(mv.version)
        inst = f"{name}_v{version}_{data_date}"
        _set_tags(client, mv, {**tags, INSTANCE_TAG: inst})
        client.set_registered_model_alias(name, CHALLENGER, str(version))
        if promoted:
            check_promotable(client, name, version)
            _set_tags(client, mv, {PREVIOUS_TAG: "" if previous is None else str(previous), REASON_TAG: reason,
                                   PROMOTED_AT_TAG: datetime.now(UTC).isoformat(timespec="seconds")})
            client.set_registered_model_alias(name, PRODUCTION, str(version))
        final = production_version(client, name)
    return PromotionResult(promoted=promoted, version=version, previous=previous, reason=reason, metric=metric,
                           run_id=run_id, instance_name=inst, challenger_metrics=challenger_metrics,
                           production_metrics=production_metrics,
                           production=int(final.version) if final is not None else None,
                           holdout=holdout.describe())


def rollback(settings: Settings | None = None) -> RollbackResult:
    """Point `production` back at the version it replaced (the `windpipe.previous_production` tag).

    Rolling back again walks further back. No production, or none before it: WindpipeError,
    nothing changed.
    """
    settings = settings or get_settings()
    name = settings.model_name
    client = _client(settings)
    with registry_lock(settings):
        current = production_version(client, name)
        if current is None:
            raise WindpipeError(f"{name} has no production version, so there is nothing to roll back.",
                                "promote a model first: `windpipe promote`")
        previous = (current.tags or {}).get(PREVIOUS_TAG, "")
        if not previous:
            raise WindpipeError(f"{name} v{current.version} is the first production version; there is no "
                                "previous one to roll back to.",
                                "promote another version instead: `windpipe promote --run-id <id> --force`")
        mv = check_promotable(client, name, previous)
        client.set_model_version_tag(name, str(mv.version), REASON_TAG, f"rollback from v{current.version}")
        client.set_model_version_tag(name, str(mv.version), PROMOTED_AT_TAG,
                                     datetime.now(UTC).isoformat(timespec="seconds"))
        client.set_model_version_tag(name, str(current.version), "windpipe.rolled_back_at",
                                     datetime.now(UTC).isoformat(timespec="seconds"))
        client.set_registered_model_alias(name, PRODUCTION, str(mv.version))
        mv = client.get_model_version(name, str(mv.version))
    return RollbackResult(version=int(mv.version), from_version=int(current.version), instance_name=instance_name(mv))


# ---------------------------------------------------------------------------------------- listing

VERSION_COLUMNS = ["version", "instance_name", "aliases", "status", "run_id", "family", "data_date",
                   "holdout_rmse", "holdout_mae", "holdout_r2", "previous_production", "promoted_at", "gate",
                   "created"]


def list_versions(settings: Settings | None = None, client: Any = None, name: str | None = None) -> pd.DataFrame:  # noqa: ANN401
    """Every version of the registered model, newest first (empty frame when none)."""
    settings = settings or get_settings()
    client = client or _client(settings)
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
        except Exception:  # noqa: BLE001 - aliases are a nicety here; versions still list
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
            "status": v.status, "run_id": v.run_id or "", "family": tags.get(FAMILY_VERSION_TAG, ""),
            "data_date": tags.get(DATA_DATE_TAG, ""),
            "holdout_rmse": num("holdout_rmse"), "holdout_mae": num("holdout_mae"), "holdout_r2": num("holdout_r2"),
            "previous_production": tags.get(PREVIOUS_TAG, ""), "promoted_at": tags.get(PROMOTED_AT_TAG, ""),
            "gate": tags.get(GATE_TAG, ""),
            "created": pd.Timestamp(v.creation_timestamp, unit="ms", tz="UTC"),
        })
    return (pd.DataFrame(rows, columns=VERSION_COLUMNS).sort_values("version", ascending=False)
            .reset_index(drop=True))

"""The promotion gate: score challenger and production on the same holdout, move `production` when
the challenger is better by the margin.

`promote()` registers the best run (or the one given) as a new version of `settings.model_name`
with the alias `challenger` (unless a version already holds its model: one registered from the run,
or from a run with the same cache key, i.e. the same step, code, params and inputs, such as a
`--force` rerun; that version is the challenger then), scores challenger and current `production` on the SAME holdout
(the challenger run's processed entity, split with the run's own split params: by default the
newest `holdout_weeks` of it, rows neither model's run trained on when production is older) and moves
`production` only when the challenger is better by the margin, when forced, or when there is
no production yet.

Before any comparison the challenger must respect physics (windpipe.training.physics): its response
curves, swept at conditions taken from the holdout, rise with what drives each target and ignore what
does not, within the settings' physics_drop_gw and physics_ignore_gw. A candidate that breaks them is
not promoted (unless forced); the check (physics/check.json, with the reason) and its curves
(physics/curves.html) are logged as artifacts of its run either way.

The gate (documented in docs/registry.md): the margin is RELATIVE. With production score P and
challenger score C on the same holdout, the improvement is (P - C) / |P| for lower-is-better
metrics (rmse, mae) and (C - P) / |P| for higher-is-better ones (r2), the direction coming from
`windpipe.names.higher_is_better`. The challenger is promoted when the improvement is > 0 and
>= margin (margin 0.02 = "at least 2 % better").
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from windpipe import names
from windpipe.entities.schema import PROCESSED
from windpipe.entities.store import read_entity, resolve_uri
from windpipe.errors import WindpipeError
from windpipe.faults import fault_point
from windpipe.models import history, loading
from windpipe.models.compare import compare_runs
from windpipe.models.registry import (
    check_promotable,
    existing_version,
    get_run,
    now_iso,
    register,
    registry_lock,
    set_tags,
)
from windpipe.names import COVERAGE, FEATURES, TARGETS, TIMESTAMP, higher_is_better
from windpipe.settings import Settings, get_settings
from windpipe.tracking.client import client as tracking_client
from windpipe.training.physics import PhysicsCheck, check_curves, curves_at
from windpipe.training.split import SplitSpec

HOLDOUT_METRICS = ("rmse", "mae", "r2", *(f"{m}_{t}" for m in ("rmse", "mae", "r2") for t in TARGETS))


@dataclass
class Holdout:
    """The rows both models are scored on, and where they came from."""

    df: pd.DataFrame
    entity_uri: str
    spec: SplitSpec

    def describe(self) -> str:
        window = ""
        if self.spec.split_by == "time" and len(self.df):
            ts = self.df[TIMESTAMP]
            window = f", {ts.min():%Y-%m-%d %H:%M} to {ts.max():%Y-%m-%d %H:%M} UTC"
        return f"{len(self.df)} rows of {self.entity_uri} ({self.spec.describe()}{window})"


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
    note: str = ""  # e.g. that a version already held the model of the run asked for


def holdout_split(df: pd.DataFrame, spec: SplitSpec) -> pd.DataFrame:
    """The holdout rows exactly as the training steps cut them (windpipe.training.split)."""
    return spec.cut(df)[1]


def load_holdout(run: Any, dst: Path | None = None) -> Holdout:
    """The challenger run's processed entity, split with the run's split params: by default the newest
    `holdout_weeks` of it, the window the challenger never saw (runs with `split_by=random`: its seeded split)."""
    uri = names.read_uri(run.data.tags)
    if not uri:
        raise WindpipeError(f"Run {run.info.run_id} has no {names.TRAINING_DATA_TAG} tag, so there is no holdout to "
                            "score on.",
                            "promote a run of the lr, rf or keras steps (they tag the entity they trained on)")
    try:
        spec = SplitSpec.from_params(run.data.params)
    except WindpipeError as exc:
        raise WindpipeError(f"Run {run.info.run_id}: {exc.problem}", exc.fix) from None
    with tempfile.TemporaryDirectory() as tmp:
        path = resolve_uri(uri, Path(dst or tmp))
        df = read_entity(PROCESSED, path)
    return Holdout(holdout_split(df, spec).reset_index(drop=True), uri, spec)


def holdout_metrics(model: Any, holdout: pd.DataFrame) -> dict[str, float]:
    """rmse, mae, r2 (uniform average over the targets) and per target, on `holdout` (as training logs them);
    for a model with quantiles also their pinball loss and the 80 % interval's coverage and width."""
    from windpipe.training.metrics import quantile_metrics, regression_metrics

    pred, quantiles = loading.predict_quantiles(model, holdout[FEATURES].astype("float64"), holdout[TIMESTAMP])
    recorded = holdout[TARGETS].to_numpy(dtype="float64")
    out = regression_metrics(recorded, pred)
    if quantiles is not None and len(holdout):
        out.update(quantile_metrics(recorded, quantiles))
    return out


def interval_check(metrics: dict[str, float], settings: Settings) -> tuple[bool, str]:
    """(passes, why): the candidate's 80 % interval covers between the settings' coverage_low and coverage_high of
    the holdout. A model logged before the quantiles has no interval to check, and passes saying so."""
    low, high = settings.coverage_low, settings.coverage_high
    if COVERAGE not in metrics:
        return True, "interval: the model gives no quantiles (logged before them), so its coverage is not checked"
    coverage = metrics[COVERAGE]
    per = ", ".join(f"{t} {metrics[f'{COVERAGE}_{t}']:.3f}" for t in TARGETS if f"{COVERAGE}_{t}" in metrics)
    if low <= coverage <= high:
        return True, f"interval: P10..P90 covers {coverage:.3f} of the holdout ({per}), within {low:g}-{high:g}"
    side = "narrow: it claims a certainty it has not" if coverage < low else "wide: it says little"
    return False, (f"interval: P10..P90 covers {coverage:.3f} of the holdout ({per}), outside {low:g}-{high:g} "
                   f"(too {side}; settings coverage_low/coverage_high)")


def _scored(model_uri: str, holdout: pd.DataFrame, settings: Settings) -> dict[str, float]:
    """Load `model_uri` through the one loader and score it on the holdout."""
    model, _ = loading.load_uri(model_uri, settings)
    try:
        return holdout_metrics(model, holdout)
    except WindpipeError as exc:
        raise WindpipeError(f"The model {model_uri} cannot be scored on the holdout ({exc.problem}).",
                            exc.fix) from None


PHYSICS_CHECK_PATH, PHYSICS_FIGURE_PATH = "physics/check.json", "physics/curves.html"


def physics_check(model: Any, holdout: pd.DataFrame, settings: Settings) -> tuple[PhysicsCheck, list]:
    """The challenger's response curves at conditions of the holdout (the what-if page's sweep), and what they
    break of physics (windpipe.training.physics.check_curves, the settings' tolerances)."""
    curves = curves_at(loading.predictor(model), holdout)
    return check_curves(curves, settings.physics_drop_gw, settings.physics_ignore_gw), curves


def log_physics(client: Any, run_id: str, check: PhysicsCheck, curves: list) -> None:
    """The check (its reason and every worst case) and the curves' figure, as artifacts of the candidate's run."""
    import json

    from windpipe.training.figures import figure_html, physics_figure

    client.log_text(run_id, json.dumps(check.as_json(), indent=1), PHYSICS_CHECK_PATH)
    verdict = "holds" if check.passed else "BROKEN"
    client.log_text(run_id, figure_html(physics_figure(curves, title=f"promotion gate: physics {verdict}")),
                    PHYSICS_FIGURE_PATH)


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


def candidate_run(client: Any, settings: Settings, metric: str = "rmse", run_id: str | None = None) -> Any:
    """The run to promote: `run_id` (validated) or the best finished run with a model and an entity."""
    if run_id:
        run = get_run(client, run_id)
        if run.info.status != "FINISHED" or run.info.lifecycle_stage != "active":
            raise WindpipeError(f"Run {run_id} is {run.info.status.lower()}"
                                f"{' (deleted)' if run.info.lifecycle_stage != 'active' else ''}; "
                                "only finished runs can be promoted.", "pick a FINISHED run from `windpipe compare`")
        if not run.data.tags.get(names.MODEL_URI_TAG):
            raise WindpipeError(f"Run {run_id} has no model (no {names.MODEL_URI_TAG} tag).",
                                "pick a run of the lr, rf or keras steps from `windpipe compare`")
        if not names.read_uri(run.data.tags):
            raise WindpipeError(f"Run {run_id} has no {names.TRAINING_DATA_TAG} tag, so there is no holdout to score "
                                "it on.",
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


def promote(settings: Settings | None = None, metric: str = "rmse", run_id: str | None = None,
            margin: float = 0.0, force: bool = False, say: Any = None) -> PromotionResult:
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
    client = tracking_client(settings)
    run = candidate_run(client, settings, metric, run_id)
    asked, note = run.info.run_id, ""
    current = loading.version_by_alias(client, name)
    held = existing_version(client, name, run, int(current.version) if current is not None else None)
    if held is not None and held.run_id != asked:
        # the same work made it again (a rerun with --force): promote the version that holds it, no new one
        note = f"v{held.version} already holds this model (same step, code, params, inputs: run {held.run_id})"
        say(note)
        run = get_run(client, held.run_id)
    run_id = run.info.run_id
    say(f"challenger run {run_id} ({run.data.tags.get(names.FAMILY_TAG, '?')}, {run.data.tags[names.MODEL_URI_TAG]})")
    holdout = load_holdout(run)
    challenger_metrics = _scored(run.data.tags[names.MODEL_URI_TAG], holdout.df, settings)
    say(f"holdout: {holdout.describe()}")
    physics, curves = physics_check(loading.load_uri(run.data.tags[names.MODEL_URI_TAG], settings)[0], holdout.df,
                                    settings)
    log_physics(client, run_id, physics, curves)
    say(physics.reason())
    interval_ok, interval_reason = interval_check(challenger_metrics, settings)
    say(interval_reason)

    with registry_lock(settings, say=say) as lock:
        current = loading.version_by_alias(client, name)  # re-read under the lock
        previous = int(current.version) if current is not None else None
        fault_point("promote:locked")
        existing = existing_version(client, name, run, previous)
        production_metrics, promoted, reason = None, None, ""
        if not physics.passed:
            promoted, reason = force, f"forced: {physics.reason()}" if force else physics.reason()
        elif not interval_ok:
            promoted, reason = force, f"forced: {interval_reason}" if force else interval_reason
        elif current is None:
            promoted, reason = True, "no production version yet"
        elif existing is not None and int(existing.version) == previous:
            promoted, reason = False, (f"v{previous} (this run) is already production" if existing.run_id == asked
                                       else f"v{previous} already holds this model and is production")
        else:
            # score production BEFORE registering anything: a failure here changes nothing
            try:
                production_metrics = _scored(names.version_uri(name, previous), holdout.df, settings)
            except WindpipeError as exc:
                if not force:
                    raise WindpipeError(f"The production version v{previous} cannot be scored on the holdout: "
                                        f"{exc.problem}", "check `windpipe status` and retry; pass --force to "
                                        "replace production without comparing") from None
                promoted, reason = True, f"forced: production v{previous} cannot be scored ({exc.problem})"
            else:
                passes, why = gate(challenger_metrics[metric], production_metrics[metric], metric, margin)
                promoted, reason = (True, why) if passes else (force, f"forced: {why}" if force else why)
        data_date = run.data.tags.get(names.DATA_DATE_TAG) or "nodate"
        tags = {names.DATA_DATE_TAG: data_date, names.RUN_ID_TAG: run_id,
                names.FAMILY_TAG: run.data.tags.get(names.FAMILY_TAG, ""),
                names.HOLDOUT_TAG: holdout.describe(), names.GATE_TAG: reason,
                **{f"{names.HOLDOUT_PREFIX}{k}": f"{v:.6g}" for k, v in challenger_metrics.items()}}
        if run.data.tags.get(names.CACHE_KEY_TAG):  # the work that made the model (shown in the MLflow UI)
            tags[names.CACHE_KEY_TAG] = run.data.tags[names.CACHE_KEY_TAG]
        lock.check()  # (still ours: a holder past its lease may have been ended by another promotion)
        mv = existing or register(client, name, run, tags)
        version = int(mv.version)
        inst = names.instance_name_for(name, version, data_date)
        # (a version a concurrent promotion registered for the same work keeps its own run)
        set_tags(client, mv, {**tags, names.RUN_ID_TAG: mv.run_id, names.INSTANCE_TAG: inst})
        pipeline_run = history.pipeline_run_id(client)
        with history.recorded_move(client, settings, names.CHALLENGER, version, "promote",
                                   f"registered from run {run_id}; {reason}", pipeline_run):
            client.set_registered_model_alias(name, names.CHALLENGER, str(version))
        if promoted:
            check_promotable(client, name, version)
            lock.check()
            set_tags(client, mv, {names.PREVIOUS_TAG: "" if previous is None else str(previous),
                                  names.REASON_TAG: reason, names.PROMOTED_AT_TAG: now_iso()})
            action = "first" if previous is None else ("force" if reason.startswith("forced") else "promote")
            with history.recorded_move(client, settings, names.PRODUCTION, version, action, reason, pipeline_run):
                client.set_registered_model_alias(name, names.PRODUCTION, str(version))
        final = loading.version_by_alias(client, name)
    return PromotionResult(promoted=promoted, version=version, previous=previous, reason=reason, metric=metric,
                           run_id=run_id, instance_name=inst, challenger_metrics=challenger_metrics,
                           production_metrics=production_metrics,
                           production=int(final.version) if final is not None else None,
                           holdout=holdout.describe(), note=note)



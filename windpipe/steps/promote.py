"""The promote step: register the candidate; move `production` only through the gate (windpipe.models.promotion).

Reads:  MODEL_URI (the compare step's candidate) and the holdout of the run that logged it.
Writes: a version of the registered model (none when one already holds the model), alias challenger,
        and production when it wins; on its run the promotion's fields (windpipe.promote.*), metric
        promoted_version (only when it promoted), tag windpipe.outcome ("promoted v2: ..." or "not promoted
        v2: ...": the pipeline's summary shows it), and tag windpipe.entity.production (the production version
        after the gate).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from windpipe import names
from windpipe.errors import UsageError, WindpipeError
from windpipe.models import loading
from windpipe.models.promotion import PromotionResult, promote
from windpipe.settings import get_settings
from windpipe.tracking.runs import step_run


def main(model_uri: str, metric: str, margin: str, step_dir: Path | None = None) -> PromotionResult:
    """Register MODEL_URI's run as challenger; move production when it beats it on the same holdout."""
    import mlflow

    with step_run("promote", "main", step_dir=step_dir):
        if not model_uri.strip():
            raise UsageError("promote got no model.", "run the compare step first (its candidate is the input)")
        try:
            margin_value = float(margin)
        except ValueError:
            raise UsageError(f"margin must be a number, got {margin!r}.", "pass e.g. -P promote.margin=0.02") from None
        settings = get_settings()
        run_id = loading.resolve(model_uri.strip(), settings).run_id
        if run_id is None:
            raise WindpipeError(f"The model {model_uri} was not logged by a run.", "promote a model the steps logged")
        result = promote(settings, metric=metric, run_id=run_id, margin=margin_value, say=print)
        fields = dataclasses.asdict(result)
        tags = {names.PROMOTE_TAG_PREFIX + k: str(v)[:4000] for k, v in fields.items()
                if not isinstance(v, dict | list) and v is not None}
        if result.production is not None:
            tags[names.entity_tag(names.PRODUCTION)] = names.version_uri(settings.model_name, result.production)
        outcome = f"{'promoted' if result.promoted else 'not promoted'} v{result.version}: {result.reason}"
        tags[names.OUTCOME_TAG] = outcome[:500]  # what the pipeline's summary shows
        mlflow.set_tags(tags)
        if result.promoted:  # (a version that was not promoted is no promoted_version)
            mlflow.log_metric("promoted_version", result.version)
        if result.note:
            print(f"promote: {result.note}")
        print(f"promote: {outcome}")
        return result

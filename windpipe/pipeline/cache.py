"""When a step is reused: the cache key of a run, and the lookup of a finished run that has it.

A step is reused when a FINISHED run in the experiment carries the cache key made from: the
step's project and entry point, its parameters, its code version (git commit + hash of the
library and the step folder, so uncommitted edits count), the cache keys of the steps it read
from (the entity URIs wired from them, which hold their run ids, are left out), and the content
hash of any external input (the same folder can hold new raw files). The key thus names the work,
not the runs that did it: rerunning the same work (`--force`) gives every step the key it had,
and the promotion uses that to know a model it already registered (windpipe.models.registry).

`step_key` makes the key of a planned step once its producers have results (`StepResult`: a run that
ran or was reused); `find_cached` looks it up.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from windpipe import names
from windpipe.errors import WindpipeError

if TYPE_CHECKING:
    from mlflow.entities import Run

    from windpipe.pipeline.plan import Plan, PlannedStep


@dataclass
class StepResult:
    """One step of one pipeline run."""

    name: str
    run_id: str
    reused: bool
    seconds: float
    tags: dict[str, str]
    metrics: dict[str, float]
    key_metric: str | None = None

    @property
    def metric_value(self) -> float | None:
        return self.metrics.get(self.key_metric) if self.key_metric else None

    @classmethod
    def of_run(cls, name: str, run: Run, reused: bool, seconds: float, key_metric: str | None) -> StepResult:
        return cls(name, run.info.run_id, reused, seconds, dict(run.data.tags), dict(run.data.metrics), key_metric)


def content_hash(path: Path | str) -> str:
    """Content hash of a file, or of the CSV/parquet files of a folder (raw files change under one path); of an S3
    object, its name and ETag (the store's checksum of its bytes: no download)."""
    if str(path).startswith("s3://"):
        return _object_hash(str(path))
    path = Path(path)
    files = (sorted(p for p in path.iterdir() if p.suffix in (".csv", ".parquet")) if path.is_dir()
             else [path] if path.is_file() else [])
    if not files:
        raise WindpipeError(f"No data files in {path}.",
                            f"generate raw files with `windpipe data synth --out {path}` (or download the OPSD files)")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _object_hash(uri: str) -> str:
    from windpipe.settings import get_settings
    from windpipe.stack import objects

    entry = objects.head(uri, get_settings())
    if entry is None:
        raise WindpipeError(f"There is no object {uri}.", "check the URI (s3://<bucket>/<key>)")
    return hashlib.sha256(f"{entry.name}\0{entry.etag}".encode()).hexdigest()[:16]


def cache_key(project: str, entry_point: str, params: dict[str, str], code: str, upstream: dict[str, str],
              extra: dict[str, str]) -> str:
    """The hash that decides whether a finished run of a step can be reused."""
    material = {"project": project, "entry_point": entry_point, "params": params, "code_version": code,
                "upstream": upstream, "extra": extra}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:32]


def find_cached(client: Any, experiment_id: str, key: str) -> Any:
    """The newest FINISHED run with this cache key, or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{names.CACHE_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def input_values(plan: Plan, step: PlannedStep, results: dict[str, StepResult]) -> dict[str, str]:
    """The wired input parameters of `step`: each producer's recorded URI (comma-joined for `all: true`)."""
    out: dict[str, str] = {}
    for port in step.spec.inputs:
        if not port.parameter:
            continue
        if port.entity in plan.external:
            out[port.parameter] = plan.external[port.entity]
            continue
        if port.entity in plan.graph.external:  # external, not provided: the parameter's default
            continue
        values = []
        for producer in plan.graph.producers(port.entity):
            value = results[producer].tags.get(port.tag)
            if not value:
                raise WindpipeError(f"The {producer} run {results[producer].run_id} recorded no {port.entity} "
                                    f"(tag {port.tag}), which step {step.name!r} reads.",
                                    "rerun the pipeline with --force (or fix the step so that it sets the tag)")
            values.append(value)
        out[port.parameter] = ",".join(values)
    return out


def step_key(plan: Plan, step: PlannedStep, results: dict[str, StepResult], code: str,
             extra: dict[str, str]) -> tuple[dict[str, str], dict[str, str], str]:
    """(parameters, upstream run ids, cache key) of `step` with code version `code`, its producers' `results`
    and the content hashes `extra` of the external inputs.

    The key names the work, not the runs that did it: a producer counts by its own key, and the URIs wired
    from it (which hold its run id) not at all. So rerunning the same work (`--force`) keys every step alike,
    and the promotion knows the model it already holds (windpipe.models.registry.existing_version).
    """
    wired = input_values(plan, step, results)
    params = {**step.params, **wired}
    upstream = {u: results[u].run_id for u in step.needs}
    produced = {port.parameter for port in step.spec.inputs
                if port.parameter in wired and port.entity not in plan.external}
    keyed = {k: v for k, v in params.items() if k not in produced}
    producers = {u: results[u].tags.get(names.CACHE_KEY_TAG) or results[u].run_id for u in step.needs}
    own_extra = {e: h for e, h in extra.items() if step.spec.input(e) is not None}
    return params, upstream, cache_key(step.spec.folder.name, step.entry_point, keyed, code, producers, own_extra)


def external_hashes(plan: Plan) -> dict[str, str]:
    """Content hashes of the external inputs this run provides as files or folders (a model URI is its own key)."""
    kinds = {p.entity: p.kind for s in plan.graph.specs.values() for p in s.inputs}
    return {entity: content_hash(value) for entity, value in plan.external.items() if kinds.get(entity) != "model"}

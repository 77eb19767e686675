"""Run a step from its interface: read its input entities, call its pure `transform`, log its outputs.

Steps made by `windpipe new-step` run `interface_step(transform)` as their entry point, which calls
`run_interface_step(step_dir, transform, params)` with the MLproject's parameters:

- an input URI is a path, any URI MLflow can download (`runs:/...`), or `latest` (or empty): the entity
  the newest finished run in the experiment tagged `windpipe.entity.<name>` wrote
  (`windpipe.tracking.runs.input_uri`); the run records what it read as `windpipe.input.<name>`;
- each output is validated against its schema, written as parquet, logged under `entities/`
  and as an MLflow dataset, and its URI set as the `windpipe.entity.<name>` tag.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd

from windpipe import names
from windpipe.entities.schema import Entity, data_date
from windpipe.entities.store import log_entity, log_entity_input, read_entity, resolve_uri
from windpipe.errors import WindpipeError
from windpipe.names import TIMESTAMP
from windpipe.tracking.runs import input_uri, step_run

Transform = Callable[[dict[str, pd.DataFrame]], dict[str, pd.DataFrame]]


def sample_frame(columns: Mapping[str, str], rows: int = 24) -> pd.DataFrame:
    """A small deterministic table with `columns` (name -> kind): hourly timestamps from 2013, ramps."""
    data: dict[str, object] = {}
    for i, (col, kind) in enumerate(columns.items()):
        if kind == "datetime":
            data[col] = pd.date_range("2013-01-01", periods=rows, freq="h", tz="UTC")
        elif kind == "int":
            data[col] = pd.Series(range(rows), dtype="int64") + i
        else:
            data[col] = pd.Series(range(rows), dtype="float64") * 0.5 + i
    return pd.DataFrame(data)


def pass_through(source: pd.DataFrame, columns: Mapping[str, str]) -> pd.DataFrame:
    """`source` restricted to `columns`; a column it lacks is filled from `sample_frame` (a placeholder)."""
    out = pd.DataFrame(index=source.index)
    filler = sample_frame(columns, rows=len(source)).set_index(source.index)
    for col in columns:
        out[col] = source[col] if col in source.columns else filler[col]
    return out.reset_index(drop=True)


def read_input_entity(entity: Entity, uri: str, tmp: Path) -> tuple[pd.DataFrame, str]:
    """Read and validate a table entity from `uri` (`latest` allowed); return the frame and the resolved URI."""
    uri = input_uri(entity.name, uri)
    df = read_entity(entity, resolve_uri(uri, dst=tmp))
    return df, uri


def run_interface_step(step_dir: Path | str, transform: Transform, params: Mapping[str, str],
                       entry_point: str = "main") -> dict[str, str]:
    """Run a table-in, table-out step described by `<step_dir>/step.yaml`; return the output URIs by entity.

    `params` are the entry point's parameters; each input's parameter holds its entity's URI (or `latest`).
    """
    import mlflow

    from windpipe.pipeline.interfaces import load_interface

    step_dir = Path(step_dir)
    spec = load_interface(step_dir)
    with step_run(spec.name, entry_point=entry_point, step_dir=step_dir), \
            tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        frames: dict[str, pd.DataFrame] = {}
        for port in spec.inputs:
            value = params.get(port.parameter or "", "")
            df, uri = read_input_entity(port.as_entity(), value, tmp / "in" / port.entity)
            log_entity_input(port.as_entity(), df, uri, context="input")
            mlflow.set_tag(names.input_tag(port.entity), uri)  # the parameter may say `latest`
            frames[port.entity] = df
        outputs = transform(frames)
        wanted = {p.entity for p in spec.outputs}
        if set(outputs) != wanted:
            raise WindpipeError(f"transform of step {spec.name!r} returned {sorted(outputs)}, but step.yaml declares "
                                f"the outputs {sorted(wanted)}.",
                                "return one DataFrame per declared output (or fix step.yaml)")
        uris: dict[str, str] = {}
        for port in spec.outputs:
            entity = port.as_entity()
            df = entity.validate(outputs[port.entity], where=f"the output of step {spec.name}")
            path = tmp / "out" / entity.filename
            path.parent.mkdir(parents=True, exist_ok=True)
            df.to_parquet(path, index=False)
            uris[port.entity] = log_entity(entity, df, path, context="output")
            mlflow.set_tag(port.tag, uris[port.entity])
            mlflow.log_metric(f"rows_{port.entity}", len(df))
            if TIMESTAMP in df.columns:
                mlflow.set_tag(names.DATA_DATE_TAG, data_date(df))
            print(f"{spec.name}: wrote {port.entity} ({len(df)} rows) -> {uris[port.entity]}")
        return uris


def interface_step(transform: Transform) -> Callable[..., dict[str, str]]:
    """The `main` entry point of a step made by `windpipe new-step`: its inputs through `transform` to its outputs."""

    def main(step_dir: Path, **params: str) -> dict[str, str]:
        """Read the input entities, transform them, write and log the output entities."""
        return run_interface_step(step_dir, transform, params)

    return main

"""Entities: the parquet files steps hand to each other, with declared schemas.

An entity is validated when written and when read, written atomically, and logged both as
a run artifact and as an MLflow dataset input/output so lineage shows in the UI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from windpipe.columns import FEATURES, TARGETS, TIMESTAMP
from windpipe.errors import WindpipeError
from windpipe.fileio import atomic_path


@dataclass(frozen=True)
class Entity:
    """A named table: its columns (name -> pandas dtype kind) and the file it lives in."""

    name: str
    columns: dict[str, str]
    filename: str
    index: str | None = TIMESTAMP
    description: str = ""
    optional: tuple[str, ...] = field(default_factory=tuple)
    # "table" (a parquet file), "model" (an MLflow model URI) or "files" (a folder of raw files)
    kind: str = "table"
    # produced outside the pipeline (e.g. raw downloads): no step has to write it
    external: bool = False

    def validate(self, df: pd.DataFrame, where: str = "") -> pd.DataFrame:
        """Check columns, dtypes and emptiness; return the frame with only the declared columns."""
        where = f" in {where}" if where else ""
        missing = [c for c in self.columns if c not in df.columns and c not in self.optional]
        if missing:
            raise WindpipeError(
                f"The {self.name} entity{where} lacks column(s) {', '.join(missing)}; "
                f"it has {', '.join(map(str, df.columns))}.",
                f"produce the {self.name} entity with all of: {', '.join(self.columns)}",
            )
        if df.empty:
            raise WindpipeError(f"The {self.name} entity{where} has no rows.",
                                "check the step that produced it (or its input data)")
        for col, kind in self.columns.items():
            if col not in df.columns:
                continue
            ok = (pd.api.types.is_datetime64_any_dtype(df[col]) if kind == "datetime"
                  else pd.api.types.is_numeric_dtype(df[col]))
            if not ok:
                raise WindpipeError(
                    f"Column {col!r} of the {self.name} entity{where} has dtype {df[col].dtype}, "
                    f"expected {kind}.",
                    f"convert {col} to {kind} values",
                )
        return df[[c for c in self.columns if c in df.columns]]

    def schema_dict(self) -> dict[str, str]:
        return dict(self.columns)


PROCESSED = Entity(
    name="processed",
    columns={TIMESTAMP: "datetime", **{c: "float" for c in TARGETS}, **{c: "float" for c in FEATURES}},
    filename="processed.parquet",
    description="hourly German solar and wind generation (GW) with the weather that drives it",
)

RAW = Entity(
    name="raw",
    columns={},
    filename="",
    index=None,
    kind="files",
    external=True,
    description="a folder with the raw OPSD-shaped CSV files (time_series_60min_singleindex.csv, weather_data.csv)",
)

FEATURES_ENTITY = Entity(
    name="features",
    columns={TIMESTAMP: "datetime", **{c: "float" for c in FEATURES}},
    filename="features.parquet",
    optional=(TIMESTAMP,),
    external=True,
    description="hourly weather to predict from (the model's inputs; utc_timestamp optional)",
)

MODEL = Entity(
    name="model",
    columns={},
    filename="",
    index=None,
    kind="model",
    description="an MLflow model (models:/...) mapping the features to the targets",
)

PREDICTIONS = Entity(
    name="predictions",
    columns={"row_no": "int", TIMESTAMP: "datetime", **{f"{c}_pred": "float" for c in TARGETS}},
    filename="predictions.parquet",
    optional=(TIMESTAMP,),
    description="predicted solar and wind generation (GW) per row of the features, plus model_name, "
                "model_version and batch_id",
)

# every entity a step interface (projects/*/step.yaml) may name without declaring its schema
ENTITIES: dict[str, Entity] = {e.name: e for e in (RAW, PROCESSED, FEATURES_ENTITY, MODEL, PREDICTIONS)}


def write_entity(entity: Entity, df: pd.DataFrame, path: Path | str) -> Path:
    """Validate and write an entity as parquet, atomically."""
    df = entity.validate(df)
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    return path


def read_entity(entity: Entity, path: Path | str) -> pd.DataFrame:
    """Read and validate an entity from a local parquet or CSV file."""
    path = Path(path)
    if not path.exists():
        raise WindpipeError(f"The {entity.name} entity file {path} does not exist.",
                            "pass an existing file, or run the step that produces it")
    try:
        if path.suffix == ".csv":
            df = pd.read_csv(path)
            if entity.index and entity.index in df.columns:
                df[entity.index] = pd.to_datetime(df[entity.index], utc=True)
        else:
            df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow/pandas raise many types for a bad file
        raise WindpipeError(f"Cannot read {path} as the {entity.name} entity ({exc}).",
                            "pass a parquet (or CSV) file written by windpipe") from None
    return entity.validate(df, str(path))


def resolve_uri(uri: str, dst: Path | None = None) -> Path:
    """A local path for `uri`: a path as is, or any URI MLflow can download (runs:/, mlflow-artifacts:/ ...)."""
    if "://" not in uri and not uri.startswith(("runs:/", "models:/", "mlflow-artifacts:/")):
        return Path(uri)
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst) if dst else None))
    except Exception as exc:  # MLflow raises MlflowException, OSError or HTTP errors here
        raise WindpipeError(f"Cannot fetch the entity at {uri} ({str(exc).splitlines()[0][:200]}).",
                            "check the URI (e.g. runs:/<run_id>/entities/processed.parquet)") from None


def _run_artifact_source(uri: str):  # noqa: ANN202 - an mlflow DatasetSource
    """An MLflow dataset source for a run artifact (MLflow resolves no `runs:/` sources itself)."""
    from mlflow.data.dataset_source import DatasetSource

    class RunArtifactDatasetSource(DatasetSource):
        def __init__(self, uri: str) -> None:
            self.uri = uri

        @staticmethod
        def _get_source_type() -> str:
            return "mlflow_run_artifact"

        def load(self, dst_path: str | None = None) -> str:
            import mlflow

            return mlflow.artifacts.download_artifacts(artifact_uri=self.uri, dst_path=dst_path)

        @staticmethod
        def _can_resolve(raw_source: object) -> bool:
            return isinstance(raw_source, str) and raw_source.startswith(("runs:/", "mlflow-artifacts:/"))

        @classmethod
        def _resolve(cls, raw_source: str) -> RunArtifactDatasetSource:
            return cls(raw_source)

        def to_dict(self) -> dict[str, str]:
            return {"uri": self.uri}

        @classmethod
        def from_dict(cls, source_dict: dict[str, str]) -> RunArtifactDatasetSource:
            return cls(source_dict["uri"])

    return RunArtifactDatasetSource(uri)


def dataset(entity: Entity, df: pd.DataFrame, uri: str):  # noqa: ANN201 - an mlflow dataset
    """An MLflow dataset for an entity frame read from or written to `uri`."""
    import mlflow
    from mlflow.models import infer_signature

    source = _run_artifact_source(uri) if uri.startswith(("runs:/", "mlflow-artifacts:/")) else uri
    ds = mlflow.data.from_pandas(df, source=source, name=entity.name)
    # MLflow infers the schema from every row (~1 s for 35k rows); the columns are typed, so a
    # sample gives the same schema (set on the dataset's cached property)
    ds.__dict__["schema"] = infer_signature(df.head(100)).inputs
    return ds


def log_entity(entity: Entity, df: pd.DataFrame, path: Path, context: str) -> str:
    """Log the file under `entities/` and as an MLflow dataset; return its artifact URI."""
    import mlflow

    mlflow.log_artifact(str(path), artifact_path="entities")
    run = mlflow.active_run()
    uri = f"runs:/{run.info.run_id}/entities/{path.name}"
    mlflow.log_input(dataset(entity, df, uri), context=context)
    return uri


def log_entity_input(entity: Entity, df: pd.DataFrame, uri: str, context: str = "training") -> None:
    """Record an entity a run read as an MLflow dataset input (lineage in the UI)."""
    import mlflow

    mlflow.log_input(dataset(entity, df, uri), context=context)


def data_date(df: pd.DataFrame) -> str:
    """The last timestamp of the data as YYYYMMDD (names model instances)."""
    return pd.Timestamp(df[TIMESTAMP].max()).strftime("%Y%m%d")

"""Entities on disk and in MLflow: parquet files written atomically, read and validated, resolved
from any URI MLflow can fetch, and logged as run artifacts and MLflow datasets (lineage in the UI).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from windpipe.entities.schema import Entity
from windpipe.errors import WindpipeError, first_line
from windpipe.fileio import atomic_path
from windpipe.names import is_path

if TYPE_CHECKING:
    from mlflow.data.dataset_source import DatasetSource
    from mlflow.data.pandas_dataset import PandasDataset


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


def resolve_uri(uri: str, dst: Path | None = None, tracking_uri: str | None = None) -> Path:
    """A local path for `uri`: a path as is, or any URI MLflow can download (runs:/, mlflow-artifacts:/ ...),
    from `tracking_uri` (default: MLflow's, which a step's process sets)."""
    if is_path(uri):
        return Path(uri)
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst) if dst else None,
                                                        tracking_uri=tracking_uri))
    except Exception as exc:  # MLflow raises MlflowException, OSError or HTTP errors here
        raise WindpipeError(f"Cannot fetch the entity at {uri} ({first_line(exc)}).",
                            "check the URI (e.g. runs:/<run_id>/entities/processed.parquet)") from None


def _run_artifact_source(uri: str) -> DatasetSource:
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


def dataset(entity: Entity, df: pd.DataFrame, uri: str) -> PandasDataset:
    """An MLflow dataset for an entity frame read from or written to `uri`."""
    import mlflow
    from mlflow.models import infer_signature

    source = _run_artifact_source(uri) if uri.startswith(("runs:/", "mlflow-artifacts:/")) else uri
    ds = mlflow.data.from_pandas(df, source=source, name=entity.name, digest=typed_digest(df))
    # MLflow infers the schema from every row (~1 s for 35k rows); the columns are typed, so a
    # sample gives the same schema (set on the dataset's cached property)
    ds.__dict__["schema"] = infer_signature(df.head(100)).inputs
    return ds


DIGEST_ROWS = 10_000  # (mlflow.data.digest_utils.MAX_ROWS)


def typed_digest(df: pd.DataFrame) -> str | None:
    """The digest MLflow gives a dataset of `df` (mlflow.data.digest_utils.compute_pandas_digest), for a frame of
    typed columns only; None (MLflow computes it) for any other. MLflow first asks every cell of the whole frame
    for its type, to find columns of strings (0.06-0.1 s for 35k rows, in each step that logs its input); a column
    of a typed dtype holds none, so the digest is the md5 of the numeric columns' row hashes over the first
    10,000 rows, the row count and the column names, as MLflow's. tests/test_entities.py compares the two."""
    import hashlib

    import numpy as np

    if not len(df) or any(pd.api.types.is_object_dtype(d) or pd.api.types.is_string_dtype(d) for d in df.dtypes):
        return None
    head = df.head(DIGEST_ROWS)
    columns = head.columns[:0].union(head.select_dtypes(include=[np.number]).columns)  # (MLflow's order)
    md5 = hashlib.md5(usedforsecurity=False)
    for element in [pd.util.hash_pandas_object(head[columns]).values, np.int64(len(df)),
                    *(str(c).encode() for c in df.columns)]:
        md5.update(element)
    return md5.hexdigest()[:8]


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

"""Entity schemas: the tables steps hand to each other, their columns and what a valid one is (pure).

An entity is validated when written and when read; `windpipe.entities.store` does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from windpipe.errors import WindpipeError
from windpipe.names import FEATURES, MODEL_ENTITY, PRED_COLUMNS, TARGETS, TIMESTAMP, alias_uri
from windpipe.names import PRODUCTION as PRODUCTION_ALIAS

if TYPE_CHECKING:  # (pandas is imported where frames are checked: the step graph, which Airflow's own
    import pandas as pd  # environment builds its DAGs from, needs none of it)


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
        import pandas as pd

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

def model_entity(name: str, description: str, external: bool = False) -> Entity:
    """An entity whose value is an MLflow model URI (no table, no file)."""
    return Entity(name=name, columns={}, filename="", index=None, kind="model", external=external,
                  description=description)


MODEL = model_entity(MODEL_ENTITY, "an MLflow model (models:/...) mapping the features to the targets")
CANDIDATE = model_entity("candidate", "the best model of a pipeline run (models:/m-...), the challenger the "
                                      "promotion gate judges")
PRODUCTION = model_entity(PRODUCTION_ALIAS, f"the registered model's {PRODUCTION_ALIAS} version "
                                            f"({alias_uri('<model>')}): written by the promotion gate, read from "
                                            "the registry by the prediction pipeline", external=True)

PREDICTIONS = Entity(
    name="predictions",
    columns={"row_no": "int", TIMESTAMP: "datetime", **{c: "float" for c in PRED_COLUMNS}},
    filename="predictions.parquet",
    optional=(TIMESTAMP,),
    description="predicted solar and wind generation (GW) per row of the features, plus model_name, "
                "model_version and batch_id",
)

# every entity a step interface (projects/*/step.yaml) may name without declaring its schema
ENTITIES: dict[str, Entity] = {e.name: e for e in (RAW, PROCESSED, FEATURES_ENTITY, MODEL, CANDIDATE, PRODUCTION,
                                                    PREDICTIONS)}


def data_date(df: pd.DataFrame) -> str:
    """The last timestamp of the data as YYYYMMDD (names model instances)."""
    import pandas as pd

    return pd.Timestamp(df[TIMESTAMP].max()).strftime("%Y%m%d")

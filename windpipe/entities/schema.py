"""Entity schemas: the tables steps hand to each other, their columns and what a valid one is (pure).

An entity is validated when written and when read; `windpipe.entities.store` does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from windpipe.errors import WindpipeError
from windpipe.names import FEATURES, MODEL_ENTITY, PRED_COLUMNS, TARGETS, TIMESTAMP, alias_uri
from windpipe.names import PRODUCTION as PRODUCTION_ALIAS

if TYPE_CHECKING:  # (numpy and pandas are imported where frames are checked: the step graph, which
    import numpy as np  # Airflow's own environment builds its DAGs from, needs none of them)
    import pandas as pd

# What is physically possible, generously: wider than any record (wind gusts 113 m/s, -89..57 °C,
# the solar constant 1361 W/m², the largest national fleets far below 1000 GW). A value outside is an
# error in the data (a unit mix-up, 1e308, a sentinel), not weather.
RANGES: dict[str, tuple[float, float]] = {
    "windspeed": (0.0, 120.0),
    "temperature": (-100.0, 70.0),
    "rad_horizontal": (0.0, 1500.0),
    "rad_diffuse": (0.0, 1500.0),
    **{t: (0.0, 1000.0) for t in TARGETS},
}


def _rows(mask: np.ndarray, limit: int = 10) -> str:
    import numpy as np

    rows = np.flatnonzero(mask)
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return shown + (", ..." if len(rows) > limit else "")


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
    # column -> (low, high): the numbers it may hold (inclusive); every number must be finite anyway
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    # the index must increase row by row (a time series); False: unique is enough (rows to score)
    ordered: bool = True

    def validate(self, df: pd.DataFrame, where: str = "") -> pd.DataFrame:
        """Check the frame against the declared schema at a step boundary; return only the declared columns.

        Columns present (optional ones may be missing), at least one row, dtypes, every number finite and
        in its declared range, and the index (utc_timestamp) without gaps (NaT), repeats or disorder.
        """
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
        for col, kind in self.columns.items():
            if col in df.columns and kind != "datetime":
                self.check_numbers(df[col], where)
        if self.index in df.columns:
            self.check_index(df[self.index], where)
        return df[[c for c in self.columns if c in df.columns]]

    def out_of_range(self, col: str, values: np.ndarray) -> np.ndarray:
        """Mask of the finite values of `col` outside its declared range (all False without one)."""
        import numpy as np

        low, high = self.ranges.get(col, (-np.inf, np.inf))
        with np.errstate(invalid="ignore"):
            return np.isfinite(values) & ((values < low) | (values > high))

    def range_text(self, col: str) -> str:
        low, high = self.ranges[col]
        return f"[{low:g}, {high:g}]"

    def check_numbers(self, series: pd.Series, where: str = "") -> None:
        """Every value finite (no NaN, no inf) and inside the column's declared range."""
        import numpy as np

        col = str(series.name)
        values = series.to_numpy(dtype="float64", na_value=np.nan)
        bad = ~np.isfinite(values)
        if bad.any():
            raise WindpipeError(
                f"Column {col!r} of the {self.name} entity{where} has {int(bad.sum())} missing (NaN) or infinite "
                f"value(s) (rows, counted from 0: {_rows(bad)}).",
                f"remove or fill those rows before writing the {self.name} entity")
        outside = self.out_of_range(col, values)
        if outside.any():
            first = int(np.flatnonzero(outside)[0])
            raise WindpipeError(
                f"Column {col!r} of the {self.name} entity{where} has {int(outside.sum())} value(s) outside its "
                f"declared range {self.range_text(col)} (e.g. {values[first]:g} in row {first}).",
                f"check the units and the source of {col}; remove those rows")

    def check_index(self, stamps: pd.Series, where: str = "") -> None:
        """No missing timestamps (NaT), none repeated, and (ordered entities) increasing row by row."""
        import numpy as np
        import pandas as pd

        col = str(stamps.name)
        missing = stamps.isna().to_numpy()
        if missing.any():
            raise WindpipeError(f"Column {col!r} of the {self.name} entity{where} has {int(missing.sum())} missing "
                                f"timestamp(s) (NaT; rows, counted from 0: {_rows(missing)}).",
                                f"give every row a {col}, or remove the rows without one")
        repeated = stamps.duplicated().to_numpy()
        if repeated.any():
            first = int(np.flatnonzero(repeated)[0])
            raise WindpipeError(f"Column {col!r} of the {self.name} entity{where} repeats {int(repeated.sum())} "
                                f"timestamp(s) (e.g. {stamps.iloc[first]} in row {first}).",
                                "keep one row per timestamp (pandas: df.drop_duplicates(subset=[...], keep='first'))")
        if self.ordered and not stamps.is_monotonic_increasing:
            row = int(np.flatnonzero((stamps.diff() < pd.Timedelta(0)).to_numpy())[0])
            raise WindpipeError(f"Column {col!r} of the {self.name} entity{where} is not sorted by time (row {row}: "
                                f"{stamps.iloc[row]} after {stamps.iloc[row - 1]}).",
                                f"sort the rows by {col} (pandas: df.sort_values({col!r}))")

    def schema_dict(self) -> dict[str, str]:
        return dict(self.columns)


PROCESSED = Entity(
    name="processed",
    columns={TIMESTAMP: "datetime", **{c: "float" for c in TARGETS}, **{c: "float" for c in FEATURES}},
    filename="processed.parquet",
    description="hourly German solar and wind generation (GW) with the weather that drives it",
    ranges=RANGES,
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
    ranges={f: RANGES[f] for f in FEATURES},
    ordered=False,
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
    ordered=False,
)

# every entity a step interface (projects/*/step.yaml) may name without declaring its schema
ENTITIES: dict[str, Entity] = {e.name: e for e in (RAW, PROCESSED, FEATURES_ENTITY, MODEL, CANDIDATE, PRODUCTION,
                                                    PREDICTIONS)}


def data_date(df: pd.DataFrame) -> str:
    """The last timestamp of the data as YYYYMMDD (names model instances)."""
    import pandas as pd

    return pd.Timestamp(df[TIMESTAMP].max()).strftime("%Y%m%d")

"""Checking a batch of features against the model's signature before anything is scored (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from windpipe.entities.schema import FEATURES_ENTITY
from windpipe.errors import WindpipeError, first_line
from windpipe.names import FEATURES, TIMESTAMP

_NUMERIC = {"double", "float", "long", "integer"}


@dataclass
class ValidInput:
    """The part of an input file the model scores."""

    features: pd.DataFrame  # the signature's columns a user gives (FEATURES), in order, float64, no NaN
    timestamps: pd.Series | None
    row_numbers: np.ndarray  # input row number (from 0) of each scored row
    extra_columns: list[str] = field(default_factory=list)
    dropped_rows: list[int] = field(default_factory=list)
    derived_columns: list[str] = field(default_factory=list)  # model inputs derived from the timestamps


def read_input(path: Path | str) -> pd.DataFrame:
    """Read the input parquet, with a clear error for a missing, empty or unreadable file."""
    path = Path(path)
    if not path.exists():
        raise WindpipeError(f"Input file {path} does not exist.", "pass an existing parquet file with --input")
    if path.is_dir():
        raise WindpipeError(f"Input {path} is a folder, not a file.", "pass a parquet file with --input")
    if path.stat().st_size == 0:
        raise WindpipeError(f"Input file {path} is empty (0 bytes).",
                            "write the features into it as parquet (pandas: df.to_parquet(path))")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises many types for a bad file
        raise WindpipeError(f"Cannot read {path} as parquet ({first_line(exc)}).",
                            "pass a parquet file (pandas: df.to_parquet(path))") from None


def row_list(rows: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return shown + (", ..." if len(rows) > limit else "")


def validate_input(df: pd.DataFrame, columns: dict[str, str] | None = None, drop_invalid: bool = False,
                   where: str = "the input") -> ValidInput:
    """Check `df` against the signature `columns` (name -> MLflow type); return what the model scores.

    Refuses: no rows, missing columns, non-numeric columns, rows with NaN/inf or values outside the features'
    declared ranges (unless `drop_invalid`: then they are skipped), and timestamps that are numbers, missing
    (NaT) or repeated. A model that follows the trend reads columns derived from utc_timestamp
    (windpipe.training.features): for it utc_timestamp is required instead of those columns, and a
    row without a time counts as invalid. Row numbers count from 0 in the input's order.
    """
    from windpipe.training.features import needs_time

    columns = columns or {f: "double" for f in FEATURES}
    derived = needs_time(columns)
    given = {c: t for c, t in columns.items() if c not in derived}
    if df.empty:
        raise WindpipeError(f"{where} has no rows.", "pass a file with at least one row of features")
    missing = [c for c in given if c not in df.columns]
    if missing:
        raise WindpipeError(
            f"{where} lacks column(s) {', '.join(missing)} that the model's signature requires; "
            f"it has {', '.join(map(str, df.columns))}.",
            "add the column(s); the model reads " + ", ".join(f"{c} ({t})" for c, t in given.items()))
    if derived and TIMESTAMP not in df.columns:
        raise WindpipeError(
            f"{where} has no {TIMESTAMP} column, but the model follows the trend: it reads {', '.join(derived)}, "
            f"which windpipe derives from {TIMESTAMP}.",
            f"add {TIMESTAMP} (the UTC hour each row is for, e.g. 2016-12-01T13:00:00Z)")
    for col, kind in given.items():
        s = df[col]
        if kind in _NUMERIC and (not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
            bad = pd.to_numeric(s, errors="coerce").isna() & s.notna()
            example = f" (e.g. {s[bad].iloc[0]!r} in row {int(np.flatnonzero(bad.to_numpy())[0])})" if bad.any() else ""
            raise WindpipeError(f"Column {col!r} of {where} has dtype {s.dtype}{example}; the model wants {kind} "
                                "numbers.", f"convert {col} to numbers (pandas: pd.to_numeric(df[{col!r}]))")
    extra = [str(c) for c in df.columns if c not in given and c != TIMESTAMP]
    feats = pd.DataFrame({c: df[c].to_numpy(dtype="float64") for c in given})
    ts = _timestamps(df[TIMESTAMP], where).reset_index(drop=True) if TIMESTAMP in df.columns else None
    nonfinite = ~np.isfinite(feats.to_numpy()).all(axis=1)
    if derived:
        nonfinite |= ts.isna().to_numpy()
    # a finite number no weather has (1e308, a sentinel, a unit mix-up): the features' declared ranges
    impossible = {c: FEATURES_ENTITY.out_of_range(c, feats[c].to_numpy()) for c in given}
    outside = np.logical_or.reduce(list(impossible.values())) if impossible else np.zeros(len(df), dtype=bool)
    bad_rows = np.flatnonzero(nonfinite | outside)
    row_numbers = np.arange(len(df))
    what = f"missing (NaN) or infinite values in the model's columns{' or no ' + TIMESTAMP if derived else ''}"
    if len(bad_rows) and not drop_invalid:
        raise _bad_values(feats, nonfinite, impossible, where, what, ", or pass --drop-invalid to skip them")
    if len(bad_rows):
        keep = np.ones(len(df), dtype=bool)
        keep[bad_rows] = False
        feats = feats[keep].reset_index(drop=True)
        row_numbers = row_numbers[keep]
        if feats.empty:
            raise WindpipeError(f"Every row of {where} has missing or impossible values; nothing is left to score.",
                                "fill the missing values")
    timestamps = None
    if ts is not None:
        timestamps = ts.iloc[row_numbers].reset_index(drop=True)
        FEATURES_ENTITY.check_index(timestamps, f" of {where}")
    return ValidInput(feats, timestamps, row_numbers, extra, bad_rows.tolist() if drop_invalid else [], derived)


def _bad_values(feats: pd.DataFrame, nonfinite: np.ndarray, impossible: dict[str, np.ndarray], where: str,
                what: str, skip: str = "") -> WindpipeError:
    """The error for rows with missing or infinite values (first), or values outside the declared ranges."""
    if nonfinite.any():
        rows = np.flatnonzero(nonfinite)
        return WindpipeError(f"{where} has {len(rows)} row(s) with {what} (rows, counted from 0: {row_list(rows)}).",
                             f"fill or remove those rows{skip}")
    outside = np.logical_or.reduce(list(impossible.values()))
    col = next(c for c, mask in impossible.items() if mask.any())
    first = int(np.flatnonzero(impossible[col])[0])
    return WindpipeError(
        f"{where} has {int(outside.sum())} row(s) with values no weather has; column {col!r} is outside its "
        f"declared range {FEATURES_ENTITY.range_text(col)} (e.g. {feats[col].iloc[first]:g} in row {first}).",
        f"check the units and the source of those values{skip.replace(' them', ' those rows')}")


def check_values(df: pd.DataFrame, where: str = "the request") -> None:
    """Refuse `df` when a weather column (those of FEATURES it has, as numbers) is missing, infinite or outside its
    declared range in any row: the checks of validate_input, for the model server's requests (which carry the
    model's own columns, so the columns themselves are MLflow's signature check)."""
    cols = [c for c in FEATURES if c in df.columns and pd.api.types.is_numeric_dtype(df[c])
            and not pd.api.types.is_bool_dtype(df[c])]
    if not cols or df.empty:
        return
    feats = pd.DataFrame({c: df[c].to_numpy(dtype="float64") for c in cols})
    nonfinite = ~np.isfinite(feats.to_numpy()).all(axis=1)
    impossible = {c: FEATURES_ENTITY.out_of_range(c, feats[c].to_numpy()) for c in cols}
    if nonfinite.any() or any(mask.any() for mask in impossible.values()):
        raise _bad_values(feats, nonfinite, impossible, where, "missing (NaN) or infinite weather values")


def _timestamps(ts: pd.Series, where: str) -> pd.Series:
    """utc_timestamp as UTC datetimes: datetimes or ISO strings; numbers are refused (nanoseconds since 1970?)."""
    if isinstance(ts.dtype, pd.DatetimeTZDtype):
        return ts.dt.tz_convert("UTC")
    if pd.api.types.is_numeric_dtype(ts) or pd.api.types.is_bool_dtype(ts):
        raise WindpipeError(f"Column {TIMESTAMP} of {where} is a number column ({ts.dtype}), not timestamps: pandas "
                            "would read the numbers as nanoseconds since 1970.",
                            f"write {TIMESTAMP} as UTC datetimes (pandas: pd.to_datetime(df[{TIMESTAMP!r}], "
                            "unit='s', utc=True)), or leave it out")
    try:
        return pd.to_datetime(ts, utc=True)
    except (ValueError, TypeError) as exc:
        raise WindpipeError(f"Column {TIMESTAMP} of {where} is not a timestamp ({exc}).",
                            f"write {TIMESTAMP} as UTC datetimes, or leave it out") from None

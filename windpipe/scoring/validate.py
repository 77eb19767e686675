"""Checking a batch of features against the model's signature before anything is scored (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from windpipe.entities.schema import FEATURES_ENTITY
from windpipe.errors import WindpipeError, first_line
from windpipe.names import FEATURES, TIMESTAMP
from windpipe.training.inputs import Times, row_list

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


def validate_input(df: pd.DataFrame, columns: dict[str, str] | None = None, drop_invalid: bool = False,
                   where: str = "the input") -> ValidInput:
    """Check `df` against the signature `columns` (name -> MLflow type); return what the model scores.

    Refuses: no rows, missing columns, non-numeric columns, rows with NaN/inf or values outside the features'
    declared ranges (unless `drop_invalid`: then they are skipped), and timestamps that are numbers, not times
    (the rows named), missing (NaT) or repeated. utc_timestamp may be a column or the DatetimeIndex. A model
    that follows the trend reads its time (natural inputs), or columns windpipe derives from it (models logged
    before, windpipe.training.features): for it utc_timestamp is required, and a row without a time counts as
    invalid. Row numbers count from 0 in the input's order.
    """
    from windpipe.training.features import needs_time, reads_time

    columns = columns or {f: "double" for f in FEATURES}
    derived = needs_time(columns)
    timed = reads_time(columns)
    given = {c: t for c, t in columns.items() if c not in derived and c != TIMESTAMP}
    if df.empty:
        raise WindpipeError(f"{where} has no rows.", "pass a file with at least one row of features")
    if TIMESTAMP not in df.columns and (df.index.name == TIMESTAMP or isinstance(df.index, pd.DatetimeIndex)):
        df = df.rename_axis(TIMESTAMP).reset_index()  # the usual shape of a time series: the time is the index
    missing = [c for c in given if c not in df.columns]
    if missing:
        raise WindpipeError(
            f"{where} lacks column(s) {', '.join(missing)} that the model's signature requires; "
            f"it has {', '.join(map(str, df.columns))}.",
            "add the column(s); the model reads " + ", ".join(f"{c} ({t})" for c, t in given.items()))
    if timed and TIMESTAMP not in df.columns:
        reads = ", ".join(derived) if derived else "hour and day-of-year cycles and the trend"
        raise WindpipeError(
            f"{where} has no {TIMESTAMP} column (and no DatetimeIndex), but the model follows the trend: it reads "
            f"{reads}, derived from {TIMESTAMP}.",
            f"add {TIMESTAMP} (the UTC hour each row is for, e.g. 2016-12-01T13:00:00Z), as a column or the index")
    for col, kind in given.items():
        s = df[col]
        if kind in _NUMERIC and (not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)):
            bad = pd.to_numeric(s, errors="coerce").isna() & s.notna()
            example = f" (e.g. {s[bad].iloc[0]!r} in row {int(np.flatnonzero(bad.to_numpy())[0])})" if bad.any() else ""
            raise WindpipeError(f"Column {col!r} of {where} has dtype {s.dtype}{example}; the model wants {kind} "
                                "numbers.", f"convert {col} to numbers (pandas: pd.to_numeric(df[{col!r}]))")
    extra = [str(c) for c in df.columns if c not in given and c != TIMESTAMP]
    feats = pd.DataFrame({c: df[c].to_numpy(dtype="float64") for c in given})
    ts = _timestamps(df[TIMESTAMP], where) if TIMESTAMP in df.columns else None
    nonfinite = ~np.isfinite(feats.to_numpy()).all(axis=1)
    if timed:
        nonfinite |= ts.isna().to_numpy()
    # a finite number no weather has (1e308, a sentinel, a unit mix-up): the features' declared ranges
    impossible = {c: FEATURES_ENTITY.out_of_range(c, feats[c].to_numpy()) for c in given}
    outside = np.logical_or.reduce(list(impossible.values())) if impossible else np.zeros(len(df), dtype=bool)
    bad_rows = np.flatnonzero(nonfinite | outside)
    row_numbers = np.arange(len(df))
    what = f"missing (NaN) or infinite values in the model's columns{' or no ' + TIMESTAMP if timed else ''}"
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
        _check_repeats(timestamps, row_numbers, where)
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
    """utc_timestamp as UTC datetimes (NaT where missing): datetimes or ISO strings; numbers and values that are not
    times are refused, naming the rows."""
    times = Times(ts)
    if times.numbers:
        raise WindpipeError(f"Column {TIMESTAMP} of {where} is a number column ({ts.dtype}), not timestamps: pandas "
                            "would read the numbers as nanoseconds since 1970.",
                            f"write {TIMESTAMP} as UTC datetimes (pandas: pd.to_datetime(df[{TIMESTAMP!r}], "
                            "unit='s', utc=True)), or leave it out")
    if len(times.unparseable):
        raise WindpipeError(f"Column {TIMESTAMP} of {where} is not a time in {len(times.unparseable)} row(s) (rows, "
                            f"counted from 0: {row_list(times.unparseable)}; e.g. "
                            f"{ts.iloc[times.unparseable[0]]!r}).",
                            f"write {TIMESTAMP} as UTC datetimes (e.g. 2016-12-01T13:00:00Z), or leave it out")
    return pd.Series(times.utc)


def _check_repeats(timestamps: pd.Series, row_numbers: np.ndarray, where: str) -> None:
    repeated = np.flatnonzero(timestamps.duplicated().to_numpy())
    if len(repeated):
        raise WindpipeError(f"Column {TIMESTAMP} of {where} repeats an earlier row's time in {len(repeated)} row(s) "
                            f"(rows, counted from 0: {row_list(row_numbers[repeated])}; e.g. "
                            f"{timestamps.iloc[repeated[0]]}).",
                            "keep one row per hour (pandas: df.drop_duplicates(subset=['utc_timestamp']))")

"""Checking a batch of features against the model's signature before anything is scored (pure).

An input file is read in record batches (`InputFile`, pyarrow) and each part is checked as it comes
(`InputCheck`): rows are named by their place in the whole file, a time that repeats one of an earlier
part is refused, and what only the whole file can say (no rows, nothing left to score) is said at the
end. `validate_input` checks one frame, whole or a part.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from windpipe.entities.schema import FEATURES_ENTITY
from windpipe.errors import WindpipeError, first_line
from windpipe.names import FEATURES, TIMESTAMP
from windpipe.training.inputs import ROWS_SHOWN, Times, row_list

if TYPE_CHECKING:
    import pyarrow as pa

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
    """Read the whole input parquet, with a clear error for a missing, empty, damaged or unreadable file."""
    with InputFile(path):
        pass
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # a damaged page
        raise WindpipeError(f"Cannot read {path} ({first_line(exc)}).", _DAMAGED_FIX) from None


_PARQUET_FIX = "pass a parquet file (pandas: df.to_parquet(path))"
_DAMAGED_FIX = "the file is damaged or was cut short: write it again (pandas: df.to_parquet(path))"


class InputFile:
    """A parquet input read in record batches: its rows counted and its schema checked before any row is read.

    Refused with a clear message: a missing, empty or folder path, bytes that are not parquet or a file cut
    short (no footer), row groups whose columns disagree with the file's schema, and rows that cannot be
    decoded (named by the rows of the part that failed).
    """

    def __init__(self, path: Path | str) -> None:
        import pyarrow.parquet as pq

        self.path = path = Path(path)
        if not path.exists():
            raise WindpipeError(f"Input file {path} does not exist.", "pass an existing parquet file with --input")
        if path.is_dir():
            raise WindpipeError(f"Input {path} is a folder, not a file.", "pass a parquet file with --input")
        if path.stat().st_size == 0:
            raise WindpipeError(f"Input file {path} is empty (0 bytes).",
                                "write the features into it as parquet (pandas: df.to_parquet(path))")
        try:
            # (pre_buffer, pyarrow's default, kept every row group's column chunks read so far: 28 MB more each 2M
            # rows of 10M; without it the reader's memory is flat, 18 MB at most, and reading no slower. Inputs are
            # local files here: an S3 input is copied first, where pre-buffering would pay off.)
            self._file = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
            self.schema: pa.Schema = self._file.schema_arrow
        except Exception as exc:  # pyarrow raises many types for a bad file
            raise WindpipeError(f"Cannot read {path} as parquet ({first_line(exc)}).", _PARQUET_FIX) from None
        self.rows = self._file.metadata.num_rows
        self._check_row_groups()

    def _check_row_groups(self) -> None:
        """Each row group's columns as the footer's schema declares them (a writer cannot mix them; a file
        spliced from two files, or damaged, can: its values would be decoded as another type)."""
        meta = self._file.metadata
        declared = [meta.schema.column(i).physical_type for i in range(meta.num_columns)]
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            have = [group.column(i).physical_type for i in range(group.num_columns)]
            if have != declared:
                bad = next((i for i, (a, b) in enumerate(zip(have, declared, strict=False)) if a != b),
                           min(len(have), len(declared)))
                what = (f"column {meta.schema.column(bad).name!r} is {have[bad]} there, {declared[bad]} in the file's "
                        "schema" if bad < min(len(have), len(declared)) else
                        f"it has {len(have)} columns, the file's schema {len(declared)}")
                raise WindpipeError(f"Cannot read {self.path}: its schema changes in row group {g} ({what}).",
                                    "write the file again in one go (pandas: df.to_parquet(path)), or as separate "
                                    "files")

    def parts(self, rows: int) -> Iterator[tuple[int, pd.DataFrame]]:
        """(the first row's number, the rows as a frame) for each record batch of at most `rows` rows."""
        first = 0
        batches = self._file.iter_batches(batch_size=rows)
        while True:
            try:
                batch = next(batches, None)
                if batch is None:
                    return
                frame = batch.to_pandas()
            except Exception as exc:  # a damaged page, a file truncated after its footer was read
                raise WindpipeError(f"Cannot read {self.path} from row {first:,} on ({first_line(exc)}).",
                                    _DAMAGED_FIX) from None
            yield first, frame
            first += len(frame)

    @property
    def time_column(self) -> str | None:
        """Where the file keeps utc_timestamp: the column, else a DatetimeIndex pandas stored; None without one."""
        import pyarrow as pa

        if TIMESTAMP in self.schema.names:
            return TIMESTAMP
        index = [c for c in (self.schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)]
        return next((c for c in index if pa.types.is_timestamp(self.schema.field(c).type)), None)

    def time_window(self) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        """The first and the last time of the file (UTC; naive times read as UTC), None without times.

        From the row groups' statistics when they have them (nothing is read), else from the time column
        alone. Rows that are later refused or dropped count too: the caller checks the window of the rows
        it scored."""
        import pyarrow as pa

        column = self.time_column
        if column is None:
            return None
        stats = self._statistics(column) if pa.types.is_timestamp(self.schema.field(column).type) else None
        if stats is not None:
            return stats
        low = high = None
        for batch in self._file.iter_batches(batch_size=1 << 20, columns=[column]):
            times = Times(batch.column(0).to_pandas()).utc.dropna()
            if len(times):
                low = times.min() if low is None else min(low, times.min())
                high = times.max() if high is None else max(high, times.max())
        return None if low is None else (low, high)

    def _statistics(self, column: str) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        meta = self._file.metadata
        index = self.schema.get_field_index(column)
        low = high = None
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            if group.num_rows == 0:
                continue
            stats = group.column(index).statistics
            if stats is None or not stats.has_min_max:
                return None
            lo, hi = _utc(stats.min), _utc(stats.max)
            low = lo if low is None else min(low, lo)
            high = hi if high is None else max(high, hi)
        return None if low is None else (low, high)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> InputFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _utc(value: object) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def validate_input(df: pd.DataFrame, columns: dict[str, str] | None = None, drop_invalid: bool = False,
                   where: str = "the input", first_row: int = 0, part: bool = False) -> ValidInput:
    """Check `df` against the signature `columns` (name -> MLflow type); return what the model scores.

    Refuses: no rows, missing columns, non-numeric columns, rows with NaN/inf or values outside the features'
    declared ranges (unless `drop_invalid`: then they are skipped), and timestamps that are numbers, not times
    (the rows named), missing (NaT) or repeated. utc_timestamp may be a column or the DatetimeIndex. A model
    that follows the trend reads its time (natural inputs), or columns windpipe derives from it (models logged
    before, windpipe.training.features): for it utc_timestamp is required, and a row without a time counts as
    invalid. Row numbers count from 0 in the input's order; `df` may be a `part` of the input that starts at
    row `first_row` (InputCheck): then an empty part, or one whose every row is dropped, is the caller's to judge.
    """
    from windpipe.training.features import needs_time, reads_time

    columns = columns or {f: "double" for f in FEATURES}
    derived = needs_time(columns)
    timed = reads_time(columns)
    given = {c: t for c, t in columns.items() if c not in derived and c != TIMESTAMP}
    if df.empty and not part:
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
            example = (f" (e.g. {s[bad].iloc[0]!r} in row {first_row + int(np.flatnonzero(bad.to_numpy())[0])})"
                       if bad.any() else "")
            raise WindpipeError(f"Column {col!r} of {where} has dtype {s.dtype}{example}; the model wants {kind} "
                                "numbers.", f"convert {col} to numbers (pandas: pd.to_numeric(df[{col!r}]))")
    extra = [str(c) for c in df.columns if c not in given and c != TIMESTAMP]
    feats = pd.DataFrame({c: df[c].to_numpy(dtype="float64") for c in given})
    ts = _timestamps(df[TIMESTAMP], where, first_row) if TIMESTAMP in df.columns else None
    nonfinite = ~np.isfinite(feats.to_numpy()).all(axis=1)
    if timed:
        nonfinite |= ts.isna().to_numpy()
    # a finite number no weather has (1e308, a sentinel, a unit mix-up): the features' declared ranges
    impossible = {c: FEATURES_ENTITY.out_of_range(c, feats[c].to_numpy()) for c in given}
    outside = np.logical_or.reduce(list(impossible.values())) if impossible else np.zeros(len(df), dtype=bool)
    bad_rows = np.flatnonzero(nonfinite | outside)
    row_numbers = np.arange(first_row, first_row + len(df))
    what = f"missing (NaN) or infinite values in the model's columns{' or no ' + TIMESTAMP if timed else ''}"
    if len(bad_rows) and not drop_invalid:
        raise _bad_values(feats, nonfinite, impossible, where, what, ", or pass --drop-invalid to skip them",
                          first_row)
    if len(bad_rows):
        keep = np.ones(len(df), dtype=bool)
        keep[bad_rows] = False
        feats = feats[keep].reset_index(drop=True)
        row_numbers = row_numbers[keep]
        if feats.empty and not part:
            raise WindpipeError(f"Every row of {where} has missing or impossible values; nothing is left to score.",
                                "fill the missing values")
    timestamps = None
    if ts is not None:
        timestamps = ts.iloc[row_numbers - first_row].reset_index(drop=True)
        _check_repeats(timestamps, row_numbers, where)
        FEATURES_ENTITY.check_index(timestamps, f" of {where}")
    dropped = (bad_rows + first_row).tolist() if drop_invalid else []
    return ValidInput(feats, timestamps, row_numbers, extra, dropped, derived)


def _bad_values(feats: pd.DataFrame, nonfinite: np.ndarray, impossible: dict[str, np.ndarray], where: str,
                what: str, skip: str = "", first_row: int = 0) -> WindpipeError:
    """The error for rows with missing or infinite values (first), or values outside the declared ranges."""
    if nonfinite.any():
        rows = np.flatnonzero(nonfinite)
        return WindpipeError(f"{where} has {len(rows)} row(s) with {what} (rows, counted from 0: "
                             f"{row_list(rows + first_row)}).", f"fill or remove those rows{skip}")
    outside = np.logical_or.reduce(list(impossible.values()))
    col = next(c for c, mask in impossible.items() if mask.any())
    first = int(np.flatnonzero(impossible[col])[0])
    return WindpipeError(
        f"{where} has {int(outside.sum())} row(s) with values no weather has; column {col!r} is outside its "
        f"declared range {FEATURES_ENTITY.range_text(col)} (e.g. {feats[col].iloc[first]:g} in row "
        f"{first_row + first}).",
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


class InputCheck:
    """`validate_input` over the parts of one input (record batches), in order, as if it were one frame.

    Rows are named by their place in the file; a time that repeats one of an earlier part's scored rows is
    refused (the times seen are kept as sorted runs: 8 bytes a row); `finish()` refuses a file without
    rows, or whose every row was dropped. Counts what was scored and dropped, and the scored rows' first and
    last time (the batch's season: windpipe.scoring.drift).
    """

    def __init__(self, columns: dict[str, str] | None, drop_invalid: bool, where: str, rows: int) -> None:
        self.columns, self.drop_invalid, self.where, self.rows = columns, drop_invalid, where, rows
        self.scored = 0
        self.dropped = 0
        self.dropped_head: list[int] = []  # the first dropped rows (for the message)
        self.extra_columns: list[str] = []
        self.window: tuple[pd.Timestamp, pd.Timestamp] | None = None
        self._seen = _SeenTimes()

    def part(self, frame: pd.DataFrame, first_row: int) -> ValidInput:
        """Check the rows `first_row ...` of the input (`frame`); return what the model scores of them."""
        last = first_row + len(frame) - 1
        where = self.where if len(frame) == self.rows else f"{self.where} (rows {first_row:,} to {last:,})"
        valid = validate_input(frame, self.columns, self.drop_invalid, where, first_row=first_row, part=True)
        if first_row == 0:
            self.extra_columns = valid.extra_columns
        if valid.timestamps is not None and len(valid.timestamps):
            ns = valid.timestamps.to_numpy(dtype="datetime64[ns]").astype("int64")  # (UTC, no NaT left)
            _check_repeats(valid.timestamps, valid.row_numbers, where, self._seen.repeats(ns))
            self._seen.add(ns)
            low, high = valid.timestamps.min(), valid.timestamps.max()
            self.window = (low, high) if self.window is None else (min(self.window[0], low),
                                                                   max(self.window[1], high))
        self.scored += len(valid.features)
        self.dropped += len(valid.dropped_rows)
        self.dropped_head += valid.dropped_rows[:ROWS_SHOWN + 1 - len(self.dropped_head)]
        return valid

    def finish(self) -> None:
        """After the last part: refuse a file without rows, or whose every row was dropped."""
        if self.rows == 0:
            raise WindpipeError(f"{self.where} has no rows.", "pass a file with at least one row of features")
        if self.scored == 0:
            raise WindpipeError(f"Every row of {self.where} has missing or impossible values; nothing is left to "
                                "score.", "fill the missing values")


class _SeenTimes:
    """The times of earlier parts: `repeats` asks which of a part's times are among them.

    Parts in time order (the usual file) are kept as arithmetic progressions (start, step, count): an hourly
    series of any length takes a few numbers, so memory stays flat (10M times as int64 took 80 MB, 200 MB at a
    merge). Other parts are kept as sorted runs of int64 nanoseconds; runs of similar length are merged (as a
    binary counter does), so a file of N such parts keeps O(log N) runs. Parts in time order are only compared
    with the last time."""

    def __init__(self) -> None:
        self._runs: list[np.ndarray] = []
        self._starts = self._steps = self._counts = np.empty(0, dtype="int64")  # progressions, ascending
        self._last: int | None = None

    def repeats(self, ns: np.ndarray) -> np.ndarray:
        hit = np.zeros(len(ns), dtype=bool)
        if self._last is None or ns.min() > self._last:
            return hit
        if len(self._starts):
            at = np.searchsorted(self._starts, ns, side="right") - 1  # the progression that may hold each time
            inside = at >= 0
            at = np.maximum(at, 0)
            offset = ns - self._starts[at]
            step = self._steps[at]
            hit |= inside & (offset % step == 0) & (offset // step < self._counts[at])
        for run in self._runs:
            at = np.minimum(np.searchsorted(run, ns), len(run) - 1)
            hit |= run[at] == ns
        return hit

    def add(self, ns: np.ndarray) -> None:
        ordered = np.sort(ns)
        in_order = self._last is None or ordered[0] > self._last
        self._last = int(ordered[-1]) if self._last is None else max(self._last, int(ordered[-1]))
        if in_order and self._add_progressions(ordered):
            return
        self._runs.append(ordered)
        while len(self._runs) > 1 and len(self._runs[-2]) <= 2 * len(self._runs[-1]):
            top = self._runs.pop()
            self._runs[-1] = np.sort(np.concatenate([self._runs[-1], top]), kind="stable")  # two sorted runs: O(n)

    def _add_progressions(self, ordered: np.ndarray) -> bool:
        """Keep `ordered` (after every time seen) as progressions; False when they would take more than the times."""
        gaps = np.diff(ordered)
        if (gaps <= 0).any():  # (a repeat within the part: refused or dropped before; kept as times)
            return False
        # a progression starts at 0 and wherever the gap changes; each ends where the next starts (shared point)
        starts = np.concatenate([[0], np.flatnonzero(gaps[1:] != gaps[:-1]) + 1])
        if 3 * len(starts) > len(ordered):
            return False
        ends = np.append(starts[1:], len(ordered) - 1)
        steps = gaps[starts] if len(gaps) else np.ones(1, dtype="int64")
        self._starts = np.concatenate([self._starts, ordered[starts]])
        self._steps = np.concatenate([self._steps, steps])
        self._counts = np.concatenate([self._counts, ends - starts + 1])
        return True


def _timestamps(ts: pd.Series, where: str, first_row: int = 0) -> pd.Series:
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
                            f"counted from 0: {row_list(times.unparseable + first_row)}; e.g. "
                            f"{ts.iloc[times.unparseable[0]]!r}).",
                            f"write {TIMESTAMP} as UTC datetimes (e.g. 2016-12-01T13:00:00Z), or leave it out")
    return pd.Series(times.utc)


def _check_repeats(timestamps: pd.Series, row_numbers: np.ndarray, where: str,
                   repeated: np.ndarray | None = None) -> None:
    """Refuse the rows whose time an earlier row has (`repeated`: a mask over the rows; default: within these)."""
    repeated = np.flatnonzero(timestamps.duplicated().to_numpy() if repeated is None else repeated)
    if len(repeated):
        raise WindpipeError(f"Column {TIMESTAMP} of {where} repeats an earlier row's time in {len(repeated)} row(s) "
                            f"(rows, counted from 0: {row_list(row_numbers[repeated])}; e.g. "
                            f"{timestamps.iloc[repeated[0]]}).",
                            "keep one row per hour (pandas: df.drop_duplicates(subset=['utc_timestamp']))")

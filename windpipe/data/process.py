"""Raw OPSD-shaped files -> the processed entity (pure functions; I/O only in `read_raw`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from windpipe.data.synth import TIMESERIES_FILE, WEATHER_FILE
from windpipe.entities.schema import PROCESSED
from windpipe.errors import WindpipeError, first_line
from windpipe.names import TIMESTAMP

POWER_COLUMNS = {"DE_solar_generation_actual": "solar_GW", "DE_wind_generation_actual": "wind_GW"}
WEATHER_COLUMNS = {
    "DE_windspeed_10m": "windspeed",
    "DE_temperature": "temperature",
    "DE_radiation_direct_horizontal": "rad_horizontal",
    "DE_radiation_diffuse_horizontal": "rad_diffuse",
}
START = pd.Timestamp("2013-01-01", tz="UTC")


def _read_csv(path: Path, wanted: dict[str, str]) -> pd.DataFrame:
    if not path.exists():
        raise WindpipeError(f"Raw file {path.name} is missing from {path.parent}.",
                            f"put {path.name} there (OPSD download, or `windpipe data synth --out {path.parent}`)")
    _check_utf8(path)
    try:
        df = pd.read_csv(path, usecols=lambda c: c == TIMESTAMP or c in wanted, low_memory=False, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise WindpipeError(f"Raw file {path} is empty.",
                            "download it again or regenerate it with `windpipe data synth`") from None
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, exc.object[exc.start:exc.start + 1], f"offset {exc.start}") from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise WindpipeError(f"Raw file {path} cannot be read as CSV ({first_line(exc)}).",
                            "download it again or regenerate it with `windpipe data synth`") from None
    missing = [c for c in [TIMESTAMP, *wanted] if c not in df.columns]
    if missing:
        raise WindpipeError(f"Raw file {path} lacks column(s) {', '.join(missing)}.",
                            "use the OPSD file with German (DE_) columns, or regenerate it")
    if df.empty:
        raise WindpipeError(f"Raw file {path} has a header but no rows.",
                            "download it again or regenerate it with `windpipe data synth`")
    for col in wanted:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() & df[col].notna()
        if bad.any():
            rows = (bad[bad].index[:3] + 2).tolist()  # +2: header line and 1-based lines
            raise WindpipeError(
                f"Raw file {path.name} has non-numeric values in {col} (e.g. {df[col][bad].iloc[0]!r} "
                f"on line(s) {rows}).",
                "fix or remove those lines; empty cells are fine (they are dropped)",
            )
        values = _check_possible(path, col, values, wanted[col])
        df[col] = values
    return df


def _check_possible(path: Path, col: str, values: pd.Series, entity_col: str) -> pd.Series:
    """Refuse infinite values and values outside the processed entity's declared range (in the raw units)."""
    scale = 1 / 1000 if col in POWER_COLUMNS else 1.0  # MW in the raw file, GW in the entity
    numbers = values.to_numpy(dtype="float64")
    unit = "GW " if scale != 1 else ""
    possible = f"outside what is possible ({PROCESSED.range_text(entity_col)} {unit}once processed)"
    for mask, what in ((np.isinf(numbers), "infinite values"),
                       (PROCESSED.out_of_range(entity_col, numbers * scale), f"values {possible}")):
        if mask.any():
            rows = (np.flatnonzero(mask)[:3] + 2).tolist()  # +2: header line and 1-based lines
            raise WindpipeError(f"Raw file {path.name} has {what} in {col} (e.g. {values[mask].iloc[0]!r} on "
                                f"line(s) {rows}).",
                                "fix or remove those lines; empty cells are fine (they are dropped)")
    return values


def _not_utf8(path: Path, byte: bytes, where: str) -> WindpipeError:
    return WindpipeError(f"Raw file {path} is not UTF-8 text (byte {byte!r} at {where}): a binary file, or text in "
                         "another encoding (UTF-16, Latin-1).",
                         "save it as UTF-8 CSV (the OPSD downloads are), or download it again")


def _check_utf8(path: Path, head: int = 1 << 16) -> None:
    """Refuse a file whose first bytes are not UTF-8 text (pandas may read a binary file as odd columns)."""
    import codecs

    with open(path, "rb") as fh:
        data = fh.read(head)
    if b"\x00" in data:
        raise _not_utf8(path, b"\x00", f"offset {data.index(0)}")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(data, final=False)
    except UnicodeDecodeError as exc:
        raise _not_utf8(path, data[exc.start:exc.start + 1], f"offset {exc.start}") from None


def read_raw(raw_dir: Path | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read and check the two raw files in `raw_dir`."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise WindpipeError(f"Raw data folder {raw_dir} does not exist.",
                            f"create it with `windpipe data synth --out {raw_dir}` or download the OPSD files")
    return (_read_csv(raw_dir / TIMESERIES_FILE, POWER_COLUMNS),
            _read_csv(raw_dir / WEATHER_FILE, WEATHER_COLUMNS))


def _parse_times(df: pd.DataFrame, name: str) -> pd.DataFrame:
    try:
        stamps = pd.to_datetime(df[TIMESTAMP], utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise WindpipeError(f"{name}: utc_timestamp has values that are not ISO 8601 times ({exc}).",
                            "keep utc_timestamp as e.g. 2015-01-01T00:00:00Z") from None
    return df.assign(**{TIMESTAMP: stamps})


def process(power: pd.DataFrame, weather: pd.DataFrame) -> pd.DataFrame:
    """Join power and weather on time, keep 2013 on, drop missing rows, MW -> GW, rename."""
    # a repeated hour (the real files repeat one when clocks go back) keeps its first copy in each file
    power = _parse_times(power, TIMESERIES_FILE)[[TIMESTAMP, *POWER_COLUMNS]].drop_duplicates(TIMESTAMP)
    weather = _parse_times(weather, WEATHER_FILE)[[TIMESTAMP, *WEATHER_COLUMNS]].drop_duplicates(TIMESTAMP)
    df = power.merge(weather, on=TIMESTAMP, how="inner")
    df = df[df[TIMESTAMP] >= START].dropna()
    df[list(POWER_COLUMNS)] = df[list(POWER_COLUMNS)] / 1000.0
    df = df.rename(columns={**POWER_COLUMNS, **WEATHER_COLUMNS})
    df = df.sort_values(TIMESTAMP, kind="stable").reset_index(drop=True)
    df[[c for c in df.columns if c != TIMESTAMP]] = df[[c for c in df.columns if c != TIMESTAMP]].astype("float64")
    if df.empty:
        raise WindpipeError("The raw files share no complete rows from 2013 on.",
                            "check that both files cover the same hours from 2013-01-01")
    return PROCESSED.validate(df)


# ---------------------------------------------------------------- a processed file the user brings

PROCESSED_SUFFIXES = (".csv", ".parquet", ".pq")
MAX_GAP = pd.Timedelta(days=7)  # longer holes break the holdout and backtest windows (weeks long)
DUPLICATES = ("error", "first")


def read_processed(path: Path | str) -> pd.DataFrame:
    """Read a processed file (CSV or parquet shaped like the workshop's germany.csv) as it is."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise WindpipeError(f"The processed file {path} {what}.",
                            "pass a CSV or parquet file with utc_timestamp and the processed columns "
                            f"({', '.join(PROCESSED.columns)})")
    if path.suffix.lower() not in PROCESSED_SUFFIXES:
        raise WindpipeError(f"The processed file {path} is neither CSV nor parquet (by its name).",
                            "name it .csv or .parquet")
    if path.stat().st_size == 0:
        raise WindpipeError(f"The processed file {path} is empty (0 bytes).", "write the processed rows into it")
    try:
        return pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # pandas/pyarrow raise many types for a bad file
        raise WindpipeError(f"Cannot read the processed file {path} ({str(exc).splitlines()[0][:300]}).",
                            "pass a CSV (comma separated, a header line) or a parquet file") from None


def load_processed(path: Path | str, duplicates: str = "first") -> pd.DataFrame:
    """A processed file checked as `--processed` checks it; by default a repeated hour keeps its first
    row (germany.csv repeats the four hours its clocks went back)."""
    return check_processed(read_processed(path), f"The processed file {path}", duplicates)


def check_processed(df: pd.DataFrame, where: str, duplicates: str = "error") -> pd.DataFrame:
    """The processed entity from a user's frame, or a WindpipeError naming the problem and the fix.

    Refuses: no utc_timestamp column, times that do not parse, missing columns (PROCESSED), empty
    cells (gaps in the values), repeated or unsorted hours, and holes longer than MAX_GAP between
    consecutive hours. Missing single hours are fine: the process step drops incomplete hours too.
    `duplicates="first"` keeps the first row of a repeated hour instead of refusing (the workshop's
    germany.csv repeats the hour the clocks go back, as the raw OPSD files do).
    """
    if duplicates not in DUPLICATES:
        raise WindpipeError(f"duplicates must be one of {', '.join(DUPLICATES)}, got {duplicates!r}.",
                            "pass -P duplicates=error (refuse repeated hours) or first (keep the first)")
    if TIMESTAMP not in df.columns:
        raise WindpipeError(f"{where} has no timestamps: there is no {TIMESTAMP} column (it has "
                            f"{', '.join(map(str, df.columns))}).",
                            f"name the column of UTC times {TIMESTAMP} (e.g. 2016-12-01T13:00:00Z)")
    try:
        stamps = pd.to_datetime(df[TIMESTAMP], utc=True, format="ISO8601") if df[TIMESTAMP].dtype == object \
            else pd.to_datetime(df[TIMESTAMP], utc=True)
    except (ValueError, TypeError) as exc:
        raise WindpipeError(f"{where}: {TIMESTAMP} has values that are not times ({exc}).",
                            f"write {TIMESTAMP} as UTC times, e.g. 2016-12-01T13:00:00Z") from None
    df = df.assign(**{TIMESTAMP: stamps})[[c for c in PROCESSED.columns if c in df.columns]]
    missing = df.isna()
    if missing.any().any():
        rows = df.index[missing.any(axis=1)]
        cols = [c for c in df.columns if missing[c].any()]
        raise WindpipeError(f"{where} has gaps: {len(rows)} row(s) with empty values in {', '.join(cols)} "
                            f"(rows, counted from 0: {', '.join(map(str, rows[:5].tolist()))}"
                            f"{', ...' if len(rows) > 5 else ''}).",
                            "drop or fill those rows (the process step drops incomplete hours)")
    repeated = df[TIMESTAMP].duplicated(keep=False)
    if repeated.any():
        if duplicates == "error":
            first = df[TIMESTAMP][repeated].iloc[0]
            rows = df.index[(df[TIMESTAMP] == first).to_numpy()].tolist()
            raise WindpipeError(f"{where} repeats {int(df[TIMESTAMP].duplicated().sum())} hour(s), e.g. "
                                f"{first:%Y-%m-%d %H:%M} UTC in rows {', '.join(map(str, rows))}: one row per hour "
                                "is expected.",
                                "keep one row per hour (pandas: df.drop_duplicates('utc_timestamp')), or pass "
                                "-P process.duplicates=first to keep the first of each")
        df = df[~df[TIMESTAMP].duplicated(keep="first")]
    step = df[TIMESTAMP].diff()
    if (step < pd.Timedelta(0)).any():
        at = int(np.flatnonzero((step < pd.Timedelta(0)).to_numpy())[0])
        here, before = df[TIMESTAMP].iloc[at], df[TIMESTAMP].iloc[at - 1]
        raise WindpipeError(f"{where} is not sorted by time: row {df.index[at]} ({here:%Y-%m-%d %H:%M} UTC) comes "
                            f"after {before:%Y-%m-%d %H:%M} UTC.",
                            f"sort the rows by {TIMESTAMP} (pandas: df.sort_values('{TIMESTAMP}'))")
    if (step > MAX_GAP).any():
        at = int(np.flatnonzero((step > MAX_GAP).to_numpy())[0])
        here, before = df[TIMESTAMP].iloc[at], df[TIMESTAMP].iloc[at - 1]
        raise WindpipeError(f"{where} has a gap of {step.iloc[at] / pd.Timedelta(days=1):.1f} days without rows, "
                            f"from {before:%Y-%m-%d %H:%M} to {here:%Y-%m-%d %H:%M} UTC (at most {MAX_GAP.days} days: "
                            "the holdout and backtest windows are weeks long).",
                            "fill the gap, or pass a file that starts after it")
    df = PROCESSED.validate(df.reset_index(drop=True), where)  # every column there, numbers, not empty
    df[[c for c in df.columns if c != TIMESTAMP]] = df[[c for c in df.columns if c != TIMESTAMP]].astype("float64")
    return df

"""Which rows a model trains on and which it is judged on: the holdout split and the backtest folds (pure).

The data is a time series whose generating process drifts (the installed capacity grows), so the
default judges a model on the future: `split_by=time` holds out the newest `holdout_weeks` of the
processed entity and trains on everything before it. `split_by=random` (sklearn's seeded
`train_test_split`, `test_size`) stays for comparison: neighbouring hours land on both sides and
the trend hides, so it flatters every model (docs/training.md has the numbers).

A rolling-origin backtest repeats the time split: fold k of n holds out the k-th of the last n
windows of `holdout_weeks` (oldest first; the last fold is the holdout itself) and trains on
everything before that window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from windpipe.errors import WindpipeError
from windpipe.names import FEATURES, TARGETS, TIMESTAMP

SPLIT_BY = ("time", "random")
WEEK = pd.Timedelta(days=7)


def _fix_holdout() -> str:
    return "pass a shorter window (-P holdout_weeks=...), or -P split_by=random"


def check_split(test_size: float, split_by: str, holdout_weeks: float | None = None) -> None:
    """Raise WindpipeError for a test size outside (0, 1), a window <= 0 or an unknown split kind."""
    if split_by not in SPLIT_BY:
        raise WindpipeError(f"split_by must be one of {', '.join(SPLIT_BY)}, got {split_by!r}.",
                            "pass -P split_by=time (the newest holdout_weeks are the holdout) or "
                            "-P split_by=random (a seeded shuffle, test_size of the rows)")
    if not 0.0 < float(test_size) < 1.0:
        raise WindpipeError(f"test_size must be between 0 and 1 (exclusive), got {test_size}.",
                            "pass e.g. -P test_size=0.2")
    if holdout_weeks is not None and not float(holdout_weeks) > 0:
        raise WindpipeError(f"holdout_weeks must be greater than 0, got {holdout_weeks}.",
                            "pass e.g. -P holdout_weeks=13 (a quarter)")


def _times(df: pd.DataFrame) -> pd.Series:
    if TIMESTAMP not in df.columns:
        raise WindpipeError(f"The data has no {TIMESTAMP} column, so it cannot be split by time.",
                            f"add {TIMESTAMP}, or pass -P split_by=random")
    return pd.to_datetime(df[TIMESTAMP], utc=True)


def _span_text(ts: pd.Series) -> str:
    first, last = ts.min(), ts.max()
    days = (last - first) / pd.Timedelta(days=1)
    return f"{days:.4g} days ({first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC)"


def time_window(df: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp | None = None
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows before `start`, rows in [start, end)): train on the past, judge on the window (end None: to the end)."""
    ts = _times(df)
    start = pd.Timestamp(start)
    start = start.tz_localize("UTC") if start.tzinfo is None else start
    in_window = ts >= start
    if end is not None:
        end = pd.Timestamp(end)
        in_window &= ts < (end.tz_localize("UTC") if end.tzinfo is None else end)
    return df[(ts < start).to_numpy()], df[in_window.to_numpy()]


def holdout_start(df: pd.DataFrame, holdout_weeks: float) -> pd.Timestamp:
    """The first instant of the newest `holdout_weeks` window: rows after last - window are held out."""
    ts = _times(df)
    window = WEEK * float(holdout_weeks)
    if len(ts) < 2 or window >= ts.max() - ts.min():
        raise WindpipeError(f"The holdout window of {float(holdout_weeks):g} weeks is longer than the data, which "
                            f"covers {_span_text(ts) if len(ts) else 'nothing'}: nothing would be left to train on.",
                            _fix_holdout())
    return ts.max() - window + pd.Timedelta(microseconds=1)


def split(df: pd.DataFrame, test_size: float = 0.2, seed: int = 42, split_by: str = "random",
          holdout_weeks: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) frames.

    `time` with `holdout_weeks`: the rows of the newest `holdout_weeks` are the test set, every earlier
    row is training data. `time` without it (runs logged before the window existed): the last
    `test_size` fraction by timestamp. `random`: sklearn `train_test_split(df, test_size,
    random_state=seed)` (the 80/20, seed 42 baseline of docs/training.md).
    """
    check_split(test_size, split_by, holdout_weeks)
    if len(df) < 2:
        raise WindpipeError(f"The processed entity has {len(df)} row(s); a train/test split needs at least 2.",
                            "train on a larger processed entity")
    if split_by == "time":
        if holdout_weeks is not None:
            train, test = time_window(df, holdout_start(df, holdout_weeks))
            return train.sort_values(TIMESTAMP, kind="stable"), test.sort_values(TIMESTAMP, kind="stable")
        ordered = df.sort_values(TIMESTAMP, kind="stable")
        n_test = min(max(1, int(round(len(ordered) * float(test_size)))), len(ordered) - 1)
        return ordered.iloc[:-n_test], ordered.iloc[-n_test:]
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(df, test_size=float(test_size), random_state=int(seed))
    return train, test


@dataclass(frozen=True)
class SplitSpec:
    """How a run split its data: logged as run params, read back by the promotion gate."""

    split_by: str = "time"
    holdout_weeks: float | None = 13.0
    test_size: float = 0.2
    seed: int = 42

    def cut(self, df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
        return split(df, self.test_size, self.seed, self.split_by,
                     self.holdout_weeks if self.split_by == "time" else None)

    def params(self) -> dict[str, object]:
        out: dict[str, object] = {"split_by": self.split_by, "split_seed": self.seed, "test_size": self.test_size}
        if self.holdout_weeks is not None:
            out["holdout_weeks"] = self.holdout_weeks
        return out

    def describe(self) -> str:
        if self.split_by == "time" and self.holdout_weeks is not None:
            return f"the newest {self.holdout_weeks:g} weeks"
        if self.split_by == "time":
            return f"the last {self.test_size:g} of the rows by time"
        return f"random split, test_size {self.test_size:g}, seed {self.seed}"

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> SplitSpec:
        """The split a run logged (runs before `holdout_weeks` existed: a fraction of the rows)."""
        try:
            weeks = params.get("holdout_weeks")
            return cls(split_by=params.get("split_by", "random"),
                       holdout_weeks=float(weeks) if weeks not in (None, "", "None") else None,
                       test_size=float(params.get("test_size", 0.2)),
                       seed=int(float(params.get("split_seed", 42))))
        except ValueError as exc:
            raise WindpipeError(f"The run has unreadable split params ({exc}).",
                                "retrain it: split_seed, test_size and holdout_weeks must be numbers") from None


def backtest_windows(df: pd.DataFrame, folds: int, holdout_weeks: float) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """The [start, end) of each fold's test window, oldest first; the last one ends after the newest row."""
    if int(folds) < 1:
        raise WindpipeError(f"backtest_folds must be at least 1, got {folds}.", "pass e.g. -P backtest_folds=4")
    check_split(0.5, "time", holdout_weeks)
    ts = _times(df)
    if len(ts) < folds:
        raise WindpipeError(f"The backtest has {folds} folds but the data only {len(ts)} row(s).",
                            "backtest on more data, or pass fewer -P backtest_folds")
    window = WEEK * float(holdout_weeks)
    end = ts.max() + pd.Timedelta(microseconds=1)
    starts = [end - window * (folds - k) for k in range(folds)]
    if starts[0] <= ts.min():
        raise WindpipeError(f"{folds} backtest folds of {float(holdout_weeks):g} weeks reach back to "
                            f"{starts[0]:%Y-%m-%d %H:%M}, but the data covers {_span_text(ts)}: the first fold "
                            "would have nothing to train on.",
                            "pass fewer -P backtest_folds or a shorter -P holdout_weeks, or backtest on more data")
    return [(s, s + window) for s in starts]


def backtest_splits(df: pd.DataFrame, folds: int, holdout_weeks: float
                    ) -> list[tuple[pd.Timestamp, pd.Timestamp, pd.DataFrame, pd.DataFrame]]:
    """(window start, window end, train, test) per fold, oldest first; each trains on every row before its
    window. Every window is checked before the caller fits anything."""
    out = []
    for k, (start, end) in enumerate(backtest_windows(df, folds, holdout_weeks), 1):
        train, test = time_window(df, start, end)
        if test.empty:
            raise WindpipeError(f"Backtest fold {k} ({start:%Y-%m-%d} to {end:%Y-%m-%d}) has no rows (a gap in "
                                "the data).", "pass another -P holdout_weeks or fewer -P backtest_folds")
        out.append((start, end, train.sort_values(TIMESTAMP, kind="stable"),
                    test.sort_values(TIMESTAMP, kind="stable")))
    return out


def xy(df: pd.DataFrame, time_features: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The model input (float64) and the targets (TARGETS, in order).

    The input is FEATURES, or with `time_features` FEATURES plus the columns derived from
    `utc_timestamp` (windpipe.training.features.MODEL_COLUMNS).
    """
    from windpipe.training.features import MODEL_COLUMNS, model_input

    X = model_input(df, MODEL_COLUMNS) if time_features else df[FEATURES].astype("float64")
    if time_features:
        X.index = df.index
    return X, df[TARGETS].astype("float64")


def validation_split(train: pd.DataFrame, fraction: float, split_by: str = "time",
                     seed: int = 42) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows to fit, rows for early stopping), both from the training rows, never from the holdout.

    `time`: the newest `fraction` of the training rows validate (the nearest stand-in for the future);
    `random`: a seeded `train_test_split` of them.
    """
    if split_by == "time":
        ordered = train.sort_values(TIMESTAMP, kind="stable")
        n_val = min(max(1, int(round(len(ordered) * float(fraction)))), len(ordered) - 1)
        return ordered.iloc[:-n_val], ordered.iloc[-n_val:]
    from sklearn.model_selection import train_test_split

    fit, val = train_test_split(train, test_size=float(fraction), random_state=int(seed))
    return fit, val

"""Reproducible train/test splits of the processed entity, and feature/target selection."""

from __future__ import annotations

import pandas as pd

from windpipe.errors import WindpipeError
from windpipe.names import FEATURES, TARGETS, TIMESTAMP

SPLIT_BY = ("random", "time")


def check_split(test_size: float, split_by: str) -> None:
    """Raise WindpipeError for a test size outside (0, 1) or an unknown split kind."""
    if not 0.0 < float(test_size) < 1.0:
        raise WindpipeError(f"test_size must be between 0 and 1 (exclusive), got {test_size}.",
                            "pass e.g. -P test_size=0.2")
    if split_by not in SPLIT_BY:
        raise WindpipeError(f"split_by must be one of {', '.join(SPLIT_BY)}, got {split_by!r}.",
                            "pass -P split_by=random (seeded shuffle) or -P split_by=time (last part as test)")


def split(df: pd.DataFrame, test_size: float = 0.2, seed: int = 42,
          split_by: str = "random") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) frames.

    `random`: sklearn `train_test_split(df, test_size, random_state=seed)` (DESIGN.md's 80/20 seed 42);
    `time`: sorted by timestamp, the last `test_size` fraction is the test set (seed unused).
    """
    check_split(test_size, split_by)
    if len(df) < 2:
        raise WindpipeError(f"The processed entity has {len(df)} row(s); a train/test split needs at least 2.",
                            "train on a larger processed entity")
    if split_by == "time":
        ordered = df.sort_values(TIMESTAMP, kind="stable")
        n_test = max(1, int(round(len(ordered) * float(test_size))))
        n_test = min(n_test, len(ordered) - 1)
        return ordered.iloc[:-n_test], ordered.iloc[-n_test:]
    from sklearn.model_selection import train_test_split

    train, test = train_test_split(df, test_size=float(test_size), random_state=int(seed))
    return train, test


def xy(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The model input (FEATURES as float64, in order) and the targets (TARGETS, in order)."""
    return df[FEATURES].astype("float64"), df[TARGETS].astype("float64")

"""Test helpers for the registry, compare and package tests: runs logged the way the training steps log them.

Like tests/models.py, but the run follows the whole training contract (split params, holdout
metrics, model family) and is NOT registered: promotion is what the tests exercise.
"""

from __future__ import annotations

import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from windpipe.names import FEATURES, TARGETS
from windpipe.settings import Settings, clear_settings_cache, get_settings

from .models import tiny_processed

_DF: pd.DataFrame | None = None


def small_df() -> pd.DataFrame:
    """30 days of synthetic processed data (cached per session)."""
    global _DF
    if _DF is None:
        _DF = tiny_processed(n=24 * 30, seed=3)
    return _DF


@dataclass
class Scope:
    """A private experiment and registered model name on the shared platform, for one test."""

    platform: object
    experiment: str
    model_name: str

    @property
    def env(self) -> dict[str, str]:
        return {"WINDPIPE_EXPERIMENT": self.experiment, "WINDPIPE_MODEL_NAME": self.model_name}

    @property
    def settings(self) -> Settings:
        return get_settings()

    def cli(self, *args: str, **kwargs: object):
        return self.platform.windpipe(*args, extra_env=self.env, **kwargs)

    def snapshot(self) -> tuple:
        """(versions, aliases) of the scope's registered model: compare before/after a bad input."""
        from mlflow import MlflowClient

        client = MlflowClient(self.platform.tracking_uri)
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{self.model_name}'"))
        try:
            aliases = dict(client.get_registered_model(self.model_name).aliases or {})
        except Exception:
            aliases = None
        return versions, aliases


def make_scope(platform, monkeypatch: pytest.MonkeyPatch) -> Scope:
    suffix = uuid.uuid4().hex[:8]
    scope = Scope(platform, f"exp_{suffix}", f"model_{suffix}")
    for k, v in scope.env.items():
        monkeypatch.setenv(k, v)
    clear_settings_cache()
    return scope


def log_candidate(scope: Scope, scale: float = 1.0, family: str = "lr", df: pd.DataFrame | None = None,
                  with_model: bool = True, status: str = "FINISHED", test_size: float = 0.2,
                  split_by: str = "random", holdout_weeks: float | None = None) -> str:
    """Fit a LinearRegression (predictions times `scale`: worse when != 1), log it as a training run.

    Returns the run id. The run carries every contract tag, param and holdout metric.
    """
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.compose import TransformedTargetRegressor
    from sklearn.linear_model import LinearRegression

    from windpipe.entities.schema import PROCESSED, data_date
    from windpipe.entities.store import log_entity, write_entity
    from windpipe.training.metrics import regression_metrics
    from windpipe.training.split import split

    df = small_df() if df is None else df
    mlflow.set_tracking_uri(scope.platform.tracking_uri)
    mlflow.set_experiment(scope.experiment)
    train, test = split(df, test_size=test_size, seed=42, split_by=split_by, holdout_weeks=holdout_weeks)
    # fitted on y itself, predictions multiplied by `scale` (func/inverse_func deliberately not inverses)
    model = TransformedTargetRegressor(LinearRegression(), func=lambda y: y,
                                       inverse_func=lambda y: y * scale, check_inverse=False)
    model.fit(train[FEATURES], train[TARGETS])
    tags = {"windpipe.step": family, "windpipe.entry_point": "main", "windpipe.model_family": family,
            "windpipe.data_date": data_date(df)}
    with mlflow.start_run(tags=tags) as run:
        mlflow.log_params({"split_seed": 42, "test_size": test_size, "split_by": split_by, "scale": scale,
                           **({"holdout_weeks": holdout_weeks} if holdout_weeks is not None else {})})
        with tempfile.TemporaryDirectory() as tmp:
            path = write_entity(PROCESSED, df, Path(tmp) / PROCESSED.filename)
            entity_uri = log_entity(PROCESSED, df, path, context="training")
        mlflow.log_metrics(regression_metrics(test[TARGETS], model.predict(test[FEATURES])))
        mlflow.set_tag("windpipe.input.processed", entity_uri)  # the data it trained on
        if with_model:
            info = mlflow.sklearn.log_model(model, name="model", input_example=train[FEATURES].head(3),
                                            signature=infer_signature(train[FEATURES], model.predict(train[FEATURES])),
                                            pip_requirements=["scikit-learn", "pandas"],
                                            serialization_format="cloudpickle")
            mlflow.set_tag("windpipe.model_uri", info.model_uri)
    if status != "FINISHED":
        mlflow.MlflowClient().set_terminated(run.info.run_id, status=status)
    return run.info.run_id


def new_id() -> str:
    return uuid.uuid4().hex


def promote_in_background(env: dict[str, str], run_id: str, out: Path, pause_env: dict[str, str] | None = None):
    """`windpipe promote --run-id RUN` started in the background, its output (stdout and stderr) into `out`."""
    import subprocess
    import sys

    from .conftest import REPO

    with open(out, "w") as fh:
        return subprocess.Popen([sys.executable, "-m", "windpipe", "promote", "--run-id", run_id],
                                env={**env, **(pause_env or {})}, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                                text=True)


def wait_paused(proc, marker: Path, out: Path, timeout: float = 300) -> None:
    """Until the process stops at its fault point (`marker` appears); fail with its output if it ends first."""
    import time

    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert proc.poll() is None, f"ended before the fault point ({proc.returncode}):\n{out.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "the fault point was not reached"
        time.sleep(0.05)


def race_promotions(tmp_path: Path, first: tuple[dict[str, str], str],
                    second: tuple[dict[str, str], str]) -> tuple[str, str]:
    """Two `windpipe promote --run-id` at once, (environment, run id) each; returns both outputs.

    The first is held inside the registry lock (fault point `promote:locked`: production re-read, nothing
    changed yet) until the second has started and either says it waits for the lock or has ended; then
    the first goes on. Both must succeed. With a lock both see, the second waits and then compares itself
    with the first's result; without one it moves production from the version the first is about to replace.
    """
    from .processes import Paused, wait_for

    pause = Paused(tmp_path, "promote:locked")
    tag = new_id()[:8]
    out_a, out_b = tmp_path / f"promote-first-{tag}.out", tmp_path / f"promote-second-{tag}.out"
    a = promote_in_background(first[0], first[1], out_a, pause.env)
    b = None
    try:
        wait_paused(a, Path(str(pause.release) + ".paused"), out_a)
        b = promote_in_background(second[0], second[1], out_b)
        wait_for(lambda: b.poll() is not None or "waiting for the" in out_b.read_text(),
                 "the second promotion waits for the lock (or ends)", timeout=120)
    finally:
        pause.go()
        for proc in (a, b):
            if proc is not None:
                proc.wait(timeout=300)
    for proc, out in ((a, out_a), (b, out_b)):
        assert proc.returncode == 0, out.read_text()[-3000:]
    return out_a.read_text(), out_b.read_text()


def production_moves(scope: Scope) -> list[tuple[int | None, int | None]]:
    """The alias history of `production`, oldest first: (from version, to version) of each move."""
    from windpipe.models.history import history

    prod = history(scope.settings).query("alias == 'production'")
    return [(None if pd.isna(f) else int(f), None if pd.isna(t) else int(t))
            for f, t in zip(prod["from_version"], prod["to_version"], strict=True)]


def chained(moves: list[tuple[int | None, int | None]]) -> bool:
    """Each move starts where the one before it ended (the first from nothing)."""
    return all(move[0] == (moves[i - 1][1] if i else None) for i, move in enumerate(moves))


def decided(output: str) -> tuple[int | None, int] | None:
    """(the production it replaced, the version it promoted) as `windpipe promote` said it; None: not promoted."""
    import re

    found = re.search(r"^promoted: \S+@production -> v(\d+)(?: \(was v(\d+)\))?", output, re.MULTILINE)
    if found is None:
        return None
    return (int(found.group(2)) if found.group(2) else None, int(found.group(1)))

"""Test helper: a real, quickly trained model logged and registered the way the training steps do.

Used by tests that need a production model without running the whole pipeline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from windpipe.names import FEATURES, TARGETS, TIMESTAMP


def tiny_processed(n: int = 24 * 60, seed: int = 0) -> pd.DataFrame:
    """A processed-entity frame from the synthetic generator (60 days by default)."""
    from windpipe.data.process import process
    from windpipe.data.synth import generate

    power, weather = generate(seed=seed, years=1)
    return process(power, weather).head(n).reset_index(drop=True)


def log_registered_model(platform, df: pd.DataFrame | None = None, alias: str | None = "production",
                         scale: float = 1.0, tmp_dir: Path | None = None) -> dict:
    """Fit a LinearRegression on `df`, log it (with its entity) as an `lr` run, register it, set `alias`.

    `scale` multiplies the predictions (a deliberately worse model when != 1).
    Returns run_id, model_uri, version, entity_uri.
    """
    import tempfile

    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression

    from windpipe.entities.schema import PROCESSED, data_date
    from windpipe.entities.store import log_entity, write_entity

    df = tiny_processed() if df is None else df
    mlflow.set_tracking_uri(platform.tracking_uri)
    mlflow.set_experiment(platform.settings.experiment)
    model = LinearRegression().fit(df[FEATURES], df[TARGETS])
    model.coef_ = model.coef_ * scale  # scale != 1: a deliberately worse model
    model.intercept_ = model.intercept_ * scale
    pred = model.predict(df[FEATURES])
    with mlflow.start_run(tags={"windpipe.step": "lr", "windpipe.entry_point": "main",
                                "windpipe.model_family": "lr", "windpipe.data_date": data_date(df)}) as run:
        with tempfile.TemporaryDirectory(dir=tmp_dir) as tmp:
            path = write_entity(PROCESSED, df, Path(tmp) / PROCESSED.filename)
            entity_uri = log_entity(PROCESSED, df, path, context="training")
        rmse = float(np.sqrt(((pred - df[TARGETS].to_numpy()) ** 2).mean()))
        mlflow.log_metrics({"rmse": rmse})
        info = mlflow.sklearn.log_model(model, name="model", input_example=df[FEATURES].head(3),
                                        signature=infer_signature(df[FEATURES], pred),
                                        pip_requirements=["scikit-learn", "pandas"],
                                        serialization_format="cloudpickle")
        mlflow.set_tags({"windpipe.model_uri": info.model_uri, "windpipe.input.processed": entity_uri})
    version = mlflow.register_model(info.model_uri, platform.settings.model_name)
    client = mlflow.MlflowClient()
    client.set_model_version_tag(version.name, version.version, "windpipe.data_date", data_date(df))
    client.set_model_version_tag(version.name, version.version, "windpipe.instance_name",
                                 f"{version.name}_v{version.version}_{data_date(df)}")
    if alias:
        client.set_registered_model_alias(version.name, alias, version.version)
    return {"run_id": run.info.run_id, "model_uri": info.model_uri, "version": int(version.version),
            "entity_uri": entity_uri, "df": df, "timestamp_col": TIMESTAMP}


class BrokenOnLoad:
    """A pyfunc model whose loading fails (as a version with a missing dependency or damaged files would)."""

    @staticmethod
    def log_registered(platform, alias: str | None = "production") -> int:
        import mlflow

        class _Broken(mlflow.pyfunc.PythonModel):
            def load_context(self, context):
                raise RuntimeError("this version is broken on purpose")

            def predict(self, context, model_input):
                return model_input

        mlflow.set_tracking_uri(platform.tracking_uri)
        mlflow.set_experiment(platform.settings.experiment)
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(name="model", python_model=_Broken(), pip_requirements=["pandas"])
        version = mlflow.register_model(info.model_uri, platform.settings.model_name)
        if alias:
            mlflow.MlflowClient().set_registered_model_alias(version.name, alias, version.version)
        return int(version.version)


def log_nine_column_model(platform, df: pd.DataFrame | None = None, tmp_dir: Path | None = None) -> dict:
    """A model as the steps logged them before the natural inputs: the lr family's spline model, its signature the
    weather and the five time columns (hour_sin, ..., trend), registered. Returns uri, version, df and
    `predict(rows)`, its predictions for processed rows with the time columns derived by hand."""
    import mlflow
    from mlflow.models import infer_signature

    from windpipe.training.families.lr import train_lr
    from windpipe.training.features import MODEL_COLUMNS
    from windpipe.training.split import xy

    df = tiny_processed() if df is None else df
    mlflow.set_tracking_uri(platform.tracking_uri)
    mlflow.set_experiment(platform.settings.experiment)
    X, y = xy(df, time_features=True)
    model = train_lr(X, y)
    with mlflow.start_run(tags={"windpipe.step": "lr", "windpipe.model_family": "lr"}):
        info = mlflow.sklearn.log_model(model, name="model", input_example=X.head(3),
                                        signature=infer_signature(X, model.predict(X.head(3))),
                                        pip_requirements=["scikit-learn", "pandas"],
                                        metadata={"windpipe.input_columns": MODEL_COLUMNS},
                                        serialization_format="cloudpickle")
    version = mlflow.register_model(info.model_uri, "wind_solar_nine_columns")
    return {"uri": f"models:/{version.name}/{version.version}", "version": int(version.version), "df": df,
            "predict": lambda rows: model.predict(xy(rows, time_features=True)[0])}

"""The workshop's original way of working, as a script: the peer `bench_peers.py` measures windpipe against.

Fits a LinearRegression and a 12-configuration RandomForest grid (n_estimators 8, 16, 32, 64 x
max_depth 6, 10, 14, min_samples_leaf 3) on a processed CSV with a random 80/20 split (seed 42), and
logs each of the 13 runs with MLflow's defaults, as the tracked notebooks started out: one
`log_param` call per parameter, one `log_metric` call per metric, `log_model` with a signature
and an input example, its pip requirements inferred (skops needs the tree type trusted, or
logging a forest fails). Standalone on purpose: it imports nothing of windpipe.

    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 python benchmarks/peer_workshop.py germany.csv
"""

import sys

import mlflow
import pandas as pd
from mlflow.models import infer_signature
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression
from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error
from sklearn.model_selection import train_test_split

FEATURES = ["windspeed", "temperature", "rad_horizontal", "rad_diffuse"]
TARGETS = ["solar_GW", "wind_GW"]


def metrics_for(y_true, y_pred) -> dict:
    m = {"rmse": root_mean_squared_error(y_true, y_pred), "mae": mean_absolute_error(y_true, y_pred),
         "r2": r2_score(y_true, y_pred)}
    for i, t in enumerate(TARGETS):
        m[f"rmse_{t}"] = root_mean_squared_error(y_true[t], y_pred[:, i])
        m[f"mae_{t}"] = mean_absolute_error(y_true[t], y_pred[:, i])
        m[f"r2_{t}"] = r2_score(y_true[t], y_pred[:, i])
    return m


def log_run(name: str, model, params: dict, X_train, X_test, y_train, y_test) -> None:
    with mlflow.start_run(run_name=name):
        for k, v in params.items():
            mlflow.log_param(k, v)
        model.fit(X_train, y_train)
        pred = model.predict(X_test)
        for k, v in metrics_for(y_test, pred).items():
            mlflow.log_metric(k, v)
        mlflow.sklearn.log_model(model, name="model", input_example=X_train.head(3),
                                 signature=infer_signature(X_train, pred),
                                 skops_trusted_types=["sklearn.tree._tree.Tree"])


def main(csv: str, experiment: str = "workshop_peer") -> None:
    mlflow.set_experiment(experiment)
    df = pd.read_csv(csv, index_col=0, parse_dates=True)
    X_train, X_test, y_train, y_test = train_test_split(df[FEATURES], df[TARGETS], test_size=0.2, random_state=42)
    log_run("lr", LinearRegression(), {"model": "lr"}, X_train, X_test, y_train, y_test)
    for n in (8, 16, 32, 64):
        for depth in (6, 10, 14):
            params = {"n_estimators": n, "max_depth": depth, "min_samples_leaf": 3, "seed": 42}
            model = RandomForestRegressor(n_estimators=n, max_depth=depth, min_samples_leaf=3, random_state=42,
                                          n_jobs=-1)
            log_run(f"rf_n{n}_d{depth}", model, params, X_train, X_test, y_train, y_test)


if __name__ == "__main__":
    main(*sys.argv[1:])

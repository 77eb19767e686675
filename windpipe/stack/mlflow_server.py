"""The MLflow tracking server in one process: `python -m windpipe.stack.mlflow_server`.

It serves MLflow's own app (`mlflow.server.fastapi_app:app`) under uvicorn exactly as
`mlflow server --serve-artifacts --workers 1` does, but skips the `mlflow` CLI's own
import (about 6 s here) before uvicorn imports the app again: `windpipe up` gets to
healthy in about half the time. Configuration comes from the environment that
`windpipe.stack.services` sets; the equivalent plain command is in server/README.md.
"""

from __future__ import annotations

import os
import uuid


def main() -> None:
    from mlflow.server import constants

    backend = os.environ["WINDPIPE_BACKEND_STORE_URI"]
    os.environ.update({
        constants.BACKEND_STORE_URI_ENV_VAR: backend,
        constants.REGISTRY_STORE_URI_ENV_VAR: backend,
        constants.ARTIFACT_ROOT_ENV_VAR: "mlflow-artifacts:/",
        constants.SERVE_ARTIFACTS_ENV_VAR: "true",
        constants.ARTIFACTS_DESTINATION_ENV_VAR: os.environ["MLFLOW_ARTIFACTS_DESTINATION"],
        "_MLFLOW_SGI_NAME": "uvicorn",
        "_MLFLOW_SERVER_BOOT_ID": uuid.uuid4().hex,
        "_MLFLOW_IN_JOB_EXECUTOR": "false",
    })
    basic_auth = os.environ.get("WINDPIPE_AUTH") == "basic"
    if basic_auth:
        # from a 0600 file, set in-process: it never shows in /proc/<pid>/environ
        key_file = os.environ["WINDPIPE_FLASK_SECRET_KEY_FILE"]
        with open(key_file, encoding="utf-8") as fh:
            os.environ["MLFLOW_FLASK_SERVER_SECRET_KEY"] = fh.read().strip()
    import uvicorn
    from mlflow.server.fastapi_app import app

    from windpipe.tracking.internals import initialize_stores

    # create or migrate the tables (SQLite or PostgreSQL) before accepting requests, as `mlflow server` does
    initialize_stores(backend, os.environ[constants.ARTIFACT_ROOT_ENV_VAR])
    if basic_auth:
        # MLflow's basic-auth app (what `mlflow server --app-name basic-auth` serves); it reads
        # MLFLOW_AUTH_CONFIG_PATH, makes its tables and the admin user, and wraps the same app
        from mlflow.server.auth import create_app

        app = create_app()
    uvicorn.run(app, host=os.environ.get("WINDPIPE_HOST", "127.0.0.1"),
                port=int(os.environ["WINDPIPE_MLFLOW_PORT"]), log_level="info")


if __name__ == "__main__":
    main()

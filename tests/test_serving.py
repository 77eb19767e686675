"""Serving: a real `mlflow models serve` process answers like the in-process model; clear errors otherwise."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from windpipe.deploy import serving
from windpipe.errors import WindpipeError
from windpipe.names import FEATURES, TARGETS
from windpipe.settings import get_settings
from windpipe.stack.procs import free_port

from .conftest import REPO
from .models import log_registered_model
from .processes import wait_for


def test_payload_is_dataframe_split():
    import pandas as pd

    body = serving.payload(pd.DataFrame({"windspeed": [1.0], "temperature": [2.0]}))
    assert body == {"dataframe_split": {"columns": ["windspeed", "temperature"], "data": [[1.0, 2.0]]}}
    assert "dataframe_split" in serving.curl_example("http://127.0.0.1:1")
    # a Keras model's signature is a tensor: rows of numbers in the model's column order
    assert serving.payload(pd.DataFrame({"windspeed": [1], "trend": [3.5]}), tensor=True) == {"inputs": [[1.0, 3.5]]}
    trend = serving.curl_example("http://127.0.0.1:1", [*FEATURES, "hour_sin", "trend"])
    assert '"columns": ["windspeed", "temperature", "rad_horizontal", "rad_diffuse", "hour_sin", "trend"]' in trend
    assert "-0.258819" in trend  # sin(2 pi 13 / 24): the 13:00 UTC example row


@pytest.mark.slow
def test_served_predictions_equal_in_process_predictions(use_platform, tmp_path):
    import mlflow

    info = log_registered_model(use_platform, tmp_dir=tmp_path)
    df = info["df"].head(50)
    settings = get_settings()
    proc, url = serving.start(settings, free_port(), log=tmp_path / "serve.log")
    try:
        served = serving.request_predictions(url, df)
        # the server and this process answer the same model (production) ...
        local = mlflow.pyfunc.load_model(serving.default_model_uri(settings)).predict(df[FEATURES])
        assert list(served.columns) == TARGETS
        np.testing.assert_allclose(served.to_numpy(), np.asarray(local), rtol=1e-6, atol=1e-9)
        # ... and a bad request gets a clear error, not a stack trace
        with pytest.raises(WindpipeError, match="refused"):
            serving.request_predictions(url, df.assign(windspeed="fast"))
    finally:
        serving.stop(proc)
    assert proc.poll() is not None


@pytest.mark.slow
def test_windpipe_serve_prints_url_and_a_working_curl(use_platform, tmp_path):
    log_registered_model(use_platform, tmp_dir=tmp_path)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "windpipe", "serve", "--port", str(port)],
                            env=use_platform.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.strip().startswith("curl "):
                break
        curl = next(line.strip() for line in lines if line.strip().startswith("curl "))
        assert f"http://127.0.0.1:{port}" in "".join(lines)
        out = subprocess.run(curl, shell=True, capture_output=True, text=True, timeout=30)
        assert '"predictions"' in out.stdout, out.stdout + out.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    time.sleep(0.5)
    with pytest.raises(WindpipeError, match="does not answer"):  # the model server did not outlive `windpipe serve`
        serving.ping(f"http://127.0.0.1:{port}")


@pytest.mark.slow
def test_serve_without_production_alias_is_a_clear_error(use_platform):
    proc = use_platform.windpipe("serve", "--port", str(free_port()),
                                 extra_env={"WINDPIPE_MODEL_NAME": "no_such_model"}, timeout=120)
    assert proc.returncode == 1
    assert "has the alias 'production'" in proc.stderr and "windpipe pipeline run" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- windpipe serve follows the alias ------------------------------------------------------------

def _health(url: str) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/health", timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_serve_follows_promotions_under_load_without_a_failed_request(use_platform, tmp_path):
    import dataclasses
    import json
    import uuid

    from .models import BrokenOnLoad

    settings = use_platform.settings.model_copy(update={"model_name": f"follow_{uuid.uuid4().hex[:8]}"})
    p = dataclasses.replace(use_platform, settings=settings)
    first = log_registered_model(p, tmp_dir=tmp_path)
    df = first["df"].head(3)
    body = json.dumps(serving.payload(df[FEATURES])).encode()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "windpipe", "serve", "--port", str(port), "--poll", "0.5"],
                                env={**use_platform.env, "WINDPIPE_MODEL_NAME": settings.model_name}, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: "health:" in log.read_text() or proc.poll() is not None, "the server starts", 180)
        assert proc.poll() is None, log.read_text()
        assert f"version {first['version']}" in log.read_text()

        # a promotion while 4 clients send requests back to back: no request fails, answers switch
        load = serving.Load(url, body, concurrency=4, max_seconds=120).start()
        try:
            wait_for(lambda: len(load.answers) >= 20, "the first answers")
            second = log_registered_model(p, scale=2.0, tmp_dir=tmp_path)  # production -> the new version
            moved = len(load.answers)
            wait_for(lambda: any(a.version == str(second["version"]) for a in load.answers[moved:]),
                      "answers from the promoted version", 30)
            seen = len(load.answers)
            wait_for(lambda: len(load.answers) >= seen + 20, "more answers after the switch")
        finally:
            answers = load.stop()
        failed = [a for a in answers if a.status != 200]
        assert failed == [], failed[:5]
        assert {a.version for a in answers} == {str(first["version"]), str(second["version"])}
        for worker in range(4):  # once a client got the new version, it never got the old one again
            versions = [a.version for a in answers if a.worker == worker]
            switched = versions.index(str(second["version"]))
            assert set(versions[switched:]) == {str(second["version"])}, versions
        # the new version really answers: it predicts twice what the first did
        served = serving.request_predictions(url, df)
        import mlflow

        local = mlflow.pyfunc.load_model(f"models:/{settings.model_name}/{first['version']}").predict(df[FEATURES])
        np.testing.assert_allclose(served.to_numpy(), 2 * np.asarray(local), rtol=1e-6)

        # a version that fails to load is not swapped in: the old one answers; /health names the failure
        broken = BrokenOnLoad.log_registered(p)
        error = wait_for(lambda: _health(url)["last_error"], "the failed load shows at /health", 30)
        assert error["version"] == str(broken) and "broken on purpose" in error["error"], error
        health = _health(url)
        assert health["status"] == "degraded" and health["version"] == str(second["version"])
        assert serving.request_predictions(url, df).shape == (3, 2)
        wait_for(lambda: "was not swapped in" in log.read_text(), "the failure is logged")

        # a rollback (the alias moved back to the first version) is followed as well
        mlflow.MlflowClient().set_registered_model_alias(settings.model_name, "production", str(first["version"]))
        wait_for(lambda: _health(url)["version"] == str(first["version"]), "the rolled-back version answers", 30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)

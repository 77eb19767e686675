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
from .models import log_registered_model, tiny_processed
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

        # what `windpipe predict` refuses, serving refuses too (400, the column and its range named); JSON
        # nested 100,000 deep is a 400 as well (MLflow's parser died with a RecursionError: a 500)
        import json
        import urllib.error
        import urllib.request

        def post(body: bytes) -> tuple[int, str]:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    return resp.status, resp.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        row = {"windspeed": 5.0, "temperature": 10.0, "rad_horizontal": 200.0, "rad_diffuse": 80.0}
        for bad, said in (({"windspeed": 1e308}, "'windspeed' is outside its declared range"),
                          ({"temperature": -1e6}, "'temperature' is outside its declared range"),
                          ({"rad_diffuse": float("nan")}, "missing (NaN) or infinite")):
            code, text = post(json.dumps({"dataframe_records": [row, {**row, **bad}]}).encode())
            assert code == 400 and said in text and "1 row(s)" in text, (bad, code, text[:500])
            assert "Traceback" not in text, text[:500]
        code, text = post(b"[" * 100_000 + b"]" * 100_000)
        assert code == 400 and "nested deeper" in text, (code, text[:300])
        code, text = post(json.dumps({"dataframe_records": [row]}).encode())
        assert code == 200 and '"predictions"' in text, text[:300]
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


@pytest.mark.slow
def test_serve_never_swaps_in_a_version_that_is_no_longer_production(use_platform, tmp_path, monkeypatch):
    """Over HTTP, under load: a promotion and a rollback within one poll load nothing; a rollback that comes while
    the promoted version loads leaves the old version answering throughout (the loaded one is dropped); an alias
    that moves on during a load is followed to the version it names now."""
    import dataclasses
    import json
    import threading
    import uuid

    import mlflow
    import uvicorn

    from windpipe.deploy import follow
    from windpipe.names import alias_uri

    settings = use_platform.settings.model_copy(update={"model_name": f"chase_{uuid.uuid4().hex[:8]}"})
    p = dataclasses.replace(use_platform, settings=settings)
    first = log_registered_model(p, tmp_dir=tmp_path)["version"]
    second = log_registered_model(p, alias=None, scale=2.0, tmp_dir=tmp_path)["version"]
    third = log_registered_model(p, alias=None, scale=3.0, tmp_dir=tmp_path)["version"]
    client = mlflow.MlflowClient()

    def move(version: int) -> None:
        client.set_registered_model_alias(settings.model_name, "production", str(version))

    loads: list[str] = []
    during: dict[str, int] = {}  # version being loaded -> where the alias moves meanwhile
    real_build = follow.build_slot

    def build(ref, s):
        loads.append(ref.version)
        if ref.version in during:
            move(during.pop(ref.version))
        return real_build(ref, s)

    monkeypatch.setattr(follow, "build_slot", build)
    server = follow.FollowingServer(settings, alias_uri(settings.model_name), poll_seconds=3600, say=lambda _m: None)
    server.load_initial()
    port = free_port()
    http = uvicorn.Server(uvicorn.Config(server, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: http.started, "the server starts", 30)
    body = json.dumps(serving.payload(tiny_processed(n=48).head(2)[FEATURES])).encode()
    load = serving.Load(url, body, concurrency=2, max_seconds=120).start()
    try:
        loads.clear()  # (the initial load)
        move(second)  # a promotion and its rollback within one poll
        move(first)
        assert server.check_once() is False and loads == []

        during[str(second)] = first  # the rollback comes while the promoted version loads
        move(second)
        assert server.check_once() is False
        assert loads == [str(second)] and server.current.version == str(first)
        assert server.health.swaps == 0 and server.health.last_error is None
        wait_for(lambda: len(load.answers) >= 20, "answers")
        before_chase = len(load.answers)

        during[str(second)] = third  # the alias moves on while the promoted version loads: the newest is served
        move(second)
        assert server.check_once() is True
        assert loads == [str(second), str(second), str(third)] and server.current.version == str(third)
        wait_for(lambda: any(a.version == str(third) for a in load.answers[before_chase:]), "the newest answers")
    finally:
        answers = load.stop()
        http.should_exit = True
        thread.join(timeout=30)
    assert [a for a in answers if a.status != 200] == []
    assert {a.version for a in answers} == {str(first), str(third)}  # never the version that lost production


class _KerasInside:
    """A pyfunc model that predicts with a small Keras network through Keras's own `predict` (default verbosity),
    as MLflow's keras flavour does."""

    @staticmethod
    def log_registered(platform, model_name: str) -> int:
        import mlflow
        import pandas as pd
        from mlflow.models import infer_signature

        class _Keras(mlflow.pyfunc.PythonModel):
            def load_context(self, context):
                import keras

                self.net = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, kernel_initializer="ones")])

            def predict(self, context, model_input):
                return self.net.predict(model_input.to_numpy(dtype="float32"))

        example = pd.DataFrame([[1.0, 2.0, 3.0, 4.0]], columns=FEATURES)
        mlflow.set_tracking_uri(platform.tracking_uri)
        mlflow.set_experiment(platform.settings.experiment)
        with mlflow.start_run():
            info = mlflow.pyfunc.log_model(name="model", python_model=_Keras(), pip_requirements=["keras"],
                                           signature=infer_signature(example, np.zeros((1, 2))))
        version = mlflow.register_model(info.model_uri, model_name)
        mlflow.MlflowClient().set_registered_model_alias(model_name, "production", version.version)
        return int(version.version)


@pytest.mark.slow
def test_serve_on_a_terminal_prints_no_keras_progress_bar_per_request(use_platform, tmp_path):
    """`windpipe serve` in a terminal: requests to a Keras model leave the console as it was."""
    import os
    import pty
    import uuid

    import pandas as pd

    model_name = f"keras_{uuid.uuid4().hex[:8]}"
    version = _KerasInside.log_registered(use_platform, model_name)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    master, slave = pty.openpty()  # the server's stdout and stderr are a terminal
    proc = subprocess.Popen([sys.executable, "-m", "windpipe", "serve", "--port", str(port)],
                            env={**use_platform.env, "WINDPIPE_MODEL_NAME": model_name}, cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    console = bytearray()

    def read_console() -> str:
        import select

        while select.select([master], [], [], 0.2)[0]:
            try:
                console.extend(os.read(master, 65536))
            except OSError:  # the server closed the terminal
                break
        return console.decode(errors="replace")

    try:
        wait_for(lambda: "health:" in read_console() or proc.poll() is not None, "the server starts", 180)
        assert proc.poll() is None, read_console()
        assert f"version {version}" in read_console()
        started = len(console)
        df = pd.DataFrame([[1.0, 2.0, 3.0, 4.0]] * 3, columns=FEATURES)
        for _ in range(3):
            np.testing.assert_allclose(serving.request_predictions(url, df).to_numpy(), 10.0)
        time.sleep(1.0)  # (what the requests printed, if anything, reaches the terminal)
        after = read_console()[started:]
        assert "━" not in after and "step" not in after, after
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        os.close(master)
